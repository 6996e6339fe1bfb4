// The CPU backend: one static function per target of runtime/targets.def, called by the handler
// templates of runtime/<family>.h after every shape/attribute check (so kernels trust dims).
// Signature rule (the CUDA backend mirrors it with Ctx = cudaStream_t):
//   static ffi::Error <Target>(Ctx, [const Desc&,] operands in binding order as ffi::AnyBuffer
//                              (variadic lists as const Buffers&), results as ffi::AnyBuffer, ...)
// float16 / bfloat16 buffers are computed in float32 here (cpu/f32.h converts in and out);
// accumulation is always float32 (FusedDesc::f16_accumulate is ignored).
#pragma once
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

struct Cpu {
  using CtxTag = CpuCtx;
  using Ctx = CpuCtx;
  using Buf = ffi::AnyBuffer;

  #include "runtime/backend_api.inc"
};

}  // namespace jax_mps
