// Activation ("neuron") codes shared by the standalone activation ops and every op with a fused
// activation. Must match jax_mps/_validate.py ACTIVATION_CODES.
//
// Numerical rules every backend's kernels follow (tests/test_numerics.py checks them):
// - Values and gradients are jax.nn's, in float32 to float32 accuracy over the whole float32
//   range against jax.nn in float64 (relative 1e-6 where not tiny, else absolute 1e-7 max(1, |x|)),
//   never with the wrong sign: softplus = max(x, 0) + log1p(exp(-|x|)) (never 1 + exp), tanh and
//   sigmoid from exp(-|x|), elu with an expm1 that does not cancel near 0, gelu from erfc (not
//   1 + erf) and gelu_tanh as x * sigmoid(2u). Library eltwise ops that miss this are not used.
// - NaN in gives NaN out, for every activation (a max/min/clip must not drop it); +-inf give
//   jax.nn's values: relu/leaky_relu/elu/softplus/gelu(+inf) = inf, sigmoid/tanh/hard_sigmoid
//   saturate, softsign(+-inf) = NaN, gelu(-inf) = gelu_tanh(-inf) = NaN (-inf * 0).
// - Gradients: relu, relu6, hard_sigmoid and leaky_relu are selects as in jax (relu'(0) = 0,
//   relu6' = 0 at 0 and 6, leaky_relu'(0) = 1, leaky_relu'(NaN) = alpha, relu'(NaN) = 0, and a NaN
//   dy where the select picks 0 gives 0); the others are dy * f'(x) (NaN at NaN); softsign' and
//   gelu' are NaN at +-inf (jax's inf * 0); sigmoid', tanh', elu'(-inf) are 0.
// - Fused activations (conv, conv_transpose, dense, batch norm) follow the same rules.
#pragma once
#include <cstdint>

namespace jax_mps {

enum class Act : int64_t {
  kNone = 0,
  kRelu = 1,
  kRelu6 = 2,
  kLeakyRelu = 3,  // alpha
  kElu = 4,        // alpha
  kSigmoid = 5,
  kHardSigmoid = 6,  // relu6(x + 3) / 6, as jax.nn.hard_sigmoid
  kTanh = 7,
  kSoftplus = 8,
  kSoftsign = 9,
  kGelu = 10,      // exact erf form
  kGeluTanh = 11,  // tanh approximation
  kCount = 12,
};

inline bool ValidAct(int64_t code) { return code >= 0 && code < static_cast<int64_t>(Act::kCount); }

// Activations whose derivative is a function of the output y alone: fused ops then keep only y
// for the backward pass instead of the pre-activation z.
inline bool ActGradFromOutput(Act a, float alpha) {
  switch (a) {
    case Act::kNone: case Act::kRelu: case Act::kRelu6: case Act::kSigmoid: case Act::kTanh:
      return true;
    case Act::kLeakyRelu:
      return alpha > 0.f;  // alpha = 0 maps x < 0 and x = 0 to the same y, but jax's gradients differ
    case Act::kElu:
      return alpha >= 0.f;
    default:
      return false;
  }
}

}  // namespace jax_mps
