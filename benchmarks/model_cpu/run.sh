#!/usr/bin/env bash
# Whole-model CPU prefill/decode throughput (issue #5): this workspace's `model` crate vs HF
# transformers 5.23 in bf16, on the same random V2-Lite-shaped 4-layer bf16 checkpoint, in the
# same run. Prints a Markdown table.
#
# Usage (from anywhere): benchmarks/model_cpu/run.sh
# Environment:
#   OURS          our precisions, COMPUTE[:MATRICES] (default "f32:bf16 f32 f16": f32 arithmetic
#                 over the checkpoint's bf16 matrices (the CLI's CPU default), all-f32, all-f16;
#                 "bf16" adds candle's bf16 compute, ~30 min at 0.8 tok/s)
#   APPEND=1      append to results/results.jsonl instead of starting it afresh
#   HF_DTYPES     dtypes of the HF runs             (default "bf16"; "bf16 f32" adds f32)
#   PROMPT_LEN    prompt tokens                     (default 512)
#   NEW_TOKENS    generated tokens                  (default 128)
#   HF_THREADS    torch.set_num_threads             (default 2)
#   HF_EXPERTS    HF experts implementations        (default "eager", its per-expert loop, the
#                 faster on this CPU; "grouped_mm" is transformers 5.23's default)
#   MATVEC=0      skip the M=1 product table (candle matmul vs the linear kernel, per dtype)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
OURS="${OURS-f32:bf16 f32 f16}"
HF_DTYPES="${HF_DTYPES-bf16}"
PROMPT_LEN="${PROMPT_LEN:-512}"
NEW_TOKENS="${NEW_TOKENS:-128}"
HF_THREADS="${HF_THREADS:-2}"
HF_EXPERTS="${HF_EXPERTS-eager}"
out="$here/results"
mkdir -p "$out"
[ "${APPEND:-0}" = 1 ] || : > "$out/results.jsonl"
# shellcheck source=common.sh
. "$here/common.sh"
ensure_hf_venv
build_and_checkpoint
print_machine
matvec=""
[ "${MATVEC:-1}" = 1 ] && matvec="--matvec"
for p in $OURS; do
    dt="${p%%:*}"
    mx="${p#*:}"
    echo "== ours, $dt compute, $mx matrices"
    "$bin/model_decode" --model "$ckpt" --dtype "$dt" --matrices "$mx" --prompt-len "$PROMPT_LEN" \
        --new-tokens "$NEW_TOKENS" $matvec | tee "$out/ours_${dt}_$mx.log"
    tail -n 1 "$out/ours_${dt}_$mx.log" >> "$out/results.jsonl"
    matvec=""
done
for dt in $HF_DTYPES; do
    for ex in $HF_EXPERTS; do
        echo "== HF transformers, $dt, experts_implementation=$ex"
        "$here/.venv/bin/python" "$here/hf_bench.py" --model "$ckpt" --dtype "$dt" \
            --prompt-len "$PROMPT_LEN" --new-tokens "$NEW_TOKENS" --threads "$HF_THREADS" \
            --experts-implementation "$ex" 2>/dev/null | tee "$out/hf_${dt}_$ex.log"
        tail -n 1 "$out/hf_${dt}_$ex.log" >> "$out/results.jsonl"
    done
done
echo "== load after measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 "$here/table.py" "$out/results.jsonl"
