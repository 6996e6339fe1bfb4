#!/usr/bin/env bash
# Copies this worktree (no build/, no .git) to <checkout>/.gpu/src, where the device tool's `run`
# (which sends the session's checkout, not a helper's worktree) can carry it: carry [".gpu", ".whl"].
# Usage: tools/stage_gpu.sh /work/main
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
dst="$1/.gpu/src"
rm -rf "$dst"
mkdir -p "$dst"
(cd "$src" && git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents {} "$dst")
