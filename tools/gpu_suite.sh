#!/usr/bin/env bash
# The GPU suite in one command, on a machine with an NVIDIA GPU, nvcc (CUDA 13) and a python3 that
# has jax[cuda13] (whose nvidia-cudnn-cu13 / nvidia-cublas wheels the CUDA half links): builds both
# halves of the runtime into build/gpu with all cores and runs the test suite on the CUDA backend.
# Usage: tools/gpu_suite.sh [pytest args...]
#   PYTHON=python3                 the interpreter to build for and test with
#   WHEELS=dir                     wheels to put on the path first (e.g. the oneDNN ones, offline)
#   JAX_MPS_TEST_BACKENDS=cuda     backends to test (cpu,cuda for both)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
  # --prefix, not --target: --target drops the wheels' data files (oneDNN's library and CMake files).
  "$PY" -m pip install -q --no-index --no-deps --no-compile --ignore-installed --prefix /tmp/jax_mps_prefix \
    "$WHEELS"/*.whl
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_path('purelib', vars={'base': '/tmp/jax_mps_prefix'}))")
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DJAX_MPS_CUDA=ON \
  -DPython_EXECUTABLE="$(command -v "$PY")"
cmake --build build/gpu -j"$(nproc)"
# Each pytest-xdist worker would otherwise take 75% of the GPU up front (-n 8 on an 80 GB card: OOM).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
# The source tree too: the example tests run examples/*.py in a subprocess.
export PYTHONPATH=$PWD:$PWD/build/gpu${PYTHONPATH:+:$PYTHONPATH}
JAX_MPS_TEST_BACKENDS=${JAX_MPS_TEST_BACKENDS:-cuda} "$PY" -m pytest tests -q -rfE "$@"
