// Losses: codes (exported to Python by runtime/export.h), the per-element math, descriptor,
// validation and targets. One fused kernel computes the per-sample losses and the reduction, one
// every gradient.
#pragma once
#include <cmath>
#include <cstdint>

#include "runtime/backend.h"

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
  JAX_MPS_HD bool elementwise() const { return kind != LossKind::kSoftmaxCE && kind != LossKind::kKL; }
};

// Integer class ids are checked against [0, D) by the kernels (values are never read here).
inline ffi::Error MakeLossDesc(int64_t kind, int64_t reduction, float param, const ffi::AnyBuffer& pred_buf,
                               const ffi::AnyBuffer& target_buf, const ffi::AnyBuffer& weights, LossDesc* desc) {
  JAX_MPS_RETURN_IF_ERROR(CheckFloat("loss", "predictions", pred_buf));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat("loss", "weights", weights));
  const auto tt = target_buf.element_type();
  JAX_MPS_CHECK(IsFloat(tt) || tt == ffi::S32, "loss: target must be a float or int32 array, got ", DtypeName(tt));
  const bool int_target = tt == ffi::S32;
  auto pred = pred_buf.dimensions(), target = target_buf.dimensions();
  const int64_t n_weights = static_cast<int64_t>(weights.element_count());
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
// Host and device (JAX_MPS_HD): the CUDA loss kernels call these same functions.
struct ElemGrad {
  float dp, dt;
};

JAX_MPS_HD inline float ElemLoss(LossKind k, float p, float t, float delta) {
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

JAX_MPS_HD inline ElemGrad ElemLossGrad(LossKind k, float p, float t, float delta) {
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
    // d/dt of xlogy(t, t) at t == 0 is NaN in optax and torch alike (log t + t / t); so here.
    case LossKind::kKL: return {-t, t == 0.f ? __builtin_nanf("") : std::log(t) - p + 1.f};
    default: return {0.f, 0.f};
  }
}

// ---- loss_fwd: out (N,) for reduction none, (1,) otherwise; lse (N,) keeps the softmax CE row
// log-sum-exps for the backward pass (under differentiation), else (0,) ----
inline ffi::Error CheckLse(const char* op, const LossDesc& d, const ffi::AnyBuffer& lse) {
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "lse", lse, ffi::F32));
  const int64_t nl = static_cast<int64_t>(lse.element_count());
  JAX_MPS_CHECK(lse.dimensions().size() == 1 && (nl == 0 || (nl == d.n && d.kind == LossKind::kSoftmaxCE)), op,
                ": lse must have 0 or ", d.n, " elements (softmax cross entropy), got ", DimsStr(lse.dimensions()));
  return ffi::Error::Success();
}

template <class B>
ffi::Error LossFwd(typename B::Ctx ctx, ffi::AnyBuffer pred, ffi::AnyBuffer target, ffi::AnyBuffer weights,
                   ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> lse, int64_t kind, int64_t reduction,
                   float param) {
  const char* op = "loss";
  LossDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeLossDesc(kind, reduction, param, pred, target, weights, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "output", *out, d.reduction == Reduction::kNone ? d.n : 1));
  JAX_MPS_RETURN_IF_ERROR(CheckLse(op, d, *lse));
  return Guard(op, [&] { return B::LossFwd(ctx, d, pred, target, weights, *out, *lse); });
}
template <class B>
auto LossFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("kind").template Attr<int64_t>("reduction").template Attr<float>("param");
}

// ---- loss_bwd: lse as saved by the forward ((N,) or (0,) to recompute); g (N,) for reduction
// none, (1,) otherwise. dtarget (N, D) for a float target, else (N, 0); dweights (N,) when
// weighted, else (0,) ----
template <class B>
ffi::Error LossBwd(typename B::Ctx ctx, ffi::AnyBuffer pred, ffi::AnyBuffer target, ffi::AnyBuffer weights,
                   ffi::AnyBuffer lse, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dpred,
                   ffi::Result<ffi::AnyBuffer> dtarget, ffi::Result<ffi::AnyBuffer> dweights, int64_t kind,
                   int64_t reduction, float param) {
  const char* op = "loss_bwd";
  LossDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeLossDesc(kind, reduction, param, pred, target, weights, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckLse(op, d, lse));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "cotangent", g, d.reduction == Reduction::kNone ? d.n : 1));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dpred", *dpred, pred));
  const int64_t ndt = static_cast<int64_t>(dtarget->element_count()), ndw = static_cast<int64_t>(dweights->element_count());
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dtarget", *dtarget));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dweights", *dweights));
  JAX_MPS_CHECK(ndt == 0 || (ndt == d.n * d.d && !d.int_labels), op, ": dtarget must have 0 or ", d.n * d.d,
                " elements (float target), got ", ndt);
  JAX_MPS_CHECK(ndw == 0 || (ndw == d.n && d.weighted), op, ": dweights must have 0 or ", d.n,
                " elements (weighted), got ", ndw);
  return Guard(op, [&] { return B::LossBwd(ctx, d, pred, target, weights, lse, g, *dpred, *dtarget, *dweights); });
}
template <class B>
auto LossBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("kind").template Attr<int64_t>("reduction").template Attr<float>("param");
}

}  // namespace jax_mps
