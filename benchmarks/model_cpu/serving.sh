#!/usr/bin/env bash
# Serving throughput (issue 15): the `model` crate's continuous-batching engine against
# llama.cpp's `llama-batched-bench` (bf16 GGUF of the same checkpoint), in the same run, on
# the random V2-Lite-shaped 4-layer checkpoint: aggregate decode tok/s and time to first token
# at several numbers of concurrent streams (512-token prompts), and the cost of n samples of
# one prompt. Prints a Markdown table. (Over HTTP, `model serve` against llama.cpp's
# `llama-server -np N`: serving_http.sh.)
#
# Usage: benchmarks/model_cpu/serving.sh
# Environment:
#   CONCURRENCY    streams                             (default "1,4,16,64")
#   PROMPT         prompt tokens per stream            (default 512)
#   NEW_TOKENS     decode tokens timed per stream      (default 128)
#   MODES          engine modes: invariant and/or fast (default "invariant,fast")
#   BF16_ACT       1 (default): also the invariant mode with --bf16-activations
#   BATCHED_BENCH  llama.cpp's llama-batched-bench binary, and
#   GGUF           the checkpoint converted to a bf16 GGUF (../shared/notes/anchors.md says
#                  how); llama.cpp is skipped when either is unset.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
CONCURRENCY="${CONCURRENCY:-1,4,16,64}"
PROMPT="${PROMPT:-512}"
NEW_TOKENS="${NEW_TOKENS:-128}"
MODES="${MODES:-invariant,fast}"
out="$here/results"
mkdir -p "$out"

# shellcheck source=common.sh
. "$here/common.sh"
build_and_checkpoint
print_machine
echo "== ours"
"$bin/engine" --model "$ckpt" --concurrency "$CONCURRENCY" --prompt-len "$PROMPT" \
    --new-tokens "$NEW_TOKENS" --modes "$MODES" | tee "$out/serving_ours.log"
if [ "${BF16_ACT:-1}" = 1 ]; then
    echo "== ours, --bf16-activations"
    "$bin/engine" --model "$ckpt" --concurrency "$CONCURRENCY" --prompt-len "$PROMPT" \
        --new-tokens "$NEW_TOKENS" --modes invariant --samples 0 --bf16-activations \
        | sed 's/"mode":"invariant"/"mode":"invariant, --bf16-activations"/' \
        | tee -a "$out/serving_ours.log"
fi
if [ -n "${BATCHED_BENCH:-}" ] && [ -n "${GGUF:-}" ]; then
    echo "== llama.cpp"
    max=$(echo "$CONCURRENCY" | tr ',' '\n' | sort -n | tail -1)
    "$BATCHED_BENCH" -m "$GGUF" -t 2 -c $((max * (PROMPT + NEW_TOKENS) + 64)) \
        -npp "$PROMPT" -ntg "$NEW_TOKENS" -npl "$CONCURRENCY" --output-format jsonl \
        2>/dev/null | tee "$out/serving_llama.jsonl"
fi
echo "== load after measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$out/serving_ours.log" "$out/serving_llama.jsonl" <<'PY'
import json, os, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
llama = {}
if os.path.exists(sys.argv[2]):
    for l in open(sys.argv[2]):
        if l.startswith("{"):
            r = json.loads(l)
            llama[r["pl"]] = r
base = next((r["decode_tok_s"] for r in ours if r["mode"] == "generate (no engine)"), None)
print("| engine | streams | aggregate decode tok/s | x one stream (generate) | TTFT mean / max s |")
print("|---|---:|---:|---:|---:|")
for r in ours:
    if "samples" in r or r["mode"] == "generate (no engine)":
        continue
    x = r["decode_tok_s"] / base if base else float("nan")
    print(f"| ours, {r['mode']} | {r['concurrency']} | {r['decode_tok_s']:.1f} | {x:.2f} | "
          f"{r['ttft_mean']:.1f} / {r['ttft_max']:.1f} |")
for pl, r in sorted(llama.items()):
    print(f"| llama.cpp batched-bench | {pl} | {r['speed_tg']:.1f} | | "
          f"{r['t_pp']:.1f} (all prefills) |")
if base:
    print(f"\nOne stream through `model::generate` (no engine): {base:.1f} tok/s.")
for r in ours:
    if "samples" in r:
        print(f"\n{r['mode']}: {r['samples']} samples of one {r['prompt']}-token prompt: "
              f"{r['prompt_tokens_prefilled']} prompt tokens prefilled, "
              f"{r['wall_n_s']:.1f} s (one sample: {r['wall_one_s']:.1f} s)")
PY
