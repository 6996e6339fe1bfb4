"""Loads the C++ extension and registers every FFI target it holds with XLA (one table)."""
from __future__ import annotations

import ctypes
import importlib.metadata as _md
import os

# oneDNN's OpenMP threads spin while idle by default; XLA's own threads and input pipelines then
# starve (measured: LeNet training on 2 cores ran 2.5x slower). Must be set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402


def _preload_dnnl() -> None:
    # The extension's RPATH finds libdnnl.so.3 in <prefix>/lib for regular installs; editable and
    # in-tree builds land elsewhere, so load it from the onednn-cpu-gomp wheel's files first.
    try:
        files = _md.distribution("onednn-cpu-gomp").files or ()
    except _md.PackageNotFoundError:
        return
    for f in files:
        if f.name == "libdnnl.so.3":
            try:
                ctypes.CDLL(str(f.locate()), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass
            return


_preload_dnnl()
try:
    # A top-level module installed beside the package (not inside it), so that the source tree's
    # jax_mps/ -- first on sys.path when pytest runs from the repository root -- finds it too.
    import _jax_mps_cpu as _core  # noqa: E402
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "jax_mps: the compiled runtime (_jax_mps_cpu) is not installed; run "
        "`python -m pip install .` (or tools/dev_build.sh and PYTHONPATH=build/dev)") from e

TARGETS: dict[str, set[str]] = {}  # target name -> platforms it is registered for

for _name, _platform, _capsule in _core.registrations():
    jax.ffi.register_ffi_target(_name, _capsule, platform=_platform, api_version=1)
    TARGETS.setdefault(_name, set()).add(_platform)


def backends() -> dict[str, str]:
    """Backends compiled into this build and able to run here, with their library versions."""
    out = dict(_core.backends())
    platforms = {d.platform for d in jax.devices()} | {"cpu"}
    return {k: v for k, v in out.items() if k in platforms}


def set_plan_cache_size(n: int) -> None:
    """Keep at most `n` plans (oneDNN primitives) per op family and pass, least recently used
    dropped first; 0 disables caching. Default 256, or the environment variable
    JAX_MPS_PLAN_CACHE_SIZE read at import. Caches over a lowered limit shrink on their next miss."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"set_plan_cache_size: `n` must be an int >= 0, got {n!r}")
    _core.set_plan_cache_size(n)


def plan_cache_size() -> int:
    """The current per-cache plan limit (see set_plan_cache_size)."""
    return int(_core.plan_cache_size())
