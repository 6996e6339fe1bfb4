"""Print the include and library folders of the NVIDIA PyPI wheels the CUDA half links, as CMake
list entries: `<cudnn include>;<cudnn lib>;<cu13 include>;<cu13 lib>`.

Looks in JAX_MPS_NVIDIA_ROOT (a folder holding `nvidia/`, e.g. unpacked wheels, see
tools/build_cuda.sh) first, then in the importable `nvidia` namespace package (the wheels jax's
CUDA plugin installs), so the module links the cuDNN that jax loads. Prints nothing if not found.
"""
import os
import pathlib
import sys

roots = []
if os.environ.get("JAX_MPS_NVIDIA_ROOT"):
    roots.append(pathlib.Path(os.environ["JAX_MPS_NVIDIA_ROOT"]) / "nvidia")
try:
    import nvidia  # namespace package of nvidia-cudnn-cu13, nvidia-cublas, ...

    roots += [pathlib.Path(p) for p in nvidia.__path__]
except ImportError:
    pass

for root in roots:
    cudnn, cu13 = root / "cudnn", root / "cu13"
    if (cudnn / "include" / "cudnn.h").exists() and (cu13 / "include" / "cublasLt.h").exists():
        print(";".join(str(p) for p in (cudnn / "include", cudnn / "lib", cu13 / "include", cu13 / "lib")))
        sys.exit(0)
