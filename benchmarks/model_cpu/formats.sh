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
#               ckpt-Q4_0.gguf is run too when present.
#   LLAMA_SDIST the unpacked llama-cpp-python sdist whose vendor/llama.cpp/build holds that
#               build, and LLAMA_PY a python with numpy, diskcache, jinja2 and
#               typing_extensions: llama.cpp's own logits of each GGUF (`llama_logits.py`)
#               are then scored against the f32 model beside ours (`quant_quality --reference`).
#   QUALITY=0   skip the quality and weight-error measurements.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/results"
mkdir -p "$out"
# shellcheck source=common.sh
. "$here/common.sh"
build_and_checkpoint
fp8_checkpoint
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
    for q in bf16 Q8_0 Q4_K_M Q4_0; do
        [ -f "$GGUF_DIR/ckpt-$q.gguf" ] || continue
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
    refs=()
    if [ -n "${GGUF_DIR:-}" ] && [ -n "${LLAMA_SDIST:-}" ] && [ -n "${LLAMA_PY:-}" ]; then
        for q in bf16 Q8_0 Q4_K_M Q4_0; do
            [ -f "$GGUF_DIR/ckpt-$q.gguf" ] || continue
            echo "== llama.cpp's logits, $q"
            "$LLAMA_PY" "$here/llama_logits.py" --sdist "$LLAMA_SDIST" --gguf "$GGUF_DIR/ckpt-$q.gguf" \
                --positions 512 --out "$out/llama_logits_$q.npz"
            refs+=(--reference "llama.cpp-$q=$out/llama_logits_$q.npz")
        done
    fi
    "$bin/quant_quality" --model "$ckpt" --formats bf16,q8,q4 --positions 512 "${refs[@]}" \
        | tee "$out/quality.jsonl"
    "$bin/quant_quality" --model "$ckpt" --formats q8,q4 --positions 512 --decode \
        | tee -a "$out/quality.jsonl"
    "$bin/quant_quality" --model "$fp8" --formats fp8 --positions 512 | tee -a "$out/quality.jsonl"
    if [ -n "${GGUF_DIR:-}" ]; then
        for q in Q8_0 Q4_K_M; do
            echo "== weight error against llama.cpp $q"
            "$bin/quant_error" --model "$ckpt" --gguf "$GGUF_DIR/ckpt-$q.gguf" 2>/dev/null \
                | tee "$out/error_$q.jsonl"
        done
    fi
fi
