// Element-wise activations on the device: the CPU kernels' formulas (csrc/cpu/activations.cc) with
// CUDA's float32 math library (expf, erfcf, log1pf, expm1f: within 2 ulp), so both backends follow
// the numerical rules of runtime/activation.h: jax.nn's values, NaN in -> NaN out, jax's one-sided
// derivatives at kinks and jax's values at +-inf, accurate over the whole float32 range. Used by
// the activation targets and every target with a fused activation (batch norm, conv, dense).
#pragma once
#include "runtime/activation.h"

namespace jax_mps::cuda {

// 1 / (1 + exp(-x)) from e = exp(-|x|): no cancellation and no overflow on either side.
__device__ __forceinline__ float SigmoidD(float x) {
  const float e = expf(-fabsf(x)), r = 1.f / (1.f + e);
  return x >= 0.f ? r : e * r;
}
// gelu_tanh's u = sqrt(2/pi) (x + 0.044715 x^3), x clamped where sigmoid(2u) is already 0 or 1
// (so x^3 never overflows).
__device__ __forceinline__ float GeluTanhArgD(float x) {
  const float xc = fminf(fmaxf(x, -1e4f), 1e4f);
  return 0.7978845608028654f * xc * (1.f + 0.044715f * xc * xc);
}

__device__ __forceinline__ float ActF(Act a, float alpha, float x) {
  switch (a) {
    case Act::kNone: return x;
    case Act::kRelu: return x < 0.f ? 0.f : x;  // NaN stays NaN (jnp.maximum)
    case Act::kRelu6: {
      const float v = x < 0.f ? 0.f : x;
      return v > 6.f ? 6.f : v;
    }
    case Act::kLeakyRelu: return x >= 0.f ? x : alpha * x;
    case Act::kElu: return x > 0.f ? x : alpha * expm1f(x);
    case Act::kSigmoid: return SigmoidD(x);
    case Act::kHardSigmoid: {
      const float v = x + 3.f, r = v < 0.f ? 0.f : v;
      return (r > 6.f ? 6.f : r) / 6.f;
    }
    case Act::kTanh: return tanhf(x);
    case Act::kSoftplus: return (x < 0.f ? 0.f : x) + log1pf(expf(-fabsf(x)));  // logaddexp(x, 0)
    case Act::kSoftsign: return x / (1.f + fabsf(x));                          // NaN at +-inf, as jax
    case Act::kGelu: return 0.5f * x * erfcf(-0.70710678118654752f * x);       // erfc: no 1 + erf cancellation
    case Act::kGeluTanh: return x * SigmoidD(2.f * GeluTanhArgD(x));           // 0.5 (1 + tanh u) = sigmoid(2u)
    default: return x;
  }
}

// dy * act'(x) from the pre-activation x. Where jax's derivative is a select (relu, relu6,
// hard_sigmoid, leaky_relu), so is ours: a NaN or inf dy where the select picks 0 gives 0.
__device__ __forceinline__ float ActG(Act a, float alpha, float x, float g) {
  switch (a) {
    case Act::kNone: return g;
    case Act::kRelu: return x > 0.f ? g : 0.f;
    case Act::kRelu6: return (x > 0.f && x < 6.f) ? g : 0.f;
    case Act::kLeakyRelu: return x >= 0.f ? g : alpha * g;  // 1 at 0 and alpha at NaN, as jnp.where
    case Act::kElu: return x > 0.f ? g : alpha * g * expf(x);
    case Act::kSigmoid: {  // e / (1 + e)^2 with e = exp(-|x|)
      const float e = expf(-fabsf(x)), d = 1.f + e;
      return g * (e / (d * d));
    }
    case Act::kHardSigmoid: {
      const float v = x + 3.f;
      return (v > 0.f && v < 6.f) ? g / 6.f : 0.f;
    }
    case Act::kTanh: {  // 1 - tanh^2 = 4e / (1 + e)^2 with e = exp(-2|x|): accurate where tanh is near +-1
      const float e = expf(-2.f * fabsf(x)), d = 1.f + e;
      return g * (4.f * e / (d * d));
    }
    case Act::kSoftplus: return g * SigmoidD(x);
    case Act::kSoftsign: {
      const float d = 1.f + fabsf(x);
      return isinf(x) ? NAN : g / (d * d);  // jax's quotient rule gives inf * 0 at +-inf
    }
    case Act::kGelu:  // Phi(x) + x phi(x); NaN at +-inf (inf * 0), as jax
      return g * (0.5f * erfcf(-0.70710678118654752f * x) + x * (0.3989422804014327f * expf(-0.5f * x * x)));
    case Act::kGeluTanh: {
      const float u = GeluTanhArgD(x), du = 0.7978845608028654f * (1.f + 0.134145f * x * x);
      const float e = expf(-2.f * fabsf(u)), d = 1.f + e, sech2 = 4.f * e / (d * d);
      // sech2 is exactly 0 wherever x^2 could overflow du, so only x = +-inf gives inf * 0 = NaN.
      return g * (SigmoidD(2.f * u) + 0.5f * x * (sech2 == 0.f && !isinf(x) ? 0.f : sech2 * du));
    }
    default: return g;
  }
}

// dy * act'(.) from the output y; legal only where ActGradFromOutput(a, alpha).
__device__ __forceinline__ float ActGFromOutput(Act a, float alpha, float y, float g) {
  switch (a) {
    case Act::kNone: return g;
    case Act::kRelu: return y > 0.f ? g : 0.f;
    case Act::kRelu6: return (y > 0.f && y < 6.f) ? g : 0.f;
    case Act::kLeakyRelu: return y >= 0.f ? g : alpha * g;  // alpha > 0: y >= 0 iff x >= 0
    case Act::kElu: return y > 0.f ? g : g * (y + alpha);
    case Act::kSigmoid: return g * (y * (1.f - y));
    case Act::kTanh: return g * ((1.f - y) * (1.f + y));
    default: return g;
  }
}

}  // namespace jax_mps::cuda
