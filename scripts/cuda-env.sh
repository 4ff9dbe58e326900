# Source this file (bash): installs NVIDIA's CUDA 13.0 compiler, headers and the libraries a
# `--features cuda` binary links against (cuBLAS, cuBLASLt, cuRAND, NVRTC, and the driver API
# through its link stub) from PyPI into a local folder (once), and exports what candle's `cuda`
# feature needs to build AND link, with no GPU and no system CUDA:
#
#   source scripts/cuda-env.sh && cargo build --release -p model --features cuda
#
# CUDA_LOCAL_DIR (default: .cuda in the repo) and CUDA_COMPUTE_CAP (default 90, Hopper) may be
# preset. Running the binary needs a GPU driver (libcuda.so.1) and the CUDA 13 libraries on the
# loader path; `scripts/gpu-bundle.sh` packs a binary with a check script for such a machine.
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_dir=${CUDA_LOCAL_DIR:-$_repo/.cuda}
if [ ! -e "$_dir/.complete-13.0" ]; then
    python3 -m pip install --quiet --target "$_dir" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-nvvm==13.0.*" \
        "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
        "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" || return 1
    touch "$_dir/.complete-13.0"
fi
export CUDA_HOME="$_dir/nvidia/cu13"
export CUDA_PATH="$CUDA_HOME"
export NVCC="$CUDA_HOME/bin/nvcc"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export PATH="$CUDA_HOME/bin:$PATH"
# The wheels ship versioned sonames only (libcublas.so.13); the linker wants libX.so, so a
# folder of unversioned links is made once. libcuda.so is the driver API's link stub.
_links="$_dir/link"
if [ ! -e "$_links/libcublas.so" ]; then
    mkdir -p "$_links"
    for lib in cublas cublasLt curand nvrtc cudart; do
        _so=$(find "$_dir" -name "lib$lib.so.*" -not -name "*alt*" | sort | head -n 1)
        [ -n "$_so" ] && ln -sf "$_so" "$_links/lib$lib.so"
    done
fi
# No wheel ships the driver API's link stub (libcuda.so comes with the GPU driver), so one is
# compiled from the names cudarc declares: every cu* function, each a dummy. It only satisfies
# the linker; the binary records libcuda.so.1, which the real driver provides at run time.
if [ ! -e "$_links/libcuda.so" ]; then
    (cd "$_repo" && cargo fetch --quiet) || return 1
    _sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs | tail -n 1)
    grep -oE "^ +fn cu[A-Za-z0-9_]+\(" "$_sys" | sed 's/ *fn //; s/(//' | sort -u |
        sed 's/.*/int &(void) { return 999; }/' > "$_links/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$_links/libcuda.so" "$_links/cuda_stub.c" || return 1
    # Under its run-time name too, so a CUDA build starts on this machine (without --cuda: the
    # CPU paths never call the driver), e.g. the GPU bundle's check in GPU_CHECK_CPU_MODE.
    ln -sf libcuda.so "$_links/libcuda.so.1"
fi
export LIBRARY_PATH="$_links:$CUDA_HOME/lib:$CUDA_HOME/lib64:$CUDA_HOME/lib/stubs:${LIBRARY_PATH:-}"
echo "CUDA_HOME=$CUDA_HOME (compute cap $CUDA_COMPUTE_CAP)"
unset _repo _dir _links _so _sys
