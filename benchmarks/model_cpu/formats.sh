#!/usr/bin/env bash
# Weight formats (issue 13): decode and prefill speed of the `model` crate with its matrices in
# bf16, FP8 (as shipped), q8 and q4 against llama.cpp's bf16, Q8_0 and Q4_K_M GGUFs of the
# same random V2-Lite-shaped 4-layer checkpoint, in the same run (prefill 512; decode 128
# after 512 tokens), each with its roofline from the read bandwidth measured in the run; then
# the quality of each format (next-token KL against the f32 model over 512 positions,
# `quant_quality`) and the weight-level error against llama.cpp's types (`quant_error`).
#
# Usage: benchmarks/model_cpu/formats.sh
# Environment:
#   LLAMA_BIN   llama.cpp's build/bin (llama-bench); GGUF_DIR holding ckpt-bf16.gguf,
#               ckpt-Q8_0.gguf and ckpt-Q4_K_M.gguf (../shared/notes/anchors.md says how to
#               build and convert them); llama.cpp is skipped when either is unset.
#   QUALITY=0   skip the quality and weight-error measurements.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/results"
mkdir -p "$out"
# shellcheck source=common.sh
. "$here/common.sh"
build_and_checkpoint
fp8="$here/ckpt-fp8"
if [ ! -f "$fp8/model.safetensors.index.json" ]; then
    rm -rf "$fp8"
    "$bin/model" random-checkpoint --config "$here/v2_lite_4l.json" --out "$fp8" --dtype fp8 --seed 0
fi
print_machine
: > "$out/formats.jsonl"
run_ours() { # label, checkpoint, extra args
    echo "== ours, $1"
    "$bin/model_decode" --model "$2" "${@:3}" --prompt-len 512 --new-tokens 128 \
        | tee "$out/formats_$1.log"
    tail -n 1 "$out/formats_$1.log" >> "$out/formats.jsonl"
}
run_ours bf16 "$ckpt"
run_ours fp8 "$fp8"
run_ours q8 "$ckpt" --matrices q8
run_ours q4 "$ckpt" --matrices q4
if [ -n "${LLAMA_BIN:-}" ] && [ -n "${GGUF_DIR:-}" ]; then
    for q in bf16 Q8_0 Q4_K_M; do
        echo "== llama.cpp $q"
        repack=""
        [ "$q" = bf16 ] || repack="--repack 0"
        # shellcheck disable=SC2086
        "$LLAMA_BIN/llama-bench" -m "$GGUF_DIR/ckpt-$q.gguf" -t 2 -p 512 -n 128 -d 512 -r 2 \
            $repack -o jsonl 2>/dev/null | tee "$out/formats_llama_$q.jsonl"
    done
fi
echo "== load after measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "${QUALITY:-1}" = 1 ]; then
    echo "== quality: next-token KL against f32 over 512 positions"
    "$bin/quant_quality" --model "$ckpt" --formats bf16,q8,q4 --positions 512 | tee "$out/quality.jsonl"
    "$bin/quant_quality" --model "$fp8" --formats fp8 --positions 512 | tee -a "$out/quality.jsonl"
    if [ -n "${GGUF_DIR:-}" ]; then
        for q in Q8_0 Q4_K_M; do
            echo "== weight error against llama.cpp $q"
            "$bin/quant_error" --model "$ckpt" --gguf "$GGUF_DIR/ckpt-$q.gguf" 2>/dev/null \
                | tee "$out/error_$q.jsonl"
        done
    fi
fi
