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

  // activations.cc
  static ffi::Error ActivationFwd(Ctx, Buf x, Buf y, Act act, float alpha);
  static ffi::Error ActivationBwd(Ctx, Buf x, Buf dy, Buf dx, Act act, float alpha);
  static ffi::Error PreluFwd(Ctx, const PreluDesc&, Buf x, Buf alpha, Buf y);
  static ffi::Error PreluBwd(Ctx, const PreluDesc&, Buf x, Buf alpha, Buf dy, Buf dx, Buf dalpha);
  static ffi::Error SoftmaxFwd(Ctx, const SoftmaxDesc&, Buf x, Buf y);
  static ffi::Error SoftmaxBwd(Ctx, const SoftmaxDesc&, Buf y, Buf dy, Buf dx);
  // conv.cc (s: the saved y or z; ignored when act is none)
  static ffi::Error ConvFwd(Ctx, const ConvDesc&, Buf x, Buf w, Buf b, Buf y);
  static ffi::Error ConvBwdData(Ctx, const ConvDesc&, Buf s, Buf dy, Buf w, Buf dx);
  static ffi::Error ConvBwdWeights(Ctx, const ConvDesc&, Buf x, Buf s, Buf dy, Buf dw, Buf db);
  static ffi::Error DenseFwd(Ctx, const DenseDesc&, Buf x, Buf w, Buf b, Buf y);
  static ffi::Error DenseBwdData(Ctx, const DenseDesc&, Buf s, Buf dy, Buf w, Buf dx);
  static ffi::Error DenseBwdWeights(Ctx, const DenseDesc&, Buf x, Buf s, Buf dy, Buf dw, Buf db);
  // pooling.cc
  static ffi::Error MaxPoolFwd(Ctx, const Pool2DDesc&, Buf x, Buf y, Buf idx);
  static ffi::Error MaxPoolBwd(Ctx, const Pool2DDesc&, Buf idx, Buf dy, Buf dx);
  static ffi::Error AvgPoolFwd(Ctx, const Pool2DDesc&, Buf x, Buf y);
  static ffi::Error AvgPoolBwd(Ctx, const Pool2DDesc&, Buf dy, Buf dx);
  static ffi::Error GlobalAvgPoolFwd(Ctx, const GlobalPoolDesc&, Buf x, Buf y);
  static ffi::Error GlobalAvgPoolBwd(Ctx, const GlobalPoolDesc&, Buf dy, Buf dx);
  // resample.cc
  static ffi::Error UpsampleFwd(Ctx, const Upsample2DDesc&, Buf x, Buf y);
  static ffi::Error UpsampleBwd(Ctx, const Upsample2DDesc&, Buf dy, Buf dx);
  // normalization.cc
  static ffi::Error BatchNormFwd(Ctx, const NormView&, Buf x, Buf scale, Buf bias, Buf y, Buf mean, Buf var,
                                 Buf rstd);
  static ffi::Error BatchNormBwd(Ctx, const NormView&, Buf x, Buf scale, Buf bias, Buf mean, Buf rstd, Buf s, Buf dy,
                                 Buf dmean, Buf dvar, Buf dx, Buf dscale, Buf dbias);
  static ffi::Error BatchNormInferenceFwd(Ctx, const NormView&, Buf x, Buf scale, Buf bias, Buf mean, Buf var, Buf y);
  static ffi::Error BatchNormInferenceBwd(Ctx, const NormView&, Buf x, Buf scale, Buf bias, Buf mean, Buf var, Buf s,
                                          Buf dy, Buf dx, Buf dscale, Buf dbias, Buf dmean, Buf dvar);
  static ffi::Error InstanceNormFwd(Ctx, const NormView&, Buf x, Buf scale, Buf bias, Buf y, Buf mean, Buf rstd);
  static ffi::Error InstanceNormBwd(Ctx, const NormView&, Buf x, Buf scale, Buf mean, Buf rstd, Buf dy, Buf dx,
                                    Buf dscale, Buf dbias);
  static ffi::Error LrnFwd(Ctx, const LrnDesc&, Buf x, Buf y);
  static ffi::Error LrnBwd(Ctx, const LrnDesc&, Buf x, Buf dy, Buf dx);
  // losses.cc
  static ffi::Error LossFwd(Ctx, const LossDesc&, Buf pred, Buf target, Buf weights, Buf out, Buf lse);
  static ffi::Error LossBwd(Ctx, const LossDesc&, Buf pred, Buf target, Buf weights, Buf lse, Buf g, Buf dpred,
                            Buf dtarget, Buf dweights);
  // dropout.cc
  static ffi::Error DropoutFwd(Ctx, const DropoutDesc&, Buf key, Buf x, Buf y, Buf mask);
  static ffi::Error DropoutBwd(Ctx, const DropoutDesc&, Buf mask, Buf g, Buf dx);
  // rnn.cc
  static ffi::Error RnnFwd(Ctx, const RnnDesc&, Buf x, Buf h0, Buf c0, Buf lens, const Buffers& w, Buf y, Buf hn,
                           Buf cn, Buf ws);
  static ffi::Error RnnBwd(Ctx, const RnnDesc&, Buf x, Buf h0, Buf c0, Buf lens, Buf ws, Buf dy, Buf dhn, Buf dcn,
                           const Buffers& w, Buf dx, Buf dh0, Buf dc0, const Buffers& dw);
  // optim.cc
  static ffi::Error OptimStep(Ctx, const OptimDesc&, Buf lr, Buf count, Buf sqnorm, const Buffers& args,
                              const Buffers& rets);
  static ffi::Error OptimSqNorm(Ctx, const SqNormDesc&, const Buffers& grads, Buf out);
};

}  // namespace jax_mps
