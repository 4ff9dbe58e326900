# Set-up shared by the model_cpu benchmark scripts (sourced by run.sh and long_context.sh;
# they set $here, this directory, and $root, the repository root, before sourcing).

ckpt="$here/ckpt"

# The Python side: model_cpu/.venv with requirements.txt (torch, transformers 5.23), made once
# (pip reuses its cache).
ensure_hf_venv() {
    if [ ! -x "$here/.venv/bin/python" ] || ! "$here/.venv/bin/python" -c 'import torch, transformers' 2>/dev/null; then
        python3 -m venv "$here/.venv"
        "$here/.venv/bin/pip" install -q -r "$here/requirements.txt"
    fi
}

# The Rust side: a release build of `model` and the benchmarks (sets $bin, moves to $root),
# then the random V2-Lite-shaped 4-layer checkpoint, made once (4.4 GB of bf16).
build_and_checkpoint() {
    cd "$root"
    cargo build --release -q -p model -p benchmarks
    bin="${CARGO_TARGET_DIR:-$root/target}/release"
    if [ ! -f "$ckpt/model.safetensors.index.json" ]; then
        rm -rf "$ckpt"
        "$bin/model" random-checkpoint --config "$here/v2_lite_4l.json" --out "$ckpt" --dtype bf16 --seed 0
    fi
}

# The same checkpoint's FP8 twin (DeepSeek's e4m3 with 128 x 128 block scales, as V3/R1 ship),
# made once; sets $fp8. After build_and_checkpoint.
fp8_checkpoint() {
    fp8="$here/ckpt-fp8"
    if [ ! -f "$fp8/model.safetensors.index.json" ]; then
        rm -rf "$fp8"
        "$bin/model" random-checkpoint --config "$here/v2_lite_4l.json" --out "$fp8" --dtype fp8 --seed 0
    fi
}

# The machine and its load, printed before measuring.
print_machine() {
    echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), \
SIMD: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|avx512fp16|amx_bf16)$' | xargs)"
    echo "== load before measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
}
