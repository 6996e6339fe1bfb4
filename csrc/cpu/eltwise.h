// Element-wise activation kernels (oneDNN eltwise where it has the function, our own loop
// otherwise). Used by the activation ops and by every op with a fused activation.
#pragma once
#include <cstdint>

#include <dnnl.hpp>

#include "runtime/activation.h"

namespace jax_mps::cpu {

// oneDNN eltwise algorithm (and its alpha/beta) for `act`; `from_output` picks the
// *_use_dst_for_bwd variant. False where oneDNN lacks the function (softsign, none).
bool DnnlEltwiseAlg(Act act, float alpha, bool from_output, dnnl::algorithm* alg, float* a, float* b);

// y = act(x) over n contiguous floats (in place allowed).
void ActForward(Act act, float alpha, int64_t n, const float* x, float* y);
// dx = dy * act'(.) where `src_or_dst` is the pre-activation x, or the output y when
// from_output (legal only if ActGradFromOutput(act, alpha)). dx may alias dy.
void ActBackward(Act act, float alpha, int64_t n, const float* src_or_dst, const float* dy,
                 float* dx, bool from_output);

}  // namespace jax_mps::cpu
