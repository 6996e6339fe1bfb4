// The CUDA extension module _jax_mps_cuda: hands its FFI target table (platform "CUDA") and the
// library versions to jax_mps/_runtime.py, which imports it only where a CUDA device is visible.
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

#include "xla/ffi/api/c_api.h"

namespace nb = nanobind;

// The handlers (csrc/cuda/*.cu; XLA_FFI_DEFINE_HANDLER_SYMBOL gives them C linkage).
#define I(name) extern "C" XLA_FFI_Error* kCuda_##name(XLA_FFI_CallFrame*);
#define U(name) extern "C" XLA_FFI_Error* kCudaUnimplemented_##name(XLA_FFI_CallFrame*);
#include "cuda/targets.inc"
#undef I
#undef U

namespace {
std::string Version3(int v, int major_div, int minor_div) {
  return std::to_string(v / major_div) + "." + std::to_string((v % major_div) / minor_div) + "." +
         std::to_string(v % minor_div);
}
}  // namespace

NB_MODULE(_jax_mps_cuda, m) {
  m.def("registrations", [] {
    nb::list out;
#define I(name) \
  out.append(nb::make_tuple("jax_mps_" #name, "CUDA", nb::capsule(reinterpret_cast<void*>(kCuda_##name))));
#define U(name)                                        \
  out.append(nb::make_tuple("jax_mps_" #name, "CUDA", \
                            nb::capsule(reinterpret_cast<void*>(kCudaUnimplemented_##name))));
#include "cuda/targets.inc"
#undef I
#undef U
    return out;
  }, "List of (target name, platform, handler capsule) for every FFI target of the CUDA backend.");
  m.def("backends", [] {
    nb::dict d;
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    d["cuda"] = "cuDNN " + Version3(int(cudnnGetVersion()), 10000, 100) + ", cuBLASLt " +
                Version3(int(cublasLtGetVersion()), 10000, 100) + ", CUDA runtime " + std::to_string(rt / 1000) +
                "." + std::to_string((rt % 1000) / 10);
    return d;
  }, "The CUDA backend and its libraries (versions loaded at run time).");
}
