// Targets the CUDA backend does not implement yet: registered anyway, so a call on a GPU fails
// with a clear error naming the target instead of XLA's "no handler" (never wrong numbers).
#include "cuda/common.cuh"

namespace jax_mps::cuda {
namespace {
ffi::Error NotOnCuda(const char* target) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    std::string(target) + ": not implemented by the CUDA backend of jax_mps yet");
}
}  // namespace

#define I(name)
#define U(name)                                                                                \
  static ffi::Error Unimplemented_##name(ffi::RemainingArgs, ffi::RemainingRets, ffi::Dictionary) { \
    return NotOnCuda("jax_mps_" #name);                                                        \
  }                                                                                            \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(kCudaUnimplemented_##name, Unimplemented_##name,              \
                                ffi::Ffi::Bind().RemainingArgs().RemainingRets().Attrs());
#include "cuda/targets.inc"
#undef I
#undef U

}  // namespace jax_mps::cuda
