// Losses on the CPU: one fused kernel computes the per-sample losses and the reduction, one fused
// kernel computes every gradient (recomputing per-sample values; softmax CE reuses the row log-sum-exps).
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/backend.h"
#include "cpu/f32.h"
#include "cpu/kernel_util.h"
#include "cpu/vec512.h"

namespace jax_mps::cpu {
namespace {

struct LossArgs {
  LossDesc desc;
  const float* pred;
  const float* target = nullptr;   // float target (N, D)
  const int32_t* labels = nullptr;  // int class ids (N,)
  const float* weights = nullptr;   // nullptr: all ones
};

// Float views of the operands (converted when float16 / bfloat16) and the label range check:
// the runtime checks shapes only, label values are checked here where they are read.
struct LossViews {
  F32In pred, weights, target;  // target: none for integer labels
  LossViews(const ffi::AnyBuffer& p, const ffi::AnyBuffer& t, const ffi::AnyBuffer& w, bool int_labels)
      : pred(p), weights(w) {
    if (!int_labels) target.Load(t);
  }
};

ffi::Error Bind(const LossDesc& desc, const LossViews& v, const ffi::AnyBuffer& target, LossArgs* a) {
  a->desc = desc;
  a->pred = v.pred.get();
  if (desc.int_labels) {
    a->labels = static_cast<const int32_t*>(target.untyped_data());
    for (int64_t i = 0; i < desc.n; ++i)
      JAX_MPS_CHECK(a->labels[i] >= 0 && a->labels[i] < desc.d, "softmax_cross_entropy: label ", a->labels[i],
                    " at sample ", i, " is out of range [0, ", desc.d, ")");
  } else {
    a->target = v.target.get();
  }
  if (desc.weighted) a->weights = v.weights.get();
  return ffi::Error::Success();
}

#if defined(__x86_64__)
// ExpShift of a row of at most 16 classes as one masked AVX-512 vector: the generic loop runs
// such rows in its scalar remainder (an activity model's 7 classes: ~80 ns a row for the loss).
// For finite shifts not below the row's max (log-sum-exps), so exp's argument is <= 0.
JAX_MPS_AVX512 float ExpShiftRow512(const float* x, int64_t c, float shift, float* out) {
  const __mmask16 k = __mmask16((1u << c) - 1);
  const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x), _mm512_set1_ps(shift));
  const __m512 e = _mm512_maskz_mov_ps(k, KeepNan512(ExpNonPos512(d), d));
  if (out) _mm512_mask_storeu_ps(out, k, e);
  return _mm512_reduce_add_ps(e);
}
#endif

// out[j] = exp(x[j] - shift) (FastExp: vectorises, NaN stays NaN); returns the sum of out (out
// may be null: sum only).
JAX_MPS_CLONES float ExpShift(const float* x, int64_t c, float shift, float* out) {
#if defined(__x86_64__)
  if (c <= 16 && std::isfinite(shift) && HasAvx512()) return ExpShiftRow512(x, c, shift, out);
#endif
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

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

ffi::Error Cpu::LossFwd(Ctx, const LossDesc& desc, Buf pred, Buf target, Buf weights, Buf out, Buf lse_out) {
  LossViews views(pred, target, weights, desc.int_labels);
  LossArgs a;
  JAX_MPS_RETURN_IF_ERROR(Bind(desc, views, target, &a));
  const LossDesc& d = a.desc;
  const bool none = d.reduction == Reduction::kNone;
  F32Out outf(out);
  float* lse_p = lse_out.element_count() ? static_cast<float*>(lse_out.untyped_data()) : nullptr;
  thread_local ScratchBuffer<float> scratch;
  float* l = none ? outf.get() : scratch.get(d.n);
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
  outf.get()[0] = den == 0.0 ? 0.f : static_cast<float>(s / den);
  return ffi::Error::Success();
}

ffi::Error Cpu::LossBwd(Ctx, const LossDesc& desc, Buf pred, Buf target, Buf weights, Buf lse_in, Buf g, Buf dpred,
                        Buf dtarget, Buf dweights) {
  LossViews views(pred, target, weights, desc.int_labels);
  LossArgs a;
  JAX_MPS_RETURN_IF_ERROR(Bind(desc, views, target, &a));
  const LossDesc& d = a.desc;
  const bool none = d.reduction == Reduction::kNone;
  F32In gf(g);
  F32Out dxf(dpred), dtf(dtarget), dwf(dweights);
  const float* saved = lse_in.element_count() ? static_cast<const float*>(lse_in.untyped_data()) : nullptr;
  const float* gp = gf.get();
  float* dx = dxf.get();
  float* dt = dtarget.element_count() ? dtf.get() : nullptr;
  float* dw = dweights.element_count() ? dwf.get() : nullptr;
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

}  // namespace jax_mps
