// Activation ("neuron") codes shared by the standalone activation ops and every op with a fused
// activation. Must match jax_mps/_validate.py ACTIVATION_CODES.
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
    case Act::kLeakyRelu: case Act::kElu:
      return alpha >= 0.f;
    default:
      return false;
  }
}

}  // namespace jax_mps
