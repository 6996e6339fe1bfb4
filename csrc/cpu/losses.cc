// Losses on the CPU: one fused kernel computes the per-sample losses and the reduction, one fused
// kernel computes every gradient (recomputing per-sample values; softmax CE reuses the row log-sum-exps).
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/losses.h"
#include "cpu/kernel_util.h"
#include "runtime/registry.h"

namespace jax_mps::cpu {
namespace {



struct LossArgs {
  LossDesc desc;
  const float* pred;
  const float* target = nullptr;   // float target (N, D)
  const int32_t* labels = nullptr;  // int class ids (N,)
  const float* weights = nullptr;   // nullptr: all ones
};

ffi::Error Decode(ffi::Buffer<ffi::F32>& pred, ffi::AnyBuffer& target, ffi::Buffer<ffi::F32>& weights,
                  int64_t kind, int64_t reduction, float param, LossArgs* a) {
  auto tt = target.element_type();
  JAX_MPS_CHECK(tt == ffi::DataType::F32 || tt == ffi::DataType::S32, "loss: target must be float32 or int32");
  const bool int_target = tt == ffi::DataType::S32;
  JAX_MPS_RETURN_IF_ERROR(MakeLossDesc(kind, reduction, param, pred.dimensions(), target.dimensions(), int_target,
                                       static_cast<int64_t>(weights.element_count()), &a->desc));
  a->pred = pred.typed_data();
  if (int_target) {
    a->labels = static_cast<const int32_t*>(target.untyped_data());
    for (int64_t i = 0; i < a->desc.n; ++i)
      JAX_MPS_CHECK(a->labels[i] >= 0 && a->labels[i] < a->desc.d, "softmax_cross_entropy: label ", a->labels[i],
                    " at sample ", i, " is out of range [0, ", a->desc.d, ")");
  } else {
    a->target = static_cast<const float*>(target.untyped_data());
  }
  if (a->desc.weighted) a->weights = weights.typed_data();
  return ffi::Error::Success();
}

// out[j] = exp(x[j] - shift) (FastExp: vectorises, NaN stays NaN); returns the sum of out (out
// may be null: sum only).
JAX_MPS_CLONES float ExpShift(const float* x, int64_t c, float shift, float* out) {
  float s = 0.f;
  if (out) {
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < c; ++j) {
      const float e = FastExp(x[j] - shift);
      out[j] = e;
      s += e;
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < c; ++j) s += FastExp(x[j] - shift);
  }
  return s;
}

// log-sum-exp of one row, NaN when it holds NaN. A +-inf max follows optax: for integer labels
// without smoothing (optax.softmax_cross_entropy_with_integer_labels) jax.nn.logsumexp's (+inf,
// or -inf for an all -inf row: the loss is then inf or NaN, and the gradient exp(x - lse) NaN only
// at the +inf entries); otherwise (optax.softmax_cross_entropy of the smoothed targets)
// log_softmax's: NaN, so the whole row is NaN.
JAX_MPS_CLONES float Lse(const float* x, int64_t c, bool logsumexp_inf) {
  float m = -INFINITY, bad = 0.f;
#pragma omp simd reduction(max : m) reduction(+ : bad)
  for (int64_t j = 0; j < c; ++j) {
    m = x[j] > m ? x[j] : m;
    bad += x[j] != x[j] ? 1.f : 0.f;
  }
  if (bad > 0.f) return NAN;
  if (std::fabs(m) == INFINITY) return logsumexp_inf ? m : NAN;
  return m + std::log(ExpShift(x, c, m, nullptr));
}

// Element-wise kinds, with the kind a template parameter so that the per-element switch folds
// away and the row loops vectorise.
template <LossKind K>
float ElemRowSum(const float* x, const float* t, int64_t n, float param) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += ElemLoss(K, x[j], t[j], param);
  return acc;
}

template <LossKind K>
void ElemRowGrad(const float* x, const float* t, int64_t n, float param, float scale, float* dx, float* dt) {
  if (dt) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      ElemGrad g = ElemLossGrad(K, x[j], t[j], param);
      dx[j] = scale * g.dp;
      dt[j] = scale * g.dt;
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dx[j] = scale * ElemLossGrad(K, x[j], t[j], param).dp;
  }
}

#define JAX_MPS_ELEM_DISPATCH(kind, FN, ...)                                     \
  switch (kind) {                                                                \
    case LossKind::kSigmoidCE: return FN<LossKind::kSigmoidCE>(__VA_ARGS__);     \
    case LossKind::kMSE: return FN<LossKind::kMSE>(__VA_ARGS__);                 \
    case LossKind::kMAE: return FN<LossKind::kMAE>(__VA_ARGS__);                 \
    case LossKind::kHuber: return FN<LossKind::kHuber>(__VA_ARGS__);             \
    case LossKind::kHinge: return FN<LossKind::kHinge>(__VA_ARGS__);             \
    default: return FN<LossKind::kKL>(__VA_ARGS__);                              \
  }

float ElemRowSumAny(LossKind k, const float* x, const float* t, int64_t n, float param) {
  JAX_MPS_ELEM_DISPATCH(k, ElemRowSum, x, t, n, param)
}

void ElemRowGradAny(LossKind k, const float* x, const float* t, int64_t n, float param, float scale, float* dx,
                    float* dt) {
  JAX_MPS_ELEM_DISPATCH(k, ElemRowGrad, x, t, n, param, scale, dx, dt)
}

// Unweighted per-sample loss of row i. Softmax CE: `*lse` is the row's log-sum-exp, taken as given
// when `have_lse`, else computed and stored.
inline float RowLoss(const LossArgs& a, int64_t i, float* lse, bool have_lse) {
  const LossDesc& d = a.desc;
  const float* x = a.pred + i * d.d;
  if (d.kind == LossKind::kSoftmaxCE) {
    const float ls = d.param, u = ls / float(d.d);
    if (!have_lse) *lse = Lse(x, d.d, a.labels != nullptr && d.param == 0.f);
    const float l = *lse;
    float acc = 0.f;
    if (a.labels) {
      float sx = 0.f;
      if (ls != 0.f) {
#pragma omp simd reduction(+ : sx)
        for (int64_t j = 0; j < d.d; ++j) sx += x[j];
      }
      acc = (1.f - ls) * (l - x[a.labels[i]]);
      if (ls != 0.f) acc += u * (float(d.d) * l - sx);  // (never 0 * inf: an inf lse stays the loss)
    } else {
      const float* t = a.target + i * d.d;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < d.d; ++j) acc += ((1.f - ls) * t[j] + u) * (l - x[j]);
    }
    return acc;
  }
  const float* t = a.target + i * d.d;
  float acc = ElemRowSumAny(d.kind, x, t, d.d, d.param);
  return d.elementwise() ? acc / float(d.d) : acc;
}

// Divisor of the reduced value (0 for none, which is never divided); 0 divisor -> result 0.
double Denominator(const LossArgs& a) {
  const LossDesc& d = a.desc;
  switch (d.reduction) {
    case Reduction::kMean: return double(d.n);
    case Reduction::kSumByNonzeroWeights: {
      if (!a.weights) return double(d.n);
      int64_t c = 0;
      for (int64_t i = 0; i < d.n; ++i) c += a.weights[i] != 0.f;
      return double(c);
    }
    default: return 1.0;
  }
}

// out: (N,) for reduction none, (1,) otherwise. lse: (N,) to keep the softmax CE row log-sum-exps
// for the backward pass (under differentiation), else (0,).
ffi::Error LossFwd(ffi::Buffer<ffi::F32> pred, ffi::AnyBuffer target, ffi::Buffer<ffi::F32> weights,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse_out, int64_t kind,
                   int64_t reduction, float param) {
  LossArgs a;
  JAX_MPS_RETURN_IF_ERROR(Decode(pred, target, weights, kind, reduction, param, &a));
  const LossDesc& d = a.desc;
  const bool none = d.reduction == Reduction::kNone;
  JAX_MPS_CHECK(static_cast<int64_t>(out->element_count()) == (none ? d.n : 1), "loss: output must have ",
                none ? d.n : 1, " elements, got ", out->element_count());
  const int64_t nl = lse_out->element_count();
  JAX_MPS_CHECK(nl == 0 || (nl == d.n && d.kind == LossKind::kSoftmaxCE), "loss: lse must have 0 or ", d.n,
                " elements (softmax cross entropy), got ", nl);
  float* lse_p = nl ? lse_out->typed_data() : nullptr;
  thread_local ScratchBuffer<float> scratch;
  float* l = none ? out->typed_data() : scratch.get(d.n);
  ParallelFor(d.n, d.n * d.d, [&](int64_t i) {
    float lse = 0.f;
    float v = RowLoss(a, i, &lse, false);
    if (lse_p) lse_p[i] = lse;
    l[i] = a.weights ? a.weights[i] * v : v;
  });
  if (none) return ffi::Error::Success();
  double s = 0.0;
  for (int64_t i = 0; i < d.n; ++i) s += l[i];
  double den = Denominator(a);
  out->typed_data()[0] = den == 0.0 ? 0.f : static_cast<float>(s / den);
  return ffi::Error::Success();
}

// lse: the forward's row log-sum-exps (N,) or (0,) to recompute them; g: (N,) for reduction none,
// (1,) otherwise. dtarget: (N, D) for a float target, else (N, 0);
// dweights: (N,) when weighted, else (0,).
ffi::Error LossBwd(ffi::Buffer<ffi::F32> pred, ffi::AnyBuffer target, ffi::Buffer<ffi::F32> weights,
                   ffi::Buffer<ffi::F32> lse_in, ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dpred, ffi::ResultBuffer<ffi::F32> dtarget,
                   ffi::ResultBuffer<ffi::F32> dweights, int64_t kind, int64_t reduction, float param) {
  LossArgs a;
  JAX_MPS_RETURN_IF_ERROR(Decode(pred, target, weights, kind, reduction, param, &a));
  const LossDesc& d = a.desc;
  const bool none = d.reduction == Reduction::kNone;
  JAX_MPS_CHECK(static_cast<int64_t>(g.element_count()) == (none ? d.n : 1), "loss_bwd: cotangent must have ",
                none ? d.n : 1, " elements, got ", g.element_count());
  JAX_MPS_CHECK(static_cast<int64_t>(dpred->element_count()) == d.n * d.d, "loss_bwd: dpred size mismatch");
  const int64_t ndt = dtarget->element_count(), ndw = dweights->element_count();
  JAX_MPS_CHECK(ndt == 0 || (ndt == d.n * d.d && a.target), "loss_bwd: dtarget must have 0 or ", d.n * d.d,
                " elements (float target), got ", ndt);
  JAX_MPS_CHECK(ndw == 0 || (ndw == d.n && a.weights), "loss_bwd: dweights must have 0 or ", d.n,
                " elements (weighted), got ", ndw);
  const int64_t nl = lse_in.element_count();
  JAX_MPS_CHECK(nl == 0 || (nl == d.n && d.kind == LossKind::kSoftmaxCE), "loss_bwd: lse must have 0 or ", d.n,
                " elements (softmax cross entropy), got ", nl);
  const float* saved = nl ? lse_in.typed_data() : nullptr;
  const float* gp = g.typed_data();
  float* dx = dpred->typed_data();
  float* dt = ndt ? dtarget->typed_data() : nullptr;
  float* dw = ndw ? dweights->typed_data() : nullptr;
  const double den = none ? 1.0 : Denominator(a);
  // d(out)/d(l_i) for a unit weight; 0 when the reduced value was defined as 0.
  const float gs = none ? 0.f : (den == 0.0 ? 0.f : static_cast<float>(gp[0] / den));
  const float inv_d = d.elementwise() && d.d ? 1.f / float(d.d) : 1.f;
  ParallelFor(d.n, d.n * d.d, [&](int64_t i) {
    const float gi = none ? gp[i] : gs;
    const float w = a.weights ? a.weights[i] : 1.f;
    const float c = gi * w;  // cotangent of the unweighted per-sample loss
    const float* x = a.pred + i * d.d;
    float* dxi = dx + i * d.d;
    float* dti = dt ? dt + i * d.d : nullptr;
    float lse = saved ? saved[i] : 0.f;
    if (dw) dw[i] = gi * RowLoss(a, i, &lse, saved != nullptr);
    else if (d.kind == LossKind::kSoftmaxCE && !saved) lse = Lse(x, d.d, a.labels != nullptr && d.param == 0.f);
    if (d.kind == LossKind::kSoftmaxCE) {
      const float ls = d.param, u = ls / float(d.d);
      if (a.labels) {
        // sum_c t_c = 1 for smoothed one-hot targets.
        ExpShift(x, d.d, lse, dxi);  // softmax
#pragma omp simd
        for (int64_t j = 0; j < d.d; ++j) dxi[j] = c * (dxi[j] - u);
        dxi[a.labels[i]] -= c * (1.f - ls);
      } else {
        const float* t = a.target + i * d.d;
        float st = 0.f;
        for (int64_t j = 0; j < d.d; ++j) st += (1.f - ls) * t[j] + u;
        ExpShift(x, d.d, lse, dxi);  // softmax
#pragma omp simd
        for (int64_t j = 0; j < d.d; ++j) dxi[j] = c * (dxi[j] * st - ((1.f - ls) * t[j] + u));
        if (dti)
          for (int64_t j = 0; j < d.d; ++j) dti[j] = c * (1.f - ls) * (lse - x[j]);
      }
      return;
    }
    const float* t = a.target + i * d.d;
    const float ce = c * inv_d;
    ElemRowGradAny(d.kind, x, t, d.d, d.param, ce, dxi, dti);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kLossFwd, LossFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("reduction")
                                  .Attr<float>("param"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kLossBwd, LossBwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("reduction")
                                  .Attr<float>("param"));

JAX_MPS_REGISTER("jax_mps_loss_fwd", "cpu", kLossFwd);
JAX_MPS_REGISTER("jax_mps_loss_bwd", "cpu", kLossBwd);

}  // namespace jax_mps::cpu
