#!/usr/bin/env python3
"""Writes the DSA (DeepSeek-V3.2 sparse attention) parity fixture under tests/fixtures/dsa/ with HF
transformers 5.23 as ground truth.

One tiny random `DeepseekV32Attention` layer (MLA + the lightning indexer), run on a context longer
than `index_topk` (32 tokens, top-8) so the indexer really drops keys:

- `config.json`: the HF config (transformers 5.x spelling: `rope_parameters`, YaRN with
  mscale != mscale_all_dim so the cos/sin attention factor also scales the indexer's scores);
- `model-00001-of-00001.safetensors`: the layer's weights under `self_attn.*` (the indexer under
  `self_attn.indexer.*`: `wq_b`, `wk`, `k_norm` weight and bias, `weights_proj`);
- `reference.safetensors`: `x` `[T, C]` (the attention input), `prefill.attn_out` `[T, C]` (one
  pass, no cache), `decode.attn_out` `[T, C]` (one token at a time through a `DynamicCache`),
  `prefill.index_scores` `[T, T]` (f32, the indexer's scores with the causal mask: -inf in the
  future), `prefill.selected` `[T, T]` (1 where the indexer selected a visible key, from the
  indices HF's indexer returned), `decode.selected` `[T, T]` (the same from the decode steps);
- `meta.json`: fixture version, library versions, the smallest gap between the k-th and the
  (k+1)-th visible score over rows that drop keys (asserted > MIN_GAP: no near-ties).

    PYTHONPATH=/path/to/transformers python tests/reference/dsa_generate.py
"""

import json
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import DeepseekV32Config
from transformers.cache_utils import DynamicCache
from transformers.models.deepseek_v32 import modeling_deepseek_v32 as hf

FIXTURE_VERSION = 1
OUT = Path(__file__).resolve().parent.parent / "fixtures" / "dsa"
SEED = 8
T = 32
MIN_GAP = 1e-3

CONFIG = {
    "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
    "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
    "first_k_dense_replace": 1, "rms_norm_eps": 1e-6, "max_position_embeddings": 163840,
    "index_topk": 8, "index_n_heads": 8, "index_head_dim": 16,
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                        "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
                        "mscale": 1.0, "mscale_all_dim": 0.8},
    "attention_bias": False, "tie_word_embeddings": False, "torch_dtype": "float32",
}


def hf_config():
    kw = {k: v for k, v in CONFIG.items() if k not in ("architectures", "model_type", "torch_dtype")}
    cfg = DeepseekV32Config(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def init_weights(attn, gen):
    for name, p in attn.named_parameters():
        if name.endswith("k_norm.bias"):
            p.data = 0.2 * torch.randn(p.shape, generator=gen)
        elif "norm" in name:
            p.data = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
        else:
            p.data = 1.2 * torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5


def causal_mask(q_len, k_len):
    """HF's additive eager mask `[1, 1, q, k]`: 0 on visible keys, finfo.min on future ones."""
    m = torch.full((q_len, k_len), torch.finfo(torch.float32).min)
    m = m.triu(k_len - q_len + 1)
    return m[None, None]


def index_scores(attn, x, cos, sin, keys=None):
    """The indexer's scores, step for step as HF computes them (before the mask)."""
    ix = attn.indexer
    b, s, _ = x.shape
    q_resid = attn.q_a_layernorm(attn.q_a_proj(x))
    q = ix.wq_b(q_resid).view(b, s, ix.n_heads, ix.head_dim)
    q_rot, q_pass = torch.split(q, [ix.qk_rope_head_dim, ix.head_dim - ix.qk_rope_head_dim], dim=-1)
    k = ix.k_norm(ix.wk(x)).unsqueeze(2)
    k_rot, k_pass = torch.split(k, [ix.qk_rope_head_dim, ix.head_dim - ix.qk_rope_head_dim], dim=-1)
    q_rot, k_rot = hf.apply_rotary_pos_emb(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
    q = torch.cat([q_rot, q_pass], dim=-1)
    k = torch.cat([k_rot, k_pass], dim=-1).squeeze(2)
    scores = torch.relu(torch.matmul(q.float(), k.transpose(-1, -2).float().unsqueeze(1)) * ix.softmax_scale)
    w = ix.weights_proj(x).float() * ix.n_heads ** -0.5
    return torch.matmul(w.unsqueeze(-2), scores).squeeze(-2)  # [B, S, T]


def selected_mask(indices, q_pos, k_len):
    """`[q, k]` 1.0 where a returned index is a visible key (HF also returns masked future keys when
    fewer than top-k are visible; the causal mask drops them again)."""
    out = torch.zeros(len(q_pos), k_len)
    for row, pos in enumerate(q_pos):
        for j in indices[row].tolist():
            if j <= pos:
                out[row, j] = 1.0
    return out


@torch.no_grad()
def main():
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    cfg = hf_config()
    attn = hf.DeepseekV32Attention(cfg, 0).eval()
    init_weights(attn, gen)
    rotary = hf.DeepseekV32RotaryEmbedding(cfg)
    x = torch.randn(1, T, CONFIG["hidden_size"], generator=gen)

    captured = []
    attn.indexer.register_forward_hook(lambda _m, _a, out: captured.append(out.detach().clone()))

    # Prefill: one pass, no cache.
    pos = torch.arange(T)[None]
    cos, sin = rotary(x, pos)
    prefill, _ = attn(x, (cos, sin), causal_mask(T, T))
    pre_idx = captured.pop()[0]
    scores = index_scores(attn, x, cos, sin)[0]
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))

    # HF's indices are the top-k of these scores: check, and that no row drops keys at a near-tie.
    k = CONFIG["index_topk"]
    min_gap = float("inf")
    for i in range(T):
        visible = scores[i, : i + 1]
        if i + 1 > k:
            top = visible.sort(descending=True).values
            min_gap = min(min_gap, float(top[k - 1] - top[k]))
    assert min_gap > MIN_GAP, f"near-tie at the top-{k} boundary ({min_gap:.2e}): pick another seed"
    for i in range(k, T):
        assert set(pre_idx[i].tolist()) == set(scores[i, : i + 1].topk(k).indices.tolist()), i
    pre_sel = selected_mask(pre_idx, range(T), T)

    # Decode: one token at a time through the cache (latents and indexer keys).
    cache = DynamicCache(config=cfg)
    outs, dec_sel = [], torch.zeros(T, T)
    for t in range(T):
        p = torch.tensor([[t]])
        cs = rotary(x[:, t:t + 1], p)
        o, _ = attn(x[:, t:t + 1], cs, torch.zeros(1, 1, 1, t + 1), past_key_values=cache)
        outs.append(o)
        idx = captured.pop()[0, 0]
        dec_sel[t, : t + 1] = selected_mask(idx[None], [t], t + 1)[0]
    decode = torch.cat(outs, 1)
    assert (decode - prefill).abs().max() < 1e-5
    assert torch.equal(dec_sel, pre_sel)
    # Selection really drops keys.
    assert int(pre_sel.sum()) < T * (T + 1) // 2

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    state = {f"self_attn.{n}": t.detach().clone().contiguous() for n, t in attn.state_dict().items()}
    save_file(state, OUT / "model-00001-of-00001.safetensors", metadata={"format": "pt"})
    ref = {
        "x": x[0], "prefill.attn_out": prefill[0], "decode.attn_out": decode[0],
        "prefill.index_scores": scores, "prefill.selected": pre_sel, "decode.selected": dec_sel,
    }
    ref = {n: t.to(torch.float32).contiguous() for n, t in ref.items()}
    save_file(ref, OUT / "reference.safetensors", metadata={"fixture_version": str(FIXTURE_VERSION)})
    meta = {"version": FIXTURE_VERSION, "transformers": transformers.__version__, "torch": torch.__version__,
            "seed": SEED, "tokens": T, "index_topk": k, "min_topk_gap": min_gap,
            "selected_keys": int(pre_sel.sum()), "causal_keys": T * (T + 1) // 2}
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"dsa: {size / 1024:.0f} KiB, min top-k gap {min_gap:.3e}, "
          f"{int(pre_sel.sum())} of {T * (T + 1) // 2} causal keys selected")


if __name__ == "__main__":
    main()
