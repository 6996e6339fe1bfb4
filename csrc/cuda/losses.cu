// Losses on CUDA: one warp per sample row. Reduced forms run in one block, which adds the rows up
// in a fixed order (deterministic, no scratch); "none" spreads rows over the grid. Codes and the
// per-element math are those of runtime/losses.h (the same ElemLoss / ElemLossGrad the CPU runs),
// and the softmax CE rows follow the CPU's NaN / inf rules (csrc/cpu/losses.cc). Integer labels
// are device data and cannot be checked on the host: an out-of-range label makes that sample's
// loss and gradients NaN.
#include "cuda/backend.h"
#include "cuda/common.cuh"
#include "cuda/reduce.cuh"

namespace jax_mps::cuda {
namespace {

template <typename T>
struct LossPtrs {
  const T* pred;
  const T* target;        // float target (N, D) or nullptr
  const int32_t* labels;  // int class ids (N,) or nullptr
  const T* weights;       // nullptr: all ones
};

// Row log-sum-exp, computed by the whole warp; NaN when the row holds NaN. A +-inf max follows
// optax as on the CPU: jax.nn.logsumexp's value (+inf, or -inf for an all -inf row) for integer
// labels without smoothing (`logsumexp_inf`), otherwise log_softmax's NaN for the whole row.
template <typename T>
__device__ float RowLse(const T* x, int64_t d, int lane, bool logsumexp_inf) {
  float m = -INFINITY;
  for (int64_t j = lane; j < d; j += 32) {
    const float v = Ld(x[j]);
    m = (v > m || v != v) ? v : m;
  }
  m = WarpMax(m);  // NaN wins
  if (m != m) return NAN;
  if (isinf(m)) return logsumexp_inf ? m : NAN;
  float s = 0.f;
  for (int64_t j = lane; j < d; j += 32) s += expf(Ld(x[j]) - m);
  return m + logf(WarpSum(s));
}

// Unweighted per-sample loss of row i (whole warp; every lane gets it). *lse in/out as on the CPU.
template <typename T>
__device__ float RowLoss(const LossDesc& d, const LossPtrs<T>& a, int64_t i, int lane, float* lse, bool have_lse) {
  const T* x = a.pred + i * d.d;
  if (d.kind == LossKind::kSoftmaxCE) {
    const float ls = d.param, u = ls / float(d.d);
    if (!have_lse) *lse = RowLse(x, d.d, lane, a.labels != nullptr && ls == 0.f);
    const float l = *lse;
    float acc = 0.f;
    if (a.labels) {
      const int32_t y = a.labels[i];
      if (y < 0 || y >= d.d) return NAN;
      acc = (1.f - ls) * (l - Ld(x[y]));
      if (ls != 0.f) {  // (never 0 * inf: an inf lse stays the loss)
        float sx = 0.f;
        for (int64_t j = lane; j < d.d; j += 32) sx += Ld(x[j]);
        acc += u * (float(d.d) * l - WarpSum(sx));
      }
      return acc;
    }
    const T* t = a.target + i * d.d;
    for (int64_t j = lane; j < d.d; j += 32) acc += ((1.f - ls) * Ld(t[j]) + u) * (l - Ld(x[j]));
    return WarpSum(acc);
  }
  const T* t = a.target + i * d.d;
  float acc = 0.f;
  for (int64_t j = lane; j < d.d; j += 32) acc += ElemLoss(d.kind, Ld(x[j]), Ld(t[j]), d.param);
  acc = WarpSum(acc);
  return d.elementwise() ? acc / float(d.d) : acc;
}

// Count of non-zero weights (or N), by the whole block.
template <typename T>
__device__ float Denominator(const LossDesc& d, const T* w) {
  if (d.reduction == Reduction::kMean || (d.reduction == Reduction::kSumByNonzeroWeights && !w)) return float(d.n);
  if (d.reduction != Reduction::kSumByNonzeroWeights) return 1.f;
  double c = 0.0;
  for (int64_t i = threadIdx.x; i < d.n; i += blockDim.x) c += Ld(w[i]) != 0.f;
  return float(BlockSum(c));
}

template <typename T>
__global__ void LossFwdK(LossDesc d, LossPtrs<T> a, T* out, float* lse_out) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  const bool none = d.reduction == Reduction::kNone;
  double acc = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); i < d.n; i += warps) {
    float lse = 0.f;
    const float v = RowLoss(d, a, i, lane, &lse, false);
    const float wv = a.weights ? Ld(a.weights[i]) * v : v;
    if (lane == 0) {
      if (lse_out) lse_out[i] = lse;
      if (none) out[i] = St<T>(wv);
      else acc += wv;
    }
  }
  if (none) return;
  const double s = BlockSum(acc);
  const float den = Denominator(d, a.weights);
  if (threadIdx.x == 0) out[0] = St<T>(den == 0.f ? 0.f : float(s / den));
}

template <typename T>
__global__ void LossBwdK(LossDesc d, LossPtrs<T> a, const float* saved, const T* g, T* dx, T* dt, T* dw) {
  const int lane = threadIdx.x & 31;
  const bool none = d.reduction == Reduction::kNone;
  const float den = none ? 1.f : Denominator(d, a.weights);
  const float gs = none ? 0.f : (den == 0.f ? 0.f : Ld(g[0]) / den);
  const float inv_d = d.elementwise() && d.d ? 1.f / float(d.d) : 1.f;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t i = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); i < d.n; i += warps) {
    const float gi = none ? Ld(g[i]) : gs;
    const float w = a.weights ? Ld(a.weights[i]) : 1.f;
    const float c = gi * w;
    const T* x = a.pred + i * d.d;
    T* dxi = dx + i * d.d;
    T* dti = dt ? dt + i * d.d : nullptr;
    float lse = saved ? saved[i] : 0.f;
    if (dw) {
      const float v = RowLoss(d, a, i, lane, &lse, saved != nullptr);
      if (lane == 0) dw[i] = St<T>(gi * v);
    } else if (d.kind == LossKind::kSoftmaxCE && !saved) {
      lse = RowLse(x, d.d, lane, a.labels != nullptr && d.param == 0.f);
    }
    if (d.kind == LossKind::kSoftmaxCE) {
      const float ls = d.param, u = ls / float(d.d);
      if (a.labels) {
        const int32_t y = a.labels[i];
        const bool ok = y >= 0 && y < d.d;
        for (int64_t j = lane; j < d.d; j += 32) {
          float v = c * (expf(Ld(x[j]) - lse) - u);  // the CPU's order: c (softmax - u), then the label
          if (j == y) v -= c * (1.f - ls);
          dxi[j] = St<T>(ok ? v : NAN);
        }
      } else {
        const T* t = a.target + i * d.d;
        float st = 0.f;
        for (int64_t j = lane; j < d.d; j += 32) st += (1.f - ls) * Ld(t[j]) + u;
        st = WarpSum(st);
        for (int64_t j = lane; j < d.d; j += 32) {
          const float tj = (1.f - ls) * Ld(t[j]) + u, xj = Ld(x[j]);
          dxi[j] = St<T>(c * (expf(xj - lse) * st - tj));
          if (dti) dti[j] = St<T>(c * (1.f - ls) * (lse - xj));
        }
      }
      continue;
    }
    const T* t = a.target + i * d.d;
    const float ce = c * inv_d;
    for (int64_t j = lane; j < d.d; j += 32) {
      const ElemGrad gr = ElemLossGrad(d.kind, Ld(x[j]), Ld(t[j]), d.param);
      dxi[j] = St<T>(ce * gr.dp);
      if (dti) dti[j] = St<T>(ce * gr.dt);
    }
  }
}

template <typename T>
LossPtrs<T> MakePtrs(const LossDesc& d, const ffi::AnyBuffer& pred, const ffi::AnyBuffer& target,
                     const ffi::AnyBuffer& weights) {
  LossPtrs<T> a{Ptr<const T>(pred), nullptr, nullptr, d.weighted ? Ptr<const T>(weights) : nullptr};
  if (d.int_labels) a.labels = Ptr<const int32_t>(target);
  else a.target = Ptr<const T>(target);
  return a;
}

unsigned RowBlocks(int64_t n) { return unsigned(std::min<int64_t>((n + 7) / 8, 132 * 16)); }

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {
using namespace cuda;  // NOLINT: the kernels above

ffi::Error Cuda::LossFwd(Cuda::Ctx s, const LossDesc& d, Buf pred, Buf target, Buf weights, Buf out, Buf lse) {
  const char* op = "loss";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, pred, {&out}));
  if (!d.int_labels) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, pred, {&target}));
  if (d.weighted) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, pred, {&weights}));
  const bool none = d.reduction == Reduction::kNone;
  const int64_t nl = lse.element_count();
  return cuda::DispatchFloat(op, pred.element_type(), [&](auto t) {
    using T = decltype(t);
    const unsigned blocks = none ? RowBlocks(d.n) : 1u;
    if (none && d.n == 0) return ffi::Error::Success();
    LossFwdK<T><<<blocks, none ? 256 : 1024, 0, s>>>(d, MakePtrs<T>(d, pred, target, weights), Ptr<T>(out),
                                                   nl ? Ptr<float>(lse) : nullptr);
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::LossBwd(Cuda::Ctx s, const LossDesc& d, Buf pred, Buf target, Buf weights, Buf lse, Buf g,
                         Buf dpred, Buf dtarget, Buf dweights) {
  const char* op = "loss_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, pred, {&g, &dpred}));
  if (!d.int_labels) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, pred, {&target}));
  if (d.weighted) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, pred, {&weights}));
  const int64_t ndt = dtarget.element_count(), ndw = dweights.element_count(), nl = lse.element_count();
  if (ndt) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, pred, {&dtarget}));
  if (ndw) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, pred, {&dweights}));
  if (d.n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, pred.element_type(), [&](auto t) {
    using T = decltype(t);
    LossBwdK<T><<<RowBlocks(d.n), 256, 0, s>>>(d, MakePtrs<T>(d, pred, target, weights),
                                            nl ? Ptr<const float>(lse) : nullptr, Ptr<const T>(g), Ptr<T>(dpred),
                                            ndt ? Ptr<T>(dtarget) : nullptr, ndw ? Ptr<T>(dweights) : nullptr);
    return LaunchStatus(op);
  });
}

}  // namespace jax_mps
