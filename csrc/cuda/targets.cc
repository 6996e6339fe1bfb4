// The CUDA backend's FFI table: every handler of runtime/targets.def instantiated for Cuda, in one
// explicit list; handlers that only launch kernels are marked command-buffer compatible.
#include "cuda/targets.h"

#include <cstring>

#include "cuda/backend.h"

namespace jax_mps {

bool Cuda::KernelsOnly(const char* target) {
  for (const char* t : {"activation_fwd", "activation_bwd", "prelu_fwd", "softmax_fwd", "softmax_bwd", "dropout_fwd",
                        "dropout_bwd", "loss_fwd", "loss_bwd", "max_pool_fwd", "max_pool_bwd", "avg_pool_fwd",
                        "avg_pool_bwd", "global_avg_pool2d_fwd", "global_avg_pool2d_bwd", "upsample2d_fwd",
                        "upsample2d_bwd", "local_response_norm_fwd", "local_response_norm_bwd"})
    if (std::strcmp(t, target) == 0) return true;
  return false;
}

ffi::Error Cuda::RnnFwd(Ctx, const RnnDesc&, Buf, Buf, Buf, Buf, const Buffers&, Buf, Buf, Buf, Buf) {
  return Unimplemented("CUDA", "rnn_fwd");
}
ffi::Error Cuda::RnnBwd(Ctx, const RnnDesc&, Buf, Buf, Buf, Buf, Buf, Buf, Buf, Buf, const Buffers&, Buf, Buf, Buf,
                        const Buffers&) {
  return Unimplemented("CUDA", "rnn_bwd");
}

#define JAX_MPS_TARGET(name, H)                                                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_##name, H<Cuda>, H##Binding<Cuda>(),                             \
                                {static_cast<ffi::Traits>(Cuda::KernelsOnly(#name)                    \
                                                              ? XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE \
                                                              : 0)});
#include "runtime/targets.def"
#undef JAX_MPS_TARGET

const std::vector<Target>& CudaTargets() {
  static const std::vector<Target> table = {
#define JAX_MPS_TARGET(name, H) {"jax_mps_" #name, reinterpret_cast<void*>(kCuda_##name)},
#include "runtime/targets.def"
#undef JAX_MPS_TARGET
  };
  return table;
}

}  // namespace jax_mps
