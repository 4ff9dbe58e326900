//! The tensors a configuration implies, in the release layout: what `Checkpoint::check`
//! validates against and what `random-checkpoint` writes.

use crate::config::ModelConfig;

/// One expected tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// Checkpoint key.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Whether FP8 releases quantise it (2-D projections inside layers; never the embedding,
    /// head, gate, norms or biases).
    pub quantizable: bool,
}

/// The kind of FFN a layer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnKind {
    /// Dense SwiGLU of `intermediate_size`.
    Dense,
    /// Routed + shared experts.
    Moe,
}

/// Every tensor of the main model and its MTP modules, and the optional extras
/// (per-module copies of the embedding and head that V3 releases store and HF ignores).
pub fn expected_tensors(cfg: &ModelConfig) -> (Vec<PlannedTensor>, Vec<String>) {
    let h = &cfg.hf;
    let hidden = h.hidden_size;
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, quantizable: bool| {
        out.push(PlannedTensor {
            name,
            shape,
            quantizable,
        })
    };
    push(
        "model.embed_tokens.weight".into(),
        vec![h.vocab_size, hidden],
        false,
    );
    push("model.norm.weight".into(), vec![hidden], false);
    push("lm_head.weight".into(), vec![h.vocab_size, hidden], false);
    let mut optional = Vec::new();
    let heads = h.num_attention_heads;
    for layer in 0..h.num_hidden_layers + h.num_nextn_predict_layers {
        let p = format!("model.layers.{layer}");
        push(format!("{p}.input_layernorm.weight"), vec![hidden], false);
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![hidden],
            false,
        );
        let a = format!("{p}.self_attn");
        match h.q_lora_rank {
            None => push(
                format!("{a}.q_proj.weight"),
                vec![heads * cfg.qk_head_dim(), hidden],
                true,
            ),
            Some(r) => {
                push(format!("{a}.q_a_proj.weight"), vec![r, hidden], true);
                push(format!("{a}.q_a_layernorm.weight"), vec![r], false);
                push(
                    format!("{a}.q_b_proj.weight"),
                    vec![heads * cfg.qk_head_dim(), r],
                    true,
                );
            }
        }
        push(
            format!("{a}.kv_a_proj_with_mqa.weight"),
            vec![h.kv_lora_rank + h.qk_rope_head_dim, hidden],
            true,
        );
        push(
            format!("{a}.kv_a_layernorm.weight"),
            vec![h.kv_lora_rank],
            false,
        );
        push(
            format!("{a}.kv_b_proj.weight"),
            vec![heads * (h.qk_nope_head_dim + h.v_head_dim), h.kv_lora_rank],
            true,
        );
        push(
            format!("{a}.o_proj.weight"),
            vec![hidden, heads * h.v_head_dim],
            true,
        );
        let m = format!("{p}.mlp");
        match ffn_kind(cfg, layer) {
            FfnKind::Dense => swiglu(&mut push, &m, hidden, h.intermediate_size),
            FfnKind::Moe => {
                let r = cfg.moe.as_ref().expect("MoE layer implies a MoE config");
                let experts = r.gate.n_routed_experts;
                push(format!("{m}.gate.weight"), vec![experts, hidden], false);
                if r.gate.uses_bias() {
                    push(
                        format!("{m}.gate.e_score_correction_bias"),
                        vec![experts],
                        false,
                    );
                }
                for e in 0..experts {
                    swiglu(
                        &mut push,
                        &format!("{m}.experts.{e}"),
                        hidden,
                        r.moe_intermediate_size,
                    );
                }
                if r.n_shared_experts > 0 {
                    let width = r.moe_intermediate_size * r.n_shared_experts;
                    swiglu(&mut push, &format!("{m}.shared_experts"), hidden, width);
                }
            }
        }
        if layer >= h.num_hidden_layers {
            push(format!("{p}.enorm.weight"), vec![hidden], false);
            push(format!("{p}.hnorm.weight"), vec![hidden], false);
            push(
                format!("{p}.eh_proj.weight"),
                vec![hidden, 2 * hidden],
                false,
            );
            push(format!("{p}.shared_head.norm.weight"), vec![hidden], false);
            optional.push(format!("{p}.embed_tokens.weight"));
            optional.push(format!("{p}.shared_head.head.weight"));
        }
    }
    (out, optional)
}

/// The FFN of layer `layer` (MTP modules, stored after the main layers, are always MoE).
pub fn ffn_kind(cfg: &ModelConfig, layer: usize) -> FfnKind {
    let is_mtp = layer >= cfg.hf.num_hidden_layers;
    if cfg.moe.is_some() && (is_mtp || cfg.is_moe_layer(layer)) {
        FfnKind::Moe
    } else {
        FfnKind::Dense
    }
}

fn swiglu(
    push: &mut impl FnMut(String, Vec<usize>, bool),
    prefix: &str,
    hidden: usize,
    width: usize,
) {
    push(
        format!("{prefix}.gate_proj.weight"),
        vec![width, hidden],
        true,
    );
    push(
        format!("{prefix}.up_proj.weight"),
        vec![width, hidden],
        true,
    );
    push(
        format!("{prefix}.down_proj.weight"),
        vec![hidden, width],
        true,
    );
}

/// Parameter counts: `(total, active per token)`, MTP modules excluded, embedding and head
/// included; "active" counts the shared experts and `num_experts_per_tok` routed experts.
pub fn parameter_counts(cfg: &ModelConfig) -> (usize, usize) {
    let (tensors, _) = expected_tensors(cfg);
    let mut total = 0;
    let mut inactive = 0;
    let routing = cfg.moe.as_ref();
    for t in tensors
        .iter()
        .filter(|t| layer_of(&t.name).is_none_or(|l| l < cfg.hf.num_hidden_layers))
    {
        let n: usize = t.shape.iter().product();
        total += n;
        if let (Some(r), true) = (routing, t.name.contains(".mlp.experts.")) {
            // Each MoE layer activates num_experts_per_tok of its experts.
            inactive += n * (r.gate.n_routed_experts - r.gate.top_k) / r.gate.n_routed_experts;
        }
    }
    (total, total - inactive)
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}
