// The CUDA extension module _jax_mps_cuda: its FFI table (platform "CUDA"), the library versions
// loaded at run time and the contract's constants; jax_mps/_runtime.py imports it only where a
// CUDA device is visible.
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "cuda/targets.h"
#include "runtime/export.h"

namespace {
std::string Version3(int v, int major_div, int minor_div) {
  return std::to_string(v / major_div) + "." + std::to_string((v % major_div) / minor_div) + "." +
         std::to_string(v % minor_div);
}
}  // namespace

NB_MODULE(_jax_mps_cuda, m) {
  int rt = 0;
  cudaRuntimeGetVersion(&rt);
  jax_mps::ExportContract(m, jax_mps::CudaTargets(), "CUDA", "cuda",
                          "cuDNN " + Version3(int(cudnnGetVersion()), 10000, 100) + ", cuBLASLt " +
                              Version3(int(cublasLtGetVersion()), 10000, 100) + ", CUDA runtime " +
                              std::to_string(rt / 1000) + "." + std::to_string((rt % 1000) / 10));
}
