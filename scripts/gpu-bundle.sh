#!/usr/bin/env bash
# Packs a directory to check the CUDA build on a GPU machine with no Rust and no network:
#
#   scripts/gpu-bundle.sh OUT [--binary PATH] [--xz]
#
# OUT gets: `model` (stripped; built here with `--features cuda` for compute capability 9.0
# unless --binary names a prebuilt one), host/ (`linear`'s test binaries, a CPU build, for the
# GPU machine's own CPU: AMX tiles where it has them), `check` + `check.py` (the check script, run as
# `OUT/check`), fixtures/ (the model fixtures and the tiny tokenizer), bench/v2_lite_4l.json
# (the config of the random V2-Lite-shaped 4-layer benchmark checkpoint, which the binary
# writes on the GPU machine) and README.txt. Fails if OUT exceeds 60 MiB; prints the size and
# the contents at the end. A binary that would not fit (the CUDA build, stripped, is ~60 MiB,
# mostly candle's PTX kernels, which are text) is shipped as model.xz (~8 MB) instead, which
# `check` unpacks into its scratch directory with Python's lzma; --xz does so always.
#
# Without --binary: `source scripts/cuda-env.sh` (CUDA 13 from PyPI into .cuda) and
# `cargo build --release -p model --features cuda` with CARGO_TARGET_DIR defaulting to
# target-cuda in the repository. --binary packs any build (a CPU one tests the bundle with
# GPU_CHECK_CPU_MODE=1).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { echo "usage: $0 OUT [--binary PATH] [--xz]" >&2; exit 2; }

out="" binary="" xz=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || usage; binary=$2; shift 2 ;;
        --binary=*) binary=${1#--binary=}; shift ;;
        --xz) xz=1; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [ -z "$out" ] || usage; out=$1; shift ;;
    esac
done
[ -n "$out" ] || usage
limit_mib=60

# The CPU builds (host/ below) use the caller's target directory, not the CUDA build's.
host_target=${CARGO_TARGET_DIR:-$repo/target}
if [ -z "$binary" ]; then
    # shellcheck source=cuda-env.sh
    source "$repo/scripts/cuda-env.sh"
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target-cuda}
    (cd "$repo" && cargo build --release -p model --features cuda)
    binary=$CARGO_TARGET_DIR/release/model
fi
[ -x "$binary" ] || { echo "error: $binary is not an executable file" >&2; exit 1; }

if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    # Only replace what this script made (it always writes check.py and README.txt).
    if [ -f "$out/check.py" ] && [ -f "$out/README.txt" ]; then
        rm -rf "$out"
    else
        echo "error: $out exists, is not empty and is not a bundle; choose another OUT" >&2
        exit 1
    fi
fi
mkdir -p "$out/fixtures" "$out/bench"

# The binary, stripped (debug info is most of a release build here).
if command -v strip >/dev/null 2>&1; then
    strip --strip-all -o "$out/model" "$binary"
else
    objcopy --strip-all "$binary" "$out/model"
fi
chmod +x "$out/model"

# Model fixtures with a reference and prompt ids (dsa/ is an attention-only fixture, grpo/ a
# trainer one: neither runs through `model logits`), and the tokenizer `generate` needs.
for f in v2_greedy v2_group_limited v3_noaux v3_fp8 v3_mtp v32_dsa; do
    src=$repo/tests/fixtures/$f
    [ -f "$src/reference.safetensors" ] || { echo "error: $src has no reference" >&2; exit 1; }
    mkdir -p "$out/fixtures/$f"
    cp "$src"/config.json "$src"/meta.json "$src"/*.safetensors "$out/fixtures/$f/"
    [ ! -f "$src/model.safetensors.index.json" ] || cp "$src/model.safetensors.index.json" "$out/fixtures/$f/"
done
cp -r "$repo/tests/fixtures/tiny_tokenizer" "$out/fixtures/"
chmod -R a+r "$out/fixtures"

# `linear`'s test binaries, run on the GPU machine's host CPU (a CPU-only build: each kernel
# path is picked at run time, so the host's AMX / AVX-512 paths run there if it has them).
mkdir -p "$out/host"
(cd "$repo" && CARGO_TARGET_DIR=$host_target cargo test --release -p linear --no-run \
    --message-format=json 2>/dev/null) |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | while read -r exe; do
        strip --strip-all -o "$out/host/$(basename "$exe")" "$exe"
    done
[ -n "$(ls -A "$out/host")" ] || { echo "error: no linear test binaries were built" >&2; exit 1; }
cp "$repo/benchmarks/model_cpu/v2_lite_4l.json" "$out/bench/"
cp "$repo/scripts/gpu-check/check" "$repo/scripts/gpu-check/check.py" "$out/"
cp "$repo/scripts/gpu-check/README.txt" "$out/README.txt"
chmod +x "$out/check" "$out/check.py"
{
    echo
    echo "Bundle made $(date -u +%Y-%m-%dT%H:%MZ) from commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "binary: $binary"
    echo "  $(file -b "$out/model" 2>/dev/null | cut -c1-120)"
    if ldd "$out/model" >/dev/null 2>&1; then
        echo "  links: $(ldd "$out/model" | awk '{print $1}' | grep -E 'cu|nvrtc' | tr '\n' ' ')"
    fi
} >> "$out/README.txt"

bytes=$(du -sb "$out" | cut -f1)
if [ "$xz" = 1 ] || [ "$bytes" -gt $((limit_mib * 1024 * 1024)) ]; then
    echo "== $(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }') with the plain binary: shipping model.xz"
    if command -v xz >/dev/null 2>&1; then
        xz -6 -T0 -c "$out/model" > "$out/model.xz"
    else
        python3 -c 'import lzma, shutil, sys
with open(sys.argv[1], "rb") as i, lzma.open(sys.argv[2], "wb", preset=6) as o:
    shutil.copyfileobj(i, o)' "$out/model" "$out/model.xz"
    fi
    rm "$out/model"
    bytes=$(du -sb "$out" | cut -f1)
fi
echo "== $out: $(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB (%d bytes)", b / 1048576, b }'), limit $limit_mib MiB"
(cd "$out" && find . -type f -printf '%10s  %p\n' | sort -k2)
if [ "$bytes" -gt $((limit_mib * 1024 * 1024)) ]; then
    echo "error: the bundle is over $limit_mib MiB" >&2
    exit 1
fi
