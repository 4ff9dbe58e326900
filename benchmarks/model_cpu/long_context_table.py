"""Markdown table of long_context.sh's results: prefill and decode tok/s per prompt length and
implementation, with peak RSS."""

import json
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
table = defaultdict(dict)  # (impl, prompt) -> fields
for r in rows:
    if r.get("impl") in ("ours", "hf"):
        if r["impl"] == "hf":
            name = "HF transformers bf16"
        elif r.get("bf16_activations"):
            name = "ours, --bf16-activations"
        else:
            name = "ours (f32 / bf16 matrices)"
        key = (name, r["prompt_len"])
        table[key].update(prefill=r["prefill_tok_s"], decode=r["decode_tok_s"],
                          rss=r["peak_rss_bytes"])
    elif "n_prompt" in r:  # llama-bench JSON: a prefill (n_gen 0) or a decode at depth
        prompt = r["n_prompt"] if r["n_gen"] == 0 else r["n_depth"]
        f = table[("llama.cpp bf16 GGUF", prompt)]
        f["prefill" if r["n_gen"] == 0 else "decode"] = r["avg_ts"]
        f["rss"] = max(f.get("rss", 0), r["peak_rss_bytes"])


def fmt(v, spec):
    return format(v, spec) if v is not None else "–"

print("| implementation | prompt tokens | prefill tok/s | decode tok/s after the prompt | peak RSS GB |")
print("|---|---:|---:|---:|---:|")
for (impl, p), f in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"| {impl} | {p} | {fmt(f.get('prefill'), '.1f')} | {fmt(f.get('decode'), '.2f')} "
          f"| {fmt(f.get('rss', 0) / 1e9, '.2f')} |")
