// The CUDA backend: one static function per target of runtime/targets.def, with the signatures of
// csrc/cpu/backend.h and Ctx = XLA's cudaStream_t. The handler templates of runtime/<family>.h
// check every shape and attribute first; these functions check only what the CUDA kernels add
// (one float dtype per call) and launch on the stream without synchronising.
#pragma once
#include <cuda_runtime_api.h>

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

struct Cuda {
  using CtxTag = ffi::PlatformStream<cudaStream_t>;
  using Ctx = cudaStream_t;
  using Buf = ffi::AnyBuffer;

  // Targets whose handler only launches our kernels (no workspace, no library call): XLA may
  // capture them in command buffers (CUDA graphs).
  static bool KernelsOnly(const char* target);

  #include "runtime/backend_api.inc"
};

}  // namespace jax_mps
