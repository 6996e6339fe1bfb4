// Losses on the CPU: one fused kernel computes the per-sample losses and the reduction, one fused
// kernel computes every gradient (recomputing the per-sample values: cheaper than saving them).
#include <cmath>
#include <vector>

#include "runtime/losses.h"
#include "runtime/registry.h"

namespace jax_mps::cpu {
namespace {

constexpr int64_t kParallelMin = 32768;  // elements below which threads cost more than they save

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

// log-sum-exp of one row.
inline float Lse(const float* x, int64_t c) {
  float m = -INFINITY;
  for (int64_t j = 0; j < c; ++j) m = std::fmax(m, x[j]);
  if (std::isinf(m)) return m;
  float s = 0.f;
  for (int64_t j = 0; j < c; ++j) s += std::exp(x[j] - m);
  return m + std::log(s);
}

// Unweighted per-sample loss of row i; `lse` receives the row's log-sum-exp (softmax CE only).
inline float RowLoss(const LossArgs& a, int64_t i, float* lse) {
  const LossDesc& d = a.desc;
  const float* x = a.pred + i * d.d;
  if (d.kind == LossKind::kSoftmaxCE) {
    const float ls = d.param, u = ls / float(d.d);
    float l = Lse(x, d.d);
    *lse = l;
    float acc = 0.f;
    if (a.labels) {
      float sx = 0.f;
      if (ls != 0.f)
        for (int64_t j = 0; j < d.d; ++j) sx += x[j];
      acc = (1.f - ls) * (l - x[a.labels[i]]) + u * (float(d.d) * l - sx);
    } else {
      const float* t = a.target + i * d.d;
      for (int64_t j = 0; j < d.d; ++j) acc += ((1.f - ls) * t[j] + u) * (l - x[j]);
    }
    return acc;
  }
  const float* t = a.target + i * d.d;
  double acc = 0.0;
  for (int64_t j = 0; j < d.d; ++j) acc += ElemLoss(d.kind, x[j], t[j], d.param);
  if (d.elementwise()) acc /= double(d.d);
  return static_cast<float>(acc);
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

ffi::Error LossFwd(ffi::Buffer<ffi::F32> pred, ffi::AnyBuffer target, ffi::Buffer<ffi::F32> weights,
                   ffi::ResultBuffer<ffi::F32> out, int64_t kind, int64_t reduction, float param) {
  LossArgs a;
  JAX_MPS_RETURN_IF_ERROR(Decode(pred, target, weights, kind, reduction, param, &a));
  const LossDesc& d = a.desc;
  const bool none = d.reduction == Reduction::kNone;
  JAX_MPS_CHECK(static_cast<int64_t>(out->element_count()) == (none ? d.n : 1), "loss: output must have ",
                none ? d.n : 1, " elements, got ", out->element_count());
  thread_local std::vector<float> scratch;
  float* l = out->typed_data();
  if (!none) {
    scratch.resize(d.n);
    l = scratch.data();
  }
#pragma omp parallel for if (d.n * d.d > kParallelMin)
  for (int64_t i = 0; i < d.n; ++i) {
    float lse;
    float v = RowLoss(a, i, &lse);
    l[i] = a.weights ? a.weights[i] * v : v;
  }
  if (none) return ffi::Error::Success();
  double s = 0.0;
  for (int64_t i = 0; i < d.n; ++i) s += l[i];
  double den = Denominator(a);
  out->typed_data()[0] = den == 0.0 ? 0.f : static_cast<float>(s / den);
  return ffi::Error::Success();
}

// g: (N,) for reduction none, (1,) otherwise. dtarget: (N, D) for a float target, else (N, 0);
// dweights: (N,) when weighted, else (0,).
ffi::Error LossBwd(ffi::Buffer<ffi::F32> pred, ffi::AnyBuffer target, ffi::Buffer<ffi::F32> weights,
                   ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dpred, ffi::ResultBuffer<ffi::F32> dtarget,
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
  const float* gp = g.typed_data();
  float* dx = dpred->typed_data();
  float* dt = ndt ? dtarget->typed_data() : nullptr;
  float* dw = ndw ? dweights->typed_data() : nullptr;
  const double den = none ? 1.0 : Denominator(a);
  // d(out)/d(l_i) for a unit weight; 0 when the reduced value was defined as 0.
  const float gs = none ? 0.f : (den == 0.0 ? 0.f : static_cast<float>(gp[0] / den));
  const float inv_d = d.elementwise() && d.d ? 1.f / float(d.d) : 1.f;
#pragma omp parallel for if (d.n * d.d > kParallelMin)
  for (int64_t i = 0; i < d.n; ++i) {
    const float gi = none ? gp[i] : gs;
    const float w = a.weights ? a.weights[i] : 1.f;
    const float c = gi * w;  // cotangent of the unweighted per-sample loss
    const float* x = a.pred + i * d.d;
    float* dxi = dx + i * d.d;
    float* dti = dt ? dt + i * d.d : nullptr;
    float lse = 0.f;
    if (dw) dw[i] = gi * RowLoss(a, i, &lse);
    else if (d.kind == LossKind::kSoftmaxCE) lse = Lse(x, d.d);
    if (d.kind == LossKind::kSoftmaxCE) {
      const float ls = d.param, u = ls / float(d.d);
      if (a.labels) {
        // sum_c t_c = 1 for smoothed one-hot targets.
        for (int64_t j = 0; j < d.d; ++j) dxi[j] = c * (std::exp(x[j] - lse) - u);
        dxi[a.labels[i]] -= c * (1.f - ls);
      } else {
        const float* t = a.target + i * d.d;
        float st = 0.f;
        for (int64_t j = 0; j < d.d; ++j) st += (1.f - ls) * t[j] + u;
        for (int64_t j = 0; j < d.d; ++j) dxi[j] = c * (std::exp(x[j] - lse) * st - ((1.f - ls) * t[j] + u));
        if (dti)
          for (int64_t j = 0; j < d.d; ++j) dti[j] = c * (1.f - ls) * (lse - x[j]);
      }
      continue;
    }
    const float* t = a.target + i * d.d;
    const float ce = c * inv_d;
    for (int64_t j = 0; j < d.d; ++j) {
      ElemGrad eg = ElemLossGrad(d.kind, x[j], t[j], d.param);
      dxi[j] = ce * eg.dp;
      if (dti) dti[j] = ce * eg.dt;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kLossFwd, LossFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
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
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("reduction")
                                  .Attr<float>("param"));

JAX_MPS_REGISTER("jax_mps_loss_fwd", "cpu", kLossFwd);
JAX_MPS_REGISTER("jax_mps_loss_bwd", "cpu", kLossBwd);

}  // namespace jax_mps::cpu
