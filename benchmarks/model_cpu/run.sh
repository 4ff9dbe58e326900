#!/usr/bin/env bash
# Whole-model CPU prefill/decode throughput (issue #5): this workspace's `model` crate in f32,
# f16 and bf16 compute vs HF transformers 5.23 in bf16, on the same random V2-Lite-shaped
# 4-layer bf16 checkpoint, in the same run. Prints a Markdown table.
#
# Usage (from anywhere): benchmarks/model_cpu/run.sh
# Environment:
#   OURS_DTYPES   compute dtypes of our runs        (default "f32 f16 bf16")
#   LAST_HEAD_DTYPES  our runs with --prefill-head last (head on the last prompt position only,
#                 as HF's logits_to_keep=1)       (default "f32 f16")
#   APPEND=1      append to results/results.jsonl instead of starting it afresh
#   HF_DTYPES     dtypes of the HF runs             (default "bf16"; "bf16 f32" adds f32)
#   PROMPT_LEN    prompt tokens                     (default 512)
#   NEW_TOKENS    generated tokens                  (default 128)
#   HF_THREADS    torch.set_num_threads             (default 2)
#   HF_EXPERTS    HF experts implementations        (default "grouped_mm eager"; grouped_mm is
#                 transformers 5.23's default, eager its per-expert loop, faster on this CPU)
#   MATVEC=0      skip printing candle's M=1 matmul throughput per dtype
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
OURS_DTYPES="${OURS_DTYPES-f32 f16 bf16}"
HF_DTYPES="${HF_DTYPES-bf16}"
LAST_HEAD_DTYPES="${LAST_HEAD_DTYPES-f32 f16}"
PROMPT_LEN="${PROMPT_LEN:-512}"
NEW_TOKENS="${NEW_TOKENS:-128}"
HF_THREADS="${HF_THREADS:-2}"
HF_EXPERTS="${HF_EXPERTS-grouped_mm eager}"
ckpt="$here/ckpt"
out="$here/results"
mkdir -p "$out"
[ "${APPEND:-0}" = 1 ] || : > "$out/results.jsonl"

# Python side: its own venv (pip reuses its cache).
if [ ! -x "$here/.venv/bin/python" ] || ! "$here/.venv/bin/python" -c 'import torch, transformers' 2>/dev/null; then
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q -r "$here/requirements.txt"
fi

# Rust side.
cd "$root"
cargo build --release -q -p model -p benchmarks
bin="${CARGO_TARGET_DIR:-$root/target}/release"

# The checkpoint, made once (4.4 GB of bf16).
if [ ! -f "$ckpt/model.safetensors.index.json" ]; then
    rm -rf "$ckpt"
    "$bin/model" random-checkpoint --config "$here/v2_lite_4l.json" --out "$ckpt" --dtype bf16 --seed 0
fi

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), \
SIMD: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|avx512fp16|amx_bf16)$' | xargs)"
echo "== load before measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
matvec=""
[ "${MATVEC:-1}" = 1 ] && matvec="--matvec"
for dt in $OURS_DTYPES; do
    echo "== ours, $dt compute"
    "$bin/model_decode" --model "$ckpt" --dtype "$dt" --prompt-len "$PROMPT_LEN" \
        --new-tokens "$NEW_TOKENS" $matvec | tee "$out/ours_$dt.log"
    tail -n 1 "$out/ours_$dt.log" >> "$out/results.jsonl"
    matvec=""
done
for dt in $LAST_HEAD_DTYPES; do
    echo "== ours, $dt compute, prefill head on the last position only"
    "$bin/model_decode" --model "$ckpt" --dtype "$dt" --prompt-len "$PROMPT_LEN" \
        --new-tokens "$NEW_TOKENS" --prefill-head last | tee "$out/ours_${dt}_last.log"
    tail -n 1 "$out/ours_${dt}_last.log" >> "$out/results.jsonl"
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
