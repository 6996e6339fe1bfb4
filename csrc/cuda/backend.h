// The CUDA backend: one static function per target of runtime/targets.def, with the signatures of
// csrc/cpu/backend.h and Ctx = XLA's cudaStream_t. The handler templates of runtime/<family>.h
// check every shape and attribute first; these functions check only what the CUDA kernels add
// (one float dtype per call) and launch on the stream without synchronising.
#pragma once
#include <cuda_runtime_api.h>

#include <memory>

#include "runtime/activation.h"
#include "runtime/conv.h"
#include "runtime/dropout.h"
#include "runtime/losses.h"
#include "runtime/normalization.h"
#include "runtime/optim.h"
#include "runtime/pooling.h"
#include "runtime/resample.h"
#include "runtime/rnn.h"

namespace jax_mps {
namespace cuda {

// What every CUDA handler gets: XLA's compute stream (kernels launch on it, no synchronisation;
// converts to cudaStream_t) and XLA's device scratch allocator, whose blocks are freed when the
// handler returns -- the last copy of the Ctx -- and stay private to it by stream order.
struct Ctx {
  cudaStream_t stream;
  std::shared_ptr<ffi::ScratchAllocator> scratch;
  operator cudaStream_t() const { return stream; }
};
struct CtxTag {};  // the binding's .Ctx<CtxTag>() decodes a Ctx

}  // namespace cuda

struct Cuda {
  using CtxTag = cuda::CtxTag;
  using Ctx = cuda::Ctx;
  using Buf = ffi::AnyBuffer;

  // Targets whose handler only launches our kernels (no scratch, no library call): XLA may
  // capture them in command buffers (CUDA graphs).
  static bool KernelsOnly(const char* target);

  #include "runtime/backend_api.inc"
};

}  // namespace jax_mps

namespace xla::ffi {
template <>
struct CtxDecoding<::jax_mps::cuda::CtxTag> {
  using Type = ::jax_mps::cuda::Ctx;
  static std::optional<Type> Decode(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx,
                                    DiagnosticEngine& diagnostic) {
    auto stream = CtxDecoding<PlatformStream<cudaStream_t>>::Decode(api, ctx, diagnostic);
    if (!stream.has_value()) return std::nullopt;
    auto scratch = CtxDecoding<ScratchAllocator>::Decode(api, ctx, diagnostic);
    if (!scratch.has_value()) return std::nullopt;
    return Type{*stream, std::make_shared<ScratchAllocator>(std::move(*scratch))};
  }
};
}  // namespace xla::ffi
