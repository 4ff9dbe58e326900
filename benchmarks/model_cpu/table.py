"""Markdown table of run.sh's results.jsonl: throughput, ratio vs HF bf16, roofline share."""

import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
ours = [r for r in rows if r["impl"] == "ours"]
hf = [r for r in rows if r["impl"] == "hf"]
# The reference: HF's fastest bf16 decode among the experts implementations run.
ref = max((r for r in hf if r["dtype"] == "bf16"), key=lambda r: r["decode_tok_s"], default=None)
if ref:
    ref = dict(ref, prefill_tok_s=max(r["prefill_tok_s"] for r in hf if r["dtype"] == "bf16"))
# The machine's bandwidth: the best of the measurements taken before each of our runs (other
# processes on the machine only ever lower it).
bw = max((r["bandwidth_gbs"] for r in ours), default=None)
bytes_bf16 = ours[0]["decode_bytes_bf16"] if ours else None
roof_bf16 = bw * 1e9 / bytes_bf16 if ours else None

if ours:
    seen = ", ".join(f"{r['bandwidth_gbs']:.1f}" for r in ours)
    print(f"Read bandwidth {bw:.1f} GB/s (best of {seen}); weights read per decoded token {bytes_bf16 / 1e9:.3f} GB "
          f"in bf16, so the bf16 decode roofline is {roof_bf16:.1f} tok/s.")
    print()
if ref:
    print("Ratios are against HF's best bf16 prefill and best bf16 decode among the HF runs above.")
    print()
print("| implementation | compute / matrices | new tokens | prefill tok/s | vs HF bf16 | decode tok/s | vs HF bf16 "
      "| % of bf16 roofline | % of own-dtype roofline | first greedy tokens |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for r in ours + hf:
    name = ("ours (`model`)" if r["impl"] == "ours"
            else f"HF transformers {r['transformers']} ({r['experts_implementation']} experts, "
                  f"{r['threads']} thread{'s' if r['threads'] > 1 else ''})")
    pre, dec = r["prefill_tok_s"], r["decode_tok_s"]
    vs_pre = f"{pre / ref['prefill_tok_s']:.2f}x" if ref else "-"
    vs_dec = f"{dec / ref['decode_tok_s']:.2f}x" if ref else "-"
    pct_bf16 = f"{100 * dec / roof_bf16:.0f}%" if roof_bf16 else "-"
    matrices = r.get("matrices", r["dtype"])
    elem = {"f32": 4, "f16": 2, "bf16": 2}[matrices]
    own = f"{100 * dec / (roof_bf16 * 2 / elem):.0f}%" if roof_bf16 else "-"
    print(f"| {name} | {r['dtype']} | {r['new_tokens']} | {pre:.1f} | {vs_pre} | {dec:.2f} | {vs_dec} | {pct_bf16} "
          f"| {own} | {r['first_tokens'][:4]} |")
