// Loss and dropout descriptors shared by every backend: codes (must match jax_mps/losses.py),
// the per-element math, and shape/attribute validation.
#pragma once
#include <cmath>
#include <cstdint>

#include "runtime/common.h"

namespace jax_mps {

enum class LossKind : int64_t {
  kSoftmaxCE = 0,  // per row: sum_c t_c * (lse(x) - x_c), t smoothed; labels int (N,) or probs (N, C)
  kSigmoidCE = 1,
  kMSE = 2,
  kMAE = 3,
  kHuber = 4,  // param = delta
  kHinge = 5,
  kKL = 6,  // pred = log-probabilities; per row: sum t * (log t - lp), 0 where t == 0
  kCount = 7,
};

enum class Reduction : int64_t { kNone = 0, kSum = 1, kMean = 2, kSumByNonzeroWeights = 3, kCount = 4 };

// Every loss is computed on (N, D) views: N samples, D values per sample.
struct LossDesc {
  LossKind kind = LossKind::kSoftmaxCE;
  Reduction reduction = Reduction::kMean;
  float param = 0.f;  // huber delta or softmax CE label smoothing
  int64_t n = 0, d = 0;
  bool int_labels = false;  // target is int32 (N,) class ids (softmax CE only)
  bool weighted = false;    // weights (N,) given; otherwise all ones
  bool elementwise() const { return kind != LossKind::kSoftmaxCE && kind != LossKind::kKL; }
};

inline ffi::Error MakeLossDesc(int64_t kind, int64_t reduction, float param, ffi::Span<const int64_t> pred,
                               ffi::Span<const int64_t> target, bool int_target, int64_t n_weights,
                               LossDesc* desc) {
  JAX_MPS_CHECK(kind >= 0 && kind < int64_t(LossKind::kCount), "loss: unknown loss kind ", kind);
  JAX_MPS_CHECK(reduction >= 0 && reduction < int64_t(Reduction::kCount), "loss: unknown reduction code ",
                reduction);
  desc->kind = static_cast<LossKind>(kind);
  desc->reduction = static_cast<Reduction>(reduction);
  desc->param = param;
  JAX_MPS_CHECK(pred.size() == 2, "loss: predictions must be viewed as (N, D), got ", DimsStr(pred));
  desc->n = pred[0];
  desc->d = pred[1];
  desc->int_labels = int_target;
  if (int_target) {
    JAX_MPS_CHECK(desc->kind == LossKind::kSoftmaxCE, "loss: integer labels only for softmax cross entropy");
    JAX_MPS_CHECK(target.size() == 1 && target[0] == desc->n, "loss: integer labels must have shape (",
                  desc->n, ",), got ", DimsStr(target));
  } else {
    JAX_MPS_CHECK(target.size() == 2 && target[0] == desc->n && target[1] == desc->d, "loss: target must have shape ",
                  DimsStr(pred), ", got ", DimsStr(target));
  }
  JAX_MPS_CHECK(n_weights == 0 || n_weights == desc->n, "loss: weights must have shape (", desc->n,
                ",) (or (0,) for none), got (", n_weights, ",)");
  desc->weighted = n_weights != 0;
  if (desc->kind == LossKind::kSoftmaxCE) {
    JAX_MPS_CHECK(desc->d >= 1, "softmax_cross_entropy: need at least one class");
    JAX_MPS_CHECK(param >= 0.f && param <= 1.f, "softmax_cross_entropy: label_smoothing must be in [0, 1], got ",
                  param);
  }
  if (desc->kind == LossKind::kHuber)
    JAX_MPS_CHECK(param > 0.f && std::isfinite(param), "huber_loss: delta must be > 0, got ", param);
  return ffi::Error::Success();
}

// Per-element loss e(p, t) and its partials; the per-sample value is mean_j e (element-wise kinds).
// NaN and +-inf follow optax / jnp: sigmoid CE is optax's -t log_sigmoid(p) - (1 - t) log_sigmoid(-p)
// (so p = +-inf gives inf, or NaN where 0 * inf), hinge is jnp.maximum(0, .) (NaN stays NaN, and
// its gradient is jnp.maximum's: 0 at NaN, half at the tie), MAE's gradient is jnp.abs's (1 at 0,
// -1 at NaN), KL is optax's t (log t - p) with log t := 0 at t = 0 (so t = 0 with p = -inf or NaN
// is NaN). One deviation: d KL / d t at t = 0 is 0, where optax's jnp.where gives 0 / 0 = NaN.
struct ElemGrad {
  float dp, dt;
};

inline float ElemLoss(LossKind k, float p, float t, float delta) {
  switch (k) {
    case LossKind::kSigmoidCE: {
      const float l = std::log1p(std::exp(-std::fabs(p)));  // softplus(+-p) = max(+-p, 0) + l
      return t * ((p > 0.f ? 0.f : -p) + l) + (1.f - t) * ((p < 0.f ? 0.f : p) + l);
    }
    case LossKind::kMSE: return (p - t) * (p - t);
    case LossKind::kMAE: return std::fabs(p - t);
    case LossKind::kHuber: {
      float a = std::fabs(p - t);
      return a <= delta ? 0.5f * a * a : delta * (a - 0.5f * delta);
    }
    case LossKind::kHinge: {
      const float v = 1.f - t * p;
      return v < 0.f ? 0.f : v;
    }
    case LossKind::kKL: return t * ((t == 0.f ? 0.f : std::log(t)) - p);
    default: return 0.f;
  }
}

inline ElemGrad ElemLossGrad(LossKind k, float p, float t, float delta) {
  switch (k) {
    case LossKind::kSigmoidCE: {
      // (1 - t) sigmoid(p) - t sigmoid(-p) (= sigmoid(p) - t), as optax's gradient, so that an
      // infinite target gives NaN as there.
      const float e = std::exp(-std::fabs(p)), r = 1.f / (1.f + e), sp = p >= 0.f ? r : e * r;
      const float sn = p >= 0.f ? e * r : r;
      return {(1.f - t) * sp - t * sn, -p};
    }
    case LossKind::kMSE: return {2.f * (p - t), -2.f * (p - t)};
    case LossKind::kMAE: {
      float s = p - t >= 0.f ? 1.f : -1.f;
      return {s, -s};
    }
    case LossKind::kHuber: {
      float r = p - t;
      float g = std::fabs(r) <= delta ? r : (r > 0.f ? delta : (r < 0.f ? -delta : r));
      return {g, -g};
    }
    case LossKind::kHinge: {  // target not differentiated
      const float v = 1.f - t * p;
      return {v > 0.f ? -t : (v == 0.f ? -0.5f * t : 0.f), 0.f};
    }
    case LossKind::kKL: return {-t, t == 0.f ? 0.f : std::log(t) - p + 1.f};
    default: return {0.f, 0.f};
  }
}

// Dropout: with b = i / 4 (a 64-bit block index), keep element i iff
// Philox4x32-10(counter = (lo32(b), hi32(b), k2, k3), key = (k0, k1))[i % 4] < threshold; k2 = k3 = 0 for
// 2-word keys. Counter-based, so the mask depends on (key, i) only, never on threading.
struct DropoutDesc {
  uint64_t threshold = 0;  // keep probability * 2^32, in (0, 2^32]
  float scale = 1.f;       // 1 / (1 - rate)
};

inline ffi::Error MakeDropoutDesc(int64_t threshold, float scale, int64_t key_words, DropoutDesc* desc) {
  JAX_MPS_CHECK(threshold > 0 && threshold <= (int64_t(1) << 32), "dropout: keep threshold must be in (0, 2^32], got ",
                threshold);
  JAX_MPS_CHECK(std::isfinite(scale) && scale >= 1.f, "dropout: scale must be finite and >= 1, got ", scale);
  JAX_MPS_CHECK(key_words == 2 || key_words == 4, "dropout: key data must be uint32 (2,) or (4,), got (", key_words,
                ",)");
  desc->threshold = static_cast<uint64_t>(threshold);
  desc->scale = scale;
  return ffi::Error::Success();
}

}  // namespace jax_mps
