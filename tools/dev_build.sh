#!/usr/bin/env bash
# In-tree development build: compiles the extension into build/dev, so
# `PYTHONPATH=build/dev python -m pytest tests` runs against it without a pip install.
# Usage: tools/dev_build.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python3}}
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build build/dev
