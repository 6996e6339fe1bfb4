// The element-wise activation formulas of every backend, written once over a math policy M
// (the CPU's branch-free, vectorisable approximations in csrc/cpu/activations.cc; CUDA's float32
// math library in csrc/cuda/act.cuh). M provides, each float32-accurate over the whole range:
//   Exp(x); Expm1NonPos(x) for x <= 0; Log1pUnit(u) for u in [0, 1]; Erfc(z); Tanh(x).
// Rules (runtime/activation.h): jax.nn's values, NaN in -> NaN out, jax's one-sided derivatives at
// kinks and jax's values at +-inf.
#pragma once
#include <cmath>

#include "runtime/activation.h"

namespace jax_mps::act {

JAX_MPS_HDI bool IsInf(float v) { return fabsf(v) == INFINITY; }

// 1 / (1 + exp(-x)) from e = exp(-|x|): no cancellation and no overflow on either side.
template <class M> JAX_MPS_HDI float Sigmoid(float x) {
  const float e = M::Exp(-fabsf(x)), r = 1.f / (1.f + e);
  return x >= 0.f ? r : e * r;
}
// sigmoid'(x) = e / (1 + e)^2 with e = exp(-|x|).
template <class M> JAX_MPS_HDI float SigmoidGrad(float x) {
  const float e = M::Exp(-fabsf(x)), d = 1.f + e;
  return e / (d * d);
}
// tanh'(x) = 1 - tanh^2 = 4e / (1 + e)^2 with e = exp(-2|x|) (accurate where tanh is near +-1).
template <class M> JAX_MPS_HDI float TanhGrad(float x) {
  const float e = M::Exp(-2.f * fabsf(x)), d = 1.f + e;
  return 4.f * e / (d * d);
}
// max(x, 0) as jnp.maximum: NaN stays NaN; -0 and negative subnormals (compared as 0 under DAZ)
// give +0.
JAX_MPS_HDI float Relu(float x) { return x > 0.f ? x : (x != x ? x : 0.f); }

// gelu_tanh's u = sqrt(2/pi) (x + 0.044715 x^3), with x clamped where sigmoid(2u) is already 0 or 1
// (so x^3 never overflows).
JAX_MPS_HDI float GeluTanhArg(float x) {
  const float xc = fminf(fmaxf(x, -1e4f), 1e4f);
  return 0.7978845608028654f * xc * (1.f + 0.044715f * xc * xc);
}

template <class M> JAX_MPS_HDI float Forward(Act act, float x, float alpha) {
  switch (act) {
    case Act::kRelu: return Relu(x);
    case Act::kRelu6: {
      const float v = Relu(x);
      return v > 6.f ? 6.f : v;
    }
    case Act::kLeakyRelu: return x >= 0.f ? x : alpha * x;
    case Act::kElu: return x > 0.f ? x : alpha * M::Expm1NonPos(x);  // (x <= 0 where taken)
    case Act::kSigmoid: return Sigmoid<M>(x);
    case Act::kHardSigmoid: {
      const float v = x + 3.f, r = v < 0.f ? 0.f : v;
      return (r > 6.f ? 6.f : r) / 6.f;
    }
    case Act::kTanh: return M::Tanh(x);
    case Act::kSoftplus: return (x < 0.f ? 0.f : x) + M::Log1pUnit(M::Exp(-fabsf(x)));  // logaddexp(x, 0)
    case Act::kSoftsign: return x / (1.f + fabsf(x));  // NaN at +-inf, as jax
    case Act::kGelu: return 0.5f * x * M::Erfc(-0.70710678118654752f * x);  // no 1 + erf cancellation
    case Act::kGeluTanh: return x * Sigmoid<M>(2.f * GeluTanhArg(x));  // 0.5 (1 + tanh u) = sigmoid(2u)
    default: return x;
  }
}

// dx = dy * act'(x). Where jax's derivative is a select (relu, relu6, hard_sigmoid, leaky_relu),
// so is ours: a NaN or inf dy where the select picks 0 gives 0, as in jax.
template <class M> JAX_MPS_HDI float Backward(Act act, float x, float g, float alpha) {
  switch (act) {
    case Act::kRelu: return x > 0.f ? g : 0.f;
    case Act::kRelu6: return (x > 0.f && x < 6.f) ? g : 0.f;
    case Act::kLeakyRelu: return x >= 0.f ? g : alpha * g;  // 1 at 0 and alpha at NaN, as jnp.where
    case Act::kElu: return x > 0.f ? g : alpha * g * M::Exp(x);
    case Act::kSigmoid: return g * SigmoidGrad<M>(x);
    case Act::kHardSigmoid: {
      const float v = x + 3.f;
      return (v > 0.f && v < 6.f) ? g / 6.f : 0.f;
    }
    case Act::kTanh: return g * TanhGrad<M>(x);
    case Act::kSoftplus: return g * Sigmoid<M>(x);
    case Act::kSoftsign: {
      const float d = 1.f + fabsf(x);
      return IsInf(x) ? NAN : g / (d * d);  // jax's quotient rule gives inf * 0 at +-inf
    }
    case Act::kGelu:  // Phi(x) + x phi(x); NaN at +-inf (inf * 0), as jax
      return g * (0.5f * M::Erfc(-0.70710678118654752f * x) + x * (0.3989422804014327f * M::Exp(-0.5f * x * x)));
    case Act::kGeluTanh: {
      // du's 3 x^2 overflows where jax's autodiff of x^3 does (|x| > 1.06e19): sech2 (0 there)
      // times inf is NaN, as jax.nn.gelu's and torch's gradients.
      const float u = GeluTanhArg(x), du = 0.7978845608028654f * (1.f + 0.044715f * (3.f * x * x));
      const float e = M::Exp(-2.f * fabsf(u)), d = 1.f + e, sech2 = 4.f * e / (d * d);
      return g * (Sigmoid<M>(2.f * u) + 0.5f * x * (sech2 * du));
    }
    default: return g;
  }
}

// dx = dy * act'(.) from the output y; legal only where ActGradFromOutput(act, alpha).
JAX_MPS_HDI float BackwardFromOutput(Act act, float y, float g, float alpha) {
  switch (act) {
    case Act::kRelu: return y > 0.f ? g : 0.f;
    case Act::kRelu6: return (y > 0.f && y < 6.f) ? g : 0.f;
    case Act::kLeakyRelu: return y >= 0.f ? g : alpha * g;  // alpha > 0: y >= 0 iff x >= 0
    case Act::kElu: return y > 0.f ? g : g * (y + alpha);
    case Act::kSigmoid: return g * (y * (1.f - y));
    case Act::kTanh: return g * ((1.f - y) * (1.f + y));
    default: return g;
  }
}

}  // namespace jax_mps::act
