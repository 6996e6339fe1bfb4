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

# The contract's constants (activation / loss / reduction / optimizer / RNN codes, the
# gradient-from-output rule, workspace sizes), defined once in csrc/runtime/ and exported by every
# backend module alike: read them from here, never as literals.
contract = _core


def _load_cuda():
    # The CUDA backend is its own module, present only in CUDA builds; a CPU-only machine never
    # loads (or needs) a CUDA library.
    try:
        import _jax_mps_cuda
    except (ImportError, OSError):
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
