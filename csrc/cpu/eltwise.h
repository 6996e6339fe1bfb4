// Element-wise activation kernels (our own: see activations.cc for why not oneDNN's eltwise).
// Used by the activation ops and by every op with a fused activation.
#pragma once
#include <cstdint>

#include "runtime/activation.h"

namespace jax_mps::cpu {

// y = act(x) over n contiguous floats (in place allowed).
void ActForward(Act act, float alpha, int64_t n, const float* x, float* y);
// dx = dy * act'(.) where `src_or_dst` is the pre-activation x, or the output y when
// from_output (legal only if ActGradFromOutput(act, alpha)). dx may alias dy.
void ActBackward(Act act, float alpha, int64_t n, const float* src_or_dst, const float* dy,
                 float* dx, bool from_output);

}  // namespace jax_mps::cpu
