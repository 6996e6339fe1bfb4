// Backend-neutral description of one fused optimizer step (mps.optim) and its validation.
//
// One call updates n leaves of one dtype group. Operands, in order:
//   lr (f32 scalar), count (s32 scalar, the step count after increment), sqnorm (f32 scalar,
//   the squared global gradient norm when norm_mode == kExternal), params[n], grads[n],
//   slots[nslots][n] (float32 optimizer state).
// Results: out[n] (new params, or optax updates when write_updates), slots[nslots][n].
// Per element: rescale -> clip by value -> clip by global norm -> coupled L1/L2 -> rule.
#pragma once
#include <cmath>
#include <cstdint>

#include "runtime/common.h"

namespace jax_mps {

enum class OptRule : int64_t { kSgd = 0, kAdam = 1, kRmsprop = 2 };
// kInternal: the call computes the norm of its own gradients (the tree is one dtype group);
// kExternal: the norm of the whole tree arrives in `sqnorm` (several groups, see optim_sqnorm).
enum class NormMode : int64_t { kNone = 0, kInternal = 1, kExternal = 2 };

struct OptimDesc {
  OptRule rule = OptRule::kSgd;
  int64_t n = 0;
  int64_t nslots = 0;
  bool write_updates = false;
  // Rule hyperparameters (sgd: momentum, nesterov; adam: b1, b2, eps, weight_decay, amsgrad;
  // rmsprop: decay (in b2), eps, momentum, centered).
  float b1 = 0.f, b2 = 0.f, eps = 0.f, momentum = 0.f, weight_decay = 0.f;
  bool nesterov = false, amsgrad = false, centered = false;
  // Gradient preprocessing, shared by every rule.
  float rescale = 1.f, clip_value = 0.f, clip_norm = 0.f, l1 = 0.f, l2 = 0.f;
  NormMode norm_mode = NormMode::kNone;
};

// Slots per rule: sgd [trace]; adam [mu, nu, nu_max?]; rmsprop [nu, mu?, momentum?].
inline int64_t OptimSlots(const OptimDesc& d) {
  switch (d.rule) {
    case OptRule::kSgd: return d.momentum != 0.f ? 1 : 0;
    case OptRule::kAdam: return d.amsgrad ? 3 : 2;
    case OptRule::kRmsprop: return 1 + (d.centered ? 1 : 0) + (d.momentum != 0.f ? 1 : 0);
  }
  return -1;
}

inline ffi::Error ValidateOptim(const OptimDesc& d, size_t nargs, size_t nrets) {
  JAX_MPS_CHECK(d.rule == OptRule::kSgd || d.rule == OptRule::kAdam || d.rule == OptRule::kRmsprop,
                "optim: unknown rule ", static_cast<int64_t>(d.rule));
  JAX_MPS_CHECK(d.n >= 0, "optim: n must be >= 0, got ", d.n);
  JAX_MPS_CHECK(d.nslots == OptimSlots(d), "optim: rule ", static_cast<int64_t>(d.rule), " needs ",
                OptimSlots(d), " state slots, got ", d.nslots);
  JAX_MPS_CHECK(nargs == static_cast<size_t>((2 + d.nslots) * d.n), "optim: expected ",
                (2 + d.nslots) * d.n, " tensor operands (params, grads, slots), got ", nargs);
  JAX_MPS_CHECK(nrets == static_cast<size_t>((1 + d.nslots) * d.n), "optim: expected ",
                (1 + d.nslots) * d.n, " results, got ", nrets);
  JAX_MPS_CHECK(d.eps >= 0.f, "optim: eps must be >= 0, got ", d.eps);
  JAX_MPS_CHECK(d.rescale >= 0.f && d.clip_value >= 0.f && d.clip_norm >= 0.f && d.l1 >= 0.f &&
                    d.l2 >= 0.f && d.weight_decay >= 0.f,
                "optim: rescale, clip_value, clip_norm, l1, l2 and weight_decay must be >= 0");
  JAX_MPS_CHECK(d.norm_mode == NormMode::kNone || d.norm_mode == NormMode::kInternal ||
                    d.norm_mode == NormMode::kExternal,
                "optim: unknown norm_mode ", static_cast<int64_t>(d.norm_mode));
  JAX_MPS_CHECK((d.norm_mode != NormMode::kNone) == (d.clip_norm > 0.f),
                "optim: norm_mode and clip_norm disagree");
  return ffi::Error::Success();
}

// Factor that clip-by-global-norm applies to every gradient (optax.clip_by_global_norm).
inline float NormScale(double sqnorm, float clip_norm) {
  if (clip_norm <= 0.f) return 1.f;
  float norm = static_cast<float>(std::sqrt(sqnorm));
  return norm < clip_norm ? 1.f : clip_norm / norm;
}

}  // namespace jax_mps
