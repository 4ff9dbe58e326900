# Source this file (bash): installs NVIDIA's CUDA 13.0 compiler and headers from PyPI into a
# local folder (once) and exports what candle's `cuda` feature needs to build, with no GPU and
# no system CUDA:
#
#   source scripts/cuda-env.sh && cargo build --release -p model --features cuda
#
# CUDA_LOCAL_DIR (default: .cuda in the repo) and CUDA_COMPUTE_CAP (default 90, Hopper) may be
# preset. Running the binary needs a GPU driver; the GPU machines ship the CUDA 13 libraries.
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_dir=${CUDA_LOCAL_DIR:-$_repo/.cuda}
if [ ! -x "$_dir/nvidia/cu13/bin/nvcc" ]; then
    python3 -m pip install --quiet --target "$_dir" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-nvvm==13.0.*" \
        "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" || return 1
fi
export CUDA_HOME="$_dir/nvidia/cu13"
export CUDA_PATH="$CUDA_HOME"
export NVCC="$CUDA_HOME/bin/nvcc"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export PATH="$CUDA_HOME/bin:$PATH"
export LIBRARY_PATH="$CUDA_HOME/lib:$CUDA_HOME/lib64:$CUDA_HOME/lib/stubs:${LIBRARY_PATH:-}"
echo "CUDA_HOME=$CUDA_HOME (compute cap $CUDA_COMPUTE_CAP)"
unset _repo _dir
