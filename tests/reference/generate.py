#!/usr/bin/env python3
"""Writes the parity fixtures under tests/fixtures/ with HF transformers 5.23 as ground truth.

Each case is a tiny random checkpoint in the layout of DeepSeek's own releases (config.json with
`rope_scaling` + top-level `rope_theta`, sharded safetensors with an index, experts stored one by
one, MTP at `model.layers.{num_hidden_layers}`, FP8 e4m3 with 128x128 `weight_scale_inv`) plus
`reference.safetensors` (tensors captured from the HF model) and `meta.json`. The DeepSeek-V3.2
case (`v32_dsa`) also records each layer's lightning-indexer scores and selected keys.

    python3 -m venv .venv && .venv/bin/pip install -r tests/reference/requirements.txt
    .venv/bin/python tests/reference/generate.py            # all cases
    .venv/bin/python tests/reference/generate.py v3_fp8     # one case

The Rust side checks FIXTURE_VERSION (meta.json "version") so stale fixtures fail loudly.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM,
                          DeepseekV32Config, DeepseekV32ForCausalLM)
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import MtpModel
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as hf_v2
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_v3

from dsa_generate import index_scores, selected_mask

FIXTURE_VERSION = 1
OUT = Path(__file__).resolve().parent.parent / "fixtures"
PROMPT_LEN = 10
GREEDY_NEW_TOKENS = 16
ROPE_POSITIONS = [0, 1, 2, 7, 100, 4095, 4096, 20000, 163839]
FP8_BLOCK = 128
FP8_MAX = 448.0
# V3.2: smallest gap between the k-th and (k+1)-th visible index score on rows that drop keys.
MIN_INDEX_GAP = 1e-3

# YaRN settings whose ramp falls inside the rotary pairs (checked in `check_ramp`).
YARN_V2 = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
           "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
# mscale != mscale_all_dim so the cos/sin attention factor is not 1 (exercises both mscales).
YARN_V3 = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
           "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8}

COMMON = {
    "vocab_size": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 163840,
    "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False,
    "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32",
}

CASES = {
    # 1. V2 style: plain q_proj, softmax gate, greedy top-k, 2 shared experts, YaRN mscale 0.707.
    "v2_greedy": dict(
        arch="v2", seed=1,
        config=dict(COMMON, architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
                    hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32,
                    qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=8,
                    n_shared_experts=2, num_experts_per_tok=2, first_k_dense_replace=1, moe_layer_freq=1,
                    topk_method="greedy", n_group=1, topk_group=1, norm_topk_prob=False,
                    routed_scaling_factor=1.0, scoring_func="softmax", rope_scaling=YARN_V2),
    ),
    # 2. V2 group-limited greedy (group score = max), routed_scaling_factor != 1.
    "v2_group_limited": dict(
        arch="v2", seed=2,
        config=dict(COMMON, architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
                    hidden_size=64, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32,
                    qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=16,
                    n_shared_experts=1, num_experts_per_tok=3, first_k_dense_replace=1, moe_layer_freq=1,
                    topk_method="group_limited_greedy", n_group=4, topk_group=2, norm_topk_prob=False,
                    routed_scaling_factor=2.0, scoring_func="softmax", rope_scaling=YARN_V2),
    ),
    # 3. V3 style: sigmoid + noaux_tc with mostly negative correction bias, q_lora, 2 dense layers.
    "v3_noaux": dict(
        arch="v3", seed=3, negative_bias=True,
        config=dict(COMMON, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                    hidden_size=64, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32,
                    qk_nope_head_dim=16, qk_rope_head_dim=32, v_head_dim=16, n_routed_experts=16,
                    n_shared_experts=1, num_experts_per_tok=4, first_k_dense_replace=2, moe_layer_freq=1,
                    topk_method="noaux_tc", n_group=4, topk_group=2, norm_topk_prob=True,
                    routed_scaling_factor=2.5, scoring_func="sigmoid", num_nextn_predict_layers=0,
                    rope_scaling=YARN_V3),
    ),
    # 4. V3 with one MTP module at model.layers.{num_hidden_layers}.
    "v3_mtp": dict(
        arch="v3", seed=4, negative_bias=True, mtp=True,
        config=dict(COMMON, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                    hidden_size=64, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32,
                    qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=8,
                    n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, moe_layer_freq=1,
                    topk_method="noaux_tc", n_group=2, topk_group=1, norm_topk_prob=True,
                    routed_scaling_factor=2.5, scoring_func="sigmoid", num_nextn_predict_layers=1,
                    rope_scaling=YARN_V3),
    ),
    # 5. V3 FP8: e4m3 + 128x128 block scales on dims that are not multiples of 128.
    "v3_fp8": dict(
        arch="v3", seed=5, negative_bias=True, fp8=True,
        config=dict(COMMON, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                    hidden_size=160, intermediate_size=272, moe_intermediate_size=144, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, q_lora_rank=136, kv_lora_rank=144,
                    qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=8,
                    n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, moe_layer_freq=1,
                    topk_method="noaux_tc", n_group=2, topk_group=1, norm_topk_prob=True,
                    routed_scaling_factor=2.5, scoring_func="sigmoid", num_nextn_predict_layers=0,
                    rope_scaling=YARN_V3,
                    quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3",
                                         "quant_method": "fp8", "weight_block_size": [128, 128]}),
    ),
    # 6. V3 with `rope_interleave: false`: HF rotates half-split pairs (`rotate_half`) instead
    #    of DeepSeek's interleaved ones; plain q_proj, two MoE layers.
    "v3_rope_half": dict(
        arch="v3", seed=7, negative_bias=True,
        config=dict(COMMON, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                    hidden_size=64, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32,
                    qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=8,
                    n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=0, moe_layer_freq=1,
                    topk_method="noaux_tc", n_group=2, topk_group=1, norm_topk_prob=True,
                    routed_scaling_factor=2.5, scoring_func="sigmoid", num_nextn_predict_layers=0,
                    rope_interleave=False, rope_scaling=YARN_V3),
    ),
    # 7. V3.2 (DSA): a lightning indexer per layer keeps the top-8 of a 24-token prompt (then 40
    #    with the greedy continuation), so selection really drops keys; FP8 as released (the
    #    indexer's wq_b / wk too, weights_proj not); transformers 5.x `rope_parameters` spelling.
    "v32_dsa": dict(
        arch="v32", seed=6, negative_bias=True, fp8=True, prompt_len=24,
        config=dict({k: v for k, v in COMMON.items() if k != "rope_theta"},
                    architectures=["DeepseekV32ForCausalLM"], model_type="deepseek_v32",
                    hidden_size=64, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32,
                    qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=8,
                    n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, moe_layer_freq=1,
                    topk_method="noaux_tc", n_group=2, topk_group=1, norm_topk_prob=True,
                    routed_scaling_factor=2.5, scoring_func="sigmoid", num_nextn_predict_layers=0,
                    index_topk=8, index_n_heads=8, index_head_dim=32,
                    rope_parameters=dict({k: v for k, v in YARN_V3.items() if k != "type"},
                                         rope_type="yarn", rope_theta=10000.0),
                    quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3",
                                         "quant_method": "fp8", "weight_block_size": [128, 128]}),
    ),
}


def hf_config(arch, cfg):
    kwargs = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype",
                                                         "quantization_config", "moe_layer_freq", "scoring_func")}
    if arch == "v3":
        kwargs.pop("topk_method")
        kwargs["num_mtp_layers"] = kwargs.pop("num_nextn_predict_layers")
        return DeepseekV3Config(**kwargs)
    if arch == "v32":
        kwargs.pop("topk_method")
        kwargs.pop("num_nextn_predict_layers")  # HF 5.23 ignores V3.2's MTP layer
        return DeepseekV32Config(**kwargs)
    return DeepseekV2Config(**kwargs)


def init_weights(model, gen, negative_bias):
    """Scaled so that activations stay O(1) and routing/logits are far from flat."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or ".norm." in name or name.endswith("layernorm.weight"):
            p.data = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
        elif name.endswith("gate.weight"):
            p.data = 2.0 * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
        elif name.endswith("embed_tokens.weight"):
            p.data = torch.randn(p.shape, generator=gen)
        else:
            p.data = 1.2 * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            # Mostly negative, some large: with 0.0-masking of dropped groups the masked experts
            # (score 0) would beat every biased score below 0.
            b.data = -1.0 + 0.3 * torch.randn(b.shape, generator=gen) if negative_bias else b.data


def per_expert_state(prefix, module):
    """HF 5.x fuses experts; releases store them one by one (gate rows come first in gate_up)."""
    out = {}
    gate_up, down = module.gate_up_proj.data, module.down_proj.data
    inter = gate_up.shape[1] // 2
    for e in range(gate_up.shape[0]):
        out[f"{prefix}.{e}.gate_proj.weight"] = gate_up[e, :inter].clone()
        out[f"{prefix}.{e}.up_proj.weight"] = gate_up[e, inter:].clone()
        out[f"{prefix}.{e}.down_proj.weight"] = down[e].clone()
    return out


def release_state(model, mtp, num_layers):
    state = {}
    for name, t in model.state_dict().items():
        if ".mlp.experts." in name:
            continue
        state[name] = t.detach().clone()
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "experts"):
            state.update(per_expert_state(f"model.layers.{i}.mlp.experts", layer.mlp.experts))
    if mtp is not None:
        layer = mtp.layers[0]
        p = f"model.layers.{num_layers}"
        for name, t in layer.state_dict().items():
            if ".mlp.experts." in name:
                continue
            key = name.replace("mtp_block.", "").replace("post_norm.", "shared_head.norm.")
            state[f"{p}.{key}"] = t.detach().clone()
        state.update(per_expert_state(f"{p}.mlp.experts", layer.mtp_block.mlp.experts))
    return state


def is_fp8_target(name):
    if name.endswith("indexer.weights_proj.weight"):  # bf16 in DeepSeek's V3.2 release
        return False
    return ((name.endswith("_proj.weight") and "eh_proj" not in name) or name.endswith("proj_with_mqa.weight")
            or name.endswith(("indexer.wq_b.weight", "indexer.wk.weight")))


def quantize_fp8(w):
    """Block-wise e4m3 with scale = amax/448 per 128x128 block; returns (fp8, scale_inv, dequant)."""
    rows, cols = w.shape
    br, bc = math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK)
    scale = torch.empty(br, bc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK]
            s = blk.abs().max().clamp(min=1e-12) / FP8_MAX
            scale[i, j] = s
            q[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    deq = q.to(torch.float32) * scale.repeat_interleave(FP8_BLOCK, 0)[:rows].repeat_interleave(FP8_BLOCK, 1)[:, :cols]
    return q, scale, deq


def save_sharded(state, out_dir, shards=2):
    names = sorted(state)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[s * per:(s + 1) * per]}
        save_file(part, out_dir / fname, metadata={"format": "pt"})
        for n, t in part.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


class Recorder:
    """Forward hooks that capture every layer's attention/MLP/gate inputs and outputs."""

    def __init__(self, layers):
        self.data, self.handles = {}, []
        # V3.2: per forward call, {layer: the indexer's returned indices [B, S, k]}.
        self.indexed = []
        for i, layer in enumerate(layers):
            indexer = getattr(layer.self_attn, "indexer", None)
            if indexer is not None:
                self.handles.append(indexer.register_forward_hook(self.indexer_hook(i)))
            self.hook(layer.self_attn, f"layers.{i}.attn", kw_input="hidden_states")
            self.hook(layer.mlp, f"layers.{i}.mlp")
            self.hook(layer, f"layers.{i}.layer", kw_input="hidden_states")
            if hasattr(layer.mlp, "gate"):
                self.handles.append(layer.mlp.gate.register_forward_hook(self.gate_hook(f"layers.{i}.gate")))

    def hook(self, module, key, kw_input=None):
        def fn(_mod, args, kwargs, output):
            x = args[0] if args else kwargs[kw_input]
            y = output[0] if isinstance(output, tuple) else output
            self.data.setdefault(f"{key}_in", []).append(x.detach().clone())
            self.data.setdefault(f"{key}_out", []).append(y.detach().clone())
        self.handles.append(module.register_forward_hook(fn, with_kwargs=True))

    def indexer_hook(self, layer):
        def fn(_mod, _args, output):
            if layer == 0:
                self.indexed.append({})
            self.indexed[-1][layer] = output.detach().clone()
        return fn

    def gate_hook(self, key):
        def fn(_mod, _args, output):
            logits, weights, idx = output
            self.data.setdefault(f"{key}_logits", []).append(logits.detach().clone())
            self.data.setdefault(f"{key}_weights", []).append(weights.detach().clone())
            self.data.setdefault(f"{key}_indices", []).append(idx.detach().clone())
        return fn

    def take(self, seq_dim_cat):
        out = {}
        for k, vs in self.data.items():
            dim = 0 if ".gate_" in k else seq_dim_cat
            out[k] = torch.cat(vs, dim=dim)
        self.data = {}
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def sort_routing(ref):
    """Routing is a set per token: store indices ascending (weights permuted alike)."""
    for k in list(ref):
        if k.endswith("gate_indices"):
            w = k.replace("indices", "weights")
            idx, order = ref[k].sort(dim=-1)
            ref[k] = idx
            ref[w] = ref[w].gather(-1, order)


def rope_reference(model, arch, gen):
    rotary = model.model.rotary_emb
    ref = {"rope.inv_freq": rotary.inv_freq.detach().clone(),
           "rope.attention_scaling": torch.tensor([rotary.attention_scaling], dtype=torch.float32)}
    pos = torch.tensor([ROPE_POSITIONS])
    d = model.config.qk_rope_head_dim
    x = torch.zeros(1, 1, len(ROPE_POSITIONS), d)
    q = torch.randn(1, 3, len(ROPE_POSITIONS), d, generator=gen)
    k = torch.randn(1, 1, len(ROPE_POSITIONS), d, generator=gen)
    ref["rope.positions"] = pos[0].to(torch.int64)
    ref["rope.q_in"], ref["rope.k_in"] = q, k
    if arch in ("v3", "v32"):
        cos, sin = rotary(x, pos)
        ref["rope.cos"], ref["rope.sin"] = cos[0], sin[0]
        if model.config.rope_interleave is False:
            q_out, k_out = hf_v3.apply_rotary_pos_emb(q, k, cos, sin)
            ref["rope.layout"] = torch.tensor([2])  # half-split pairs (i, i + d/2) in place
        else:
            q_out, k_out = hf_v3.apply_rotary_pos_emb_interleave(q, k, cos, sin)
            ref["rope.layout"] = torch.tensor([1])  # [rotated evens | rotated odds]
    else:
        freqs_cis = rotary(x, pos)
        ref["rope.cos"] = torch.cat([freqs_cis.real, freqs_cis.real], -1)[0].float()
        ref["rope.sin"] = torch.cat([freqs_cis.imag, freqs_cis.imag], -1)[0].float()
        q_out, k_out = hf_v2.apply_rotary_emb(q, k, freqs_cis)
        ref["rope.layout"] = torch.tensor([0])  # interleaved pairs in place
    ref["rope.q_out"], ref["rope.k_out"] = q_out, k_out
    return ref


@torch.no_grad()
def run_case(name, spec):
    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    cfg = spec["config"]
    hcfg = hf_config(spec["arch"], cfg)
    hcfg._attn_implementation = "eager"
    model_class = {"v2": DeepseekV2ForCausalLM, "v3": DeepseekV3ForCausalLM, "v32": DeepseekV32ForCausalLM}
    model = model_class[spec["arch"]](hcfg).eval()
    mtp = MtpModel(model, 1).eval() if spec.get("mtp") else None
    init_weights(model, gen, spec.get("negative_bias", False))
    if mtp is not None:
        init_weights(mtp, gen, True)
        mtp.tie_with_main_model(model)

    state = release_state(model, mtp, cfg["num_hidden_layers"])
    if spec.get("fp8"):
        deq = {}
        for n in list(state):
            if is_fp8_target(n):
                q, s, d = quantize_fp8(state[n])
                state[n], state[n.replace(".weight", ".weight_scale_inv")] = q, s
                deq[n] = d
        # The reference model runs on exactly the dequantised weights.
        load_release_into(model, {**state, **deq})

    out_dir = OUT / name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_sharded(state, out_dir)

    n = spec.get("prompt_len", PROMPT_LEN)
    ids = torch.randint(2, cfg["vocab_size"], (1, n), generator=gen)
    ref = {"input_ids": ids[0]}
    ref.update(rope_reference(model, spec["arch"], gen))

    # Prefill: every layer's attention/MLP/gate inputs and outputs, final hidden state, logits.
    rec = Recorder(model.model.layers)
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    for k, v in rec.take(seq_dim_cat=1).items():
        ref[f"prefill.{k}"] = v[0] if v.dim() == 3 else v
    if spec["arch"] == "v32":
        prefill_selection(model, ref, rec.indexed.pop(), n)
    ref["prefill.final_hidden"] = out.hidden_states[-1][0]
    ref["prefill.logits"] = out.logits[0]

    # Step-by-step decode through the latent cache: one token at a time.
    cache = DynamicCache(config=hcfg)
    step_logits = []
    for t in range(n):
        o = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True,
                  position_ids=torch.tensor([[t]]))
        step_logits.append(o.logits[0])
    if spec["arch"] == "v32":
        decode_selection(model, ref, rec.indexed, n)
    for k, v in rec.take(seq_dim_cat=1).items():
        if k.endswith("attn_out"):
            ref[f"decode.{k}"] = v[0]
    ref["decode.logits"] = torch.cat(step_logits, 0)
    rec.close()

    # Greedy continuation (prefill, then one token at a time from the cache).
    cache = DynamicCache(config=hcfg)
    o = model(input_ids=ids, past_key_values=cache, use_cache=True)
    greedy = []
    for t in range(GREEDY_NEW_TOKENS):
        nxt = int(o.logits[0, -1].argmax())
        greedy.append(nxt)
        o = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True,
                  position_ids=torch.tensor([[n + t]]))
    ref["greedy"] = torch.tensor(greedy, dtype=torch.int64)

    if mtp is not None:
        # Row j: depth-1 module on (final-normed hidden state j, token j+1) at position j+1.
        hidden = out.hidden_states[-1][:, :-1]
        h = mtp.forward_layer(0, hidden, torch.arange(1, n)[None], None, input_ids=ids[:, 1:])
        ref["mtp.hidden"] = h[0]
        ref["mtp.logits"] = mtp._project_to_logits(h)[0]

    check_case(model, ref)
    sort_routing(ref)
    ref = {k: (v.to(torch.float32) if v.is_floating_point() else v.to(torch.int64)).contiguous()
           for k, v in ref.items()}
    save_file(ref, out_dir / "reference.safetensors", metadata={"fixture_version": str(FIXTURE_VERSION)})
    meta = {"version": FIXTURE_VERSION, "transformers": transformers.__version__, "torch": torch.__version__,
            "arch": spec["arch"], "prompt_len": n, "rope_positions": ROPE_POSITIONS,
            "greedy": ref["greedy"].tolist(), "input_ids": ids[0].tolist(),
            "fp8": bool(spec.get("fp8")), "mtp": bool(spec.get("mtp"))}
    if spec["arch"] == "v32":
        meta["index_topk"] = cfg["index_topk"]
        meta["min_index_gap"] = min(float(ref[f"prefill.layers.{i}.index_gap"])
                                    for i in range(cfg["num_hidden_layers"]))
        meta["selected_keys"] = [int(ref[f"prefill.layers.{i}.selected"].sum()) for i in range(cfg["num_hidden_layers"])]
        meta["causal_keys"] = n * (n + 1) // 2
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"{name}: {size / 1024:.0f} KiB, logits std {out.logits.std():.2f}, greedy {greedy}")


def prefill_selection(model, ref, indexed, n):
    """V3.2 prefill: each layer's index scores `[T, T]` (-inf on future keys, recomputed from the
    recorded attention input as HF computes them: `dsa_generate.index_scores`), the keys HF's
    indexer selected as a 0/1 `[T, T]` matrix, and the smallest top-k boundary gap."""
    k = model.config.index_topk
    pos = torch.arange(n)[None]
    for i, layer in enumerate(model.model.layers):
        x = ref[f"prefill.layers.{i}.attn_in"][None]
        cos, sin = model.model.rotary_emb(x, pos)
        scores = index_scores(layer.self_attn, x, cos, sin)[0]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        gap = min(float(scores[r, : r + 1].sort(descending=True).values[k - 1]
                        - scores[r, : r + 1].sort(descending=True).values[k]) for r in range(k, n))
        assert gap > MIN_INDEX_GAP, f"layer {i}: near-tie at the top-{k} boundary ({gap:.2e}): pick another seed"
        sel = selected_mask(indexed[i][0], range(n), n)
        for r in range(k, n):
            assert set(indexed[i][0, r].tolist()) == set(scores[r, : r + 1].topk(k).indices.tolist()), (i, r)
        assert int(sel.sum()) < n * (n + 1) // 2, "selection drops no key"
        ref[f"prefill.layers.{i}.index_scores"] = scores
        ref[f"prefill.layers.{i}.selected"] = sel
        ref[f"prefill.layers.{i}.index_gap"] = torch.tensor([gap])


def decode_selection(model, ref, indexed, n):
    """V3.2 step-by-step decode: the keys each step's indexer selected, `[T, T]` per layer."""
    assert len(indexed) == n, len(indexed)
    for i in range(len(model.model.layers)):
        sel = torch.zeros(n, n)
        for t, step in enumerate(indexed):
            sel[t, : t + 1] = selected_mask(step[i][0], [t], t + 1)[0]
        assert torch.equal(sel, ref[f"prefill.layers.{i}.selected"]), f"layer {i}: decode selects other keys"
        ref[f"decode.layers.{i}.selected"] = sel
    indexed.clear()


def check_case(model, ref):
    """Fixture self-checks: decode agrees with prefill, routing has no near-ties, and for noaux_tc
    masking dropped groups with 0.0 instead of -inf picks different experts on some token."""
    assert (ref["decode.logits"] - ref["prefill.logits"]).abs().max() < 1e-4
    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is None:
            continue
        x = ref[f"prefill.layers.{i}.mlp_in"].reshape(-1, gate.weight.shape[1])
        logits = x @ gate.weight.T
        if hasattr(gate, "e_score_correction_bias"):
            s = logits.sigmoid() + gate.e_score_correction_bias
            g = s.view(len(s), gate.num_group, -1).topk(2, -1)[0].sum(-1)
            keep = torch.zeros_like(g).scatter_(1, g.topk(gate.topk_group, -1)[1], 1).bool()
            keep = keep.repeat_interleave(s.shape[1] // gate.num_group, 1)
            right = s.masked_fill(~keep, float("-inf")).topk(gate.top_k, -1)[1].sort(-1)[0]
            wrong = s.masked_fill(~keep, 0.0).topk(gate.top_k, -1)[1].sort(-1)[0]
            assert (right != wrong).any(), f"layer {i}: 0.0 masking is indistinguishable"
            sel = s.masked_fill(~keep, float("-inf"))
        else:
            sel = logits.softmax(-1)
        top = sel.topk(gate.top_k + 1, -1)[0]
        gap = (top[:, -2] - top[:, -1]).min()
        assert gap > 1e-4, f"layer {i}: routing near-tie ({gap:.2e})"


def load_release_into(model, state):
    """Loads release-layout (per-expert) weights back into the fused HF modules."""
    own = model.state_dict()
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "experts"):
            ex = layer.mlp.experts
            for e in range(ex.gate_up_proj.shape[0]):
                p = f"model.layers.{i}.mlp.experts.{e}"
                ex.gate_up_proj.data[e] = torch.cat([state[f"{p}.gate_proj.weight"], state[f"{p}.up_proj.weight"]])
                ex.down_proj.data[e] = state[f"{p}.down_proj.weight"]
    for n, t in own.items():
        if n in state and state[n].dtype != torch.float8_e4m3fn:
            t.copy_(state[n])


def check_ramp():
    """The YaRN ramp must fall strictly inside the rotary pairs for every case (non-degenerate)."""
    for name, spec in CASES.items():
        c = spec["config"]
        d, rs = c["qk_rope_head_dim"], c.get("rope_scaling") or c["rope_parameters"]
        theta = c.get("rope_theta", rs.get("rope_theta"))
        corr = lambda r: d * math.log(rs["original_max_position_embeddings"] / (r * 2 * math.pi)) / (2 * math.log(theta))
        low, high = math.floor(corr(rs["beta_fast"])), math.ceil(corr(rs["beta_slow"]))
        assert 0 < low < high < d // 2 - 1, (name, low, high)


if __name__ == "__main__":
    check_ramp()
    wanted = sys.argv[1:] or list(CASES)
    for case in wanted:
        run_case(case, CASES[case])
