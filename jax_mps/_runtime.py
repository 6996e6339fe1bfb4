"""Loads the C++ extension and registers every FFI target it holds with XLA (one table)."""
from __future__ import annotations

import ctypes
import importlib.util
import importlib.metadata as _md
import os
import warnings

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

# Keep freed memory mapped so that XLA's per-step buffers reuse their pages (csrc/cpu/module.cc);
# JAX_MPS_RETAIN_MEMORY=0 leaves glibc's malloc as it is.
if os.environ.get("JAX_MPS_RETAIN_MEMORY", "1") != "0":
    _core.retain_freed_memory()

# The contract's constants (activation / loss / reduction / optimizer / RNN codes, the
# gradient-from-output rule, workspace sizes), defined once in csrc/runtime/ and exported by every
# backend module alike: read them from here, never as literals.
contract = _core


def _cuda_visible() -> bool:
    try:
        return bool(jax.devices("cuda"))
    except RuntimeError:  # no CUDA plugin, or no GPU
        return False


def _load_cuda():
    """The CUDA backend: its own module, loaded only where a CUDA device is visible (a CPU-only
    machine never loads, or needs, a CUDA library)."""
    if not _cuda_visible() or importlib.util.find_spec("_jax_mps_cuda") is None:
        return None
    # jax's CUDA plugin has loaded cuDNN/cuBLAS from the nvidia-* wheels by now; the module's
    # RPATH finds the same files for regular installs, and the soname match covers in-tree builds.
    try:
        import _jax_mps_cuda
    except ImportError as e:  # built, but its libraries do not load here: say so, run on the CPU only
        warnings.warn(f"jax_mps: the CUDA backend (_jax_mps_cuda) failed to load, GPU calls will fail: {e}")
        return None
    return _jax_mps_cuda


_cuda = _load_cuda()

for _module in (_core, _cuda):
    if _module is not None:
        for _name, _platform, _capsule in _module.registrations():
            jax.ffi.register_ffi_target(_name, _capsule, platform=_platform, api_version=1)


def _platforms() -> set[str]:
    return {d.platform for d in jax.devices()}


def backends() -> dict[str, str]:
    """Backends compiled into this build and able to run here, with their library versions."""
    key, versions = _core.backend()
    out = {key: versions}  # the CPU backend always runs
    if _cuda is not None and _platforms() & {"gpu", "cuda"}:
        key, versions = _cuda.backend()
        out[key] = versions
    return out


def set_plan_cache_size(n: int) -> None:
    """Keep at most `n` plans (oneDNN primitives; cuDNN / cuBLASLt descriptors) per op family and pass, least recently used
    dropped first; 0 disables caching. Default 256, or the environment variable
    JAX_MPS_PLAN_CACHE_SIZE read at import. Caches over a lowered limit shrink on their next miss."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"set_plan_cache_size: `n` must be an int >= 0, got {n!r}")
    for module in (_core, _cuda):  # each backend module keeps its own caches
        if module is not None:
            module.set_plan_cache_size(n)


def plan_cache_size() -> int:
    """The current per-cache plan limit (see set_plan_cache_size)."""
    return int(_core.plan_cache_size())
