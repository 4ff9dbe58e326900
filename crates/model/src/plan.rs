//! The tensors a configuration implies, in the release layout: what `Checkpoint::check`
//! validates against and what `random-checkpoint` writes.

use linear::WeightSpec;

use crate::config::{FfnKind, ModelConfig};

/// Every tensor of the main model and its MTP modules, and the optional extras
/// (per-module copies of the embedding and head that V3 releases store and HF ignores).
///
/// The component crates list their own weights ([`mla::MlaWeights::expected`],
/// [`mla::IndexerWeights::expected`] for V3.2's indexer,
/// [`moe::Mlp::expected`], [`moe::Moe::expected`], [`mtp::module_weights`]); this function only
/// adds the model's own tensors (embedding, norms, head) and the prefixes.
pub fn expected_tensors(cfg: &ModelConfig) -> (Vec<WeightSpec>, Vec<String>) {
    let hidden = cfg.hidden_size;
    let mut out = vec![
        WeightSpec::plain("model.embed_tokens.weight", vec![cfg.vocab_size, hidden]),
        WeightSpec::plain("model.norm.weight", vec![hidden]),
        WeightSpec::plain("lm_head.weight", vec![cfg.vocab_size, hidden]),
    ];
    let mut optional = Vec::new();
    let under = |prefix: String| move |w: WeightSpec| w.under(&prefix);
    for layer in 0..cfg.num_hidden_layers + cfg.num_nextn_predict_layers {
        let p = format!("model.layers.{layer}");
        out.push(WeightSpec::plain(
            format!("{p}.input_layernorm.weight"),
            vec![hidden],
        ));
        out.push(WeightSpec::plain(
            format!("{p}.post_attention_layernorm.weight"),
            vec![hidden],
        ));
        out.extend(
            mla::MlaWeights::expected(&cfg.mla)
                .into_iter()
                .map(under(format!("{p}.self_attn"))),
        );
        if let Some(indexer) = &cfg.indexer {
            out.extend(
                mla::IndexerWeights::expected(indexer)
                    .into_iter()
                    .map(under(format!("{p}.self_attn.indexer"))),
            );
        }
        let ffn = match (cfg.ffn_kind(layer), &cfg.moe) {
            (FfnKind::Moe, Some(moe)) => moe::Moe::expected(moe),
            _ => moe::Mlp::expected(hidden, cfg.intermediate_size),
        };
        out.extend(ffn.into_iter().map(under(format!("{p}.mlp"))));
        if layer >= cfg.num_hidden_layers {
            out.extend(
                mtp::module_weights(hidden)
                    .into_iter()
                    .map(under(p.clone())),
            );
            optional.extend(
                mtp::unused_release_weights(cfg.vocab_size, hidden)
                    .into_iter()
                    .map(|w| w.under(&p).name),
            );
        }
    }
    (out, optional)
}

/// A lower bound on the number of tensors [`expected_tensors`] lists, computed without listing
/// them: two norms per layer (MTP modules included) and three matrices per routed expert of
/// every MoE layer. A checkpoint holding fewer tensors cannot match the configuration, and
/// listing the plan of a configuration such as `num_hidden_layers: 4294967297` would take
/// unbounded time and memory, so loading compares this bound with the checkpoint first.
pub fn least_tensor_count(cfg: &ModelConfig) -> usize {
    let layers = cfg
        .num_hidden_layers
        .saturating_add(cfg.num_nextn_predict_layers);
    let experts = cfg.moe.as_ref().map_or(0, |m| m.gate.n_routed_experts);
    // Main MoE layers are the multiples of `moe_layer_freq` in [first_k_dense_replace, L)
    // (`ModelConfig::ffn_kind`); every MTP module is MoE in a MoE model.
    let multiples_below = |n: usize| n.div_ceil(cfg.moe_layer_freq);
    let main_moe = multiples_below(cfg.num_hidden_layers)
        .saturating_sub(multiples_below(cfg.first_k_dense_replace));
    let moe_layers = main_moe.saturating_add(cfg.num_nextn_predict_layers);
    layers
        .saturating_mul(2)
        .saturating_add(moe_layers.saturating_mul(experts).saturating_mul(3))
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
        .filter(|t| layer_of(&t.name).is_none_or(|l| l < cfg.num_hidden_layers))
    {
        let n = t.numel();
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
