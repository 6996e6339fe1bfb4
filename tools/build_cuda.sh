#!/usr/bin/env bash
# Builds and links the CUDA half (_jax_mps_cuda) with the CPU half into build/cuda, on any machine
# with nvcc (CUDA 13) -- no GPU needed. cuDNN and cuBLAS come from the PyPI wheels jax's CUDA plugin
# uses (nvidia-cudnn-cu13, nvidia-cublas): taken from the Python environment if installed there,
# else downloaded once (pip download, not installed) and unpacked into $JAX_MPS_NVIDIA_ROOT
# (default ~/.cache/jax_mps/nvidia). nvcc: $CUDACXX, else PATH, else /usr/local/cuda/bin/nvcc; the
# nvidia-cuda-nvcc wheel's nvidia/cu13/bin/nvcc works too.
# Usage: tools/build_cuda.sh [python]      then: PYTHONPATH=build/cuda python -c "import _jax_mps_cuda"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python3}}
if [ -z "$("$PY" tools/find_nvidia.py)" ]; then
  export JAX_MPS_NVIDIA_ROOT=${JAX_MPS_NVIDIA_ROOT:-$HOME/.cache/jax_mps/nvidia}
  if [ -z "$("$PY" tools/find_nvidia.py)" ]; then
    mkdir -p "$JAX_MPS_NVIDIA_ROOT/.wheels"
    "$PY" -m pip download -q --no-deps -d "$JAX_MPS_NVIDIA_ROOT/.wheels" nvidia-cudnn-cu13 nvidia-cublas
    for w in "$JAX_MPS_NVIDIA_ROOT"/.wheels/*.whl; do
      "$PY" -m zipfile -e "$w" "$JAX_MPS_NVIDIA_ROOT"
    done
  fi
fi
NVCC=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DJAX_MPS_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build build/cuda "${@:2}"
