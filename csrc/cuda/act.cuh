// Element-wise activations on the device, with jax.nn's semantics (NaN in -> NaN out; the
// derivative at a kink is jax.nn's one-sided choice). Used by the activation targets and every
// target with a fused activation (batch norm, conv, dense).
#pragma once
#include "runtime/activation.h"

namespace jax_mps::cuda {

__device__ __forceinline__ float ActF(Act a, float alpha, float x) {
  switch (a) {
    case Act::kNone: return x;
    case Act::kRelu: return x > 0.f ? x : (x != x ? x : 0.f);
    case Act::kRelu6: return x != x ? x : fminf(fmaxf(x, 0.f), 6.f);
    case Act::kLeakyRelu: return x >= 0.f ? x : alpha * x;
    case Act::kElu: return x > 0.f ? x : alpha * expm1f(x);
    case Act::kSigmoid: return 1.f / (1.f + expf(-x));
    case Act::kHardSigmoid: return x != x ? x : fminf(fmaxf(x + 3.f, 0.f), 6.f) / 6.f;
    case Act::kTanh: return tanhf(x);
    case Act::kSoftplus: return x != x ? x : fmaxf(x, 0.f) + log1pf(expf(-fabsf(x)));
    case Act::kSoftsign: return x / (1.f + fabsf(x));
    case Act::kGelu: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case Act::kGeluTanh: {
      const float k = 0.79788456080286536f;  // sqrt(2 / pi)
      return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    default: return x;
  }
}

// dy * act'(x) from the pre-activation x.
__device__ __forceinline__ float ActG(Act a, float alpha, float x, float g) {
  switch (a) {
    case Act::kNone: return g;
    case Act::kRelu: return x > 0.f ? g : 0.f;
    case Act::kRelu6: return (x > 0.f && x < 6.f) ? g : 0.f;
    case Act::kLeakyRelu: return x >= 0.f ? g : alpha * g;
    case Act::kElu: return x > 0.f ? g : g * alpha * expf(x);
    case Act::kSigmoid: {
      const float s = 1.f / (1.f + expf(-x));
      return g * s * (1.f - s);
    }
    case Act::kHardSigmoid: return (x > -3.f && x < 3.f) ? g / 6.f : 0.f;
    case Act::kTanh: {
      const float t = tanhf(x);
      return g * (1.f - t * t);
    }
    case Act::kSoftplus: return g / (1.f + expf(-x));
    case Act::kSoftsign: {
      const float d = 1.f + fabsf(x);
      return g / (d * d);
    }
    case Act::kGelu: {
      const float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
      const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
      return g * (cdf + x * pdf);
    }
    case Act::kGeluTanh: {
      const float k = 0.79788456080286536f;
      const float u = k * (x + 0.044715f * x * x * x);
      const float t = tanhf(u);
      const float du = k * (1.f + 3.f * 0.044715f * x * x);
      return g * (0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du);
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
    case Act::kLeakyRelu: return y >= 0.f ? g : alpha * g;
    case Act::kElu: return y > 0.f ? g : g * (y + alpha);
    case Act::kSigmoid: return g * y * (1.f - y);
    case Act::kTanh: return g * (1.f - y * y);
    default: return g;
  }
}

}  // namespace jax_mps::cuda
