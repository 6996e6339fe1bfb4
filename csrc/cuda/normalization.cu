// Batch norm (training and inference), instance norm and local response norm on CUDA.
// x is viewed as (G, S, C) (runtime/normalization.h): statistics per (g, c) over the S rows of
// group g. Column kernels (32 channels x 8 row lanes per block, row slices across blocks) add
// their double partials into device scratch with atomics; a per-channel kernel turns the sums
// into statistics/coefficients; one element-wise pass writes y (or dx). The mean is kept in
// double so that x - mean keeps its precision under a large common offset (as on the CPU).
// Fused activations follow cuda/act.cuh; the pre-activation is recomputed where needed.
// Per-channel operands and results (parameters, statistics, their gradients) are x's dtype or
// float32: the statistics the backward reads stay float32 for half x, float32 parameters are
// used as they are.
#include "cuda/act.cuh"
#include "cuda/backend.h"
#include "cuda/common.cuh"
#include "cuda/reduce.cuh"

namespace jax_mps::cuda {
namespace {

// Where batch norm's y (forward) and y / dy (backward) live: channels [off, off + C) of rows ld
// apart (a channel slice of a concatenation's buffer; ld = C, off = 0 when dense).
struct Rows {
  int64_t ld, off;
  __device__ __forceinline__ int64_t at(int64_t e, int64_t C) const { return ld == C ? e + off : e / C * ld + off + e % C; }
};
inline Rows YRows(const NormView& v) { return {v.yld(), v.off}; }
inline Rows Dense(const NormView& v) { return {v.C, 0}; }

// A per-channel operand or result of x's dtype T or float32 (p null: a result not wanted).
template <typename T>
struct Vec {
  void* p;
  bool f32;
  __device__ __forceinline__ float operator[](int64_t i) const {
    return f32 ? static_cast<const float*>(p)[i] : Ld(static_cast<const T*>(p)[i]);
  }
  __device__ __forceinline__ void set(int64_t i, float v) const {
    if (f32)
      static_cast<float*>(p)[i] = v;
    else
      static_cast<T*>(p)[i] = St<T>(v);
  }
};
template <typename T>
Vec<T> V(ffi::AnyBuffer b) {
  return {b.untyped_data(), b.element_type() == ffi::F32};
}

ffi::Error ChanDtype(const char* op, const ffi::AnyBuffer& x, std::initializer_list<const ffi::AnyBuffer*> bs) {
  for (const ffi::AnyBuffer* b : bs)
    JAX_MPS_CHECK(b->element_type() == x.element_type() || b->element_type() == ffi::F32, op,
                  ": every per-channel operand must be ", DtypeName(x.element_type()), " like x or float32, got ",
                  DtypeName(b->element_type()));
  return ffi::Error::Success();
}

// Per-(g, c) coefficients of the element-wise passes, in scratch.
struct Coef {
  double* m;  // mean (G*C)
  float* a;   // scale * rstd (G*C)
  float* b;   // bias (G*C)
};

inline dim3 ColGrid3(const NormView& v) {
  dim3 g = ColGrid(v.S, v.C);
  g.z = unsigned(v.G);
  return g;
}

// sums[2 * (g*C + c)] += sum x, sums[... + 1] += sum x^2 (double).
template <typename T>
__global__ void StatsK(int64_t S, int64_t C, const T* x, double* sums) {
  const int64_t c = int64_t(blockIdx.x) * kColX + threadIdx.x, g = blockIdx.z;
  double s = 0.0, ss = 0.0;
  if (c < C)
    for (int64_t r = int64_t(blockIdx.y) * kColY + threadIdx.y; r < S; r += int64_t(gridDim.y) * kColY) {
      const double v = Ld(x[(g * S + r) * C + c]);
      s += v;
      ss += v * v;
    }
  ColFlush(s, sums, 2 * (g * C + c), 2 * (g * C + C));
  ColFlush(ss, sums, 2 * (g * C + c) + 1, 2 * (g * C + C));
}

// From the sums: mean / var / rstd outputs (nullptr: not wanted) and the forward coefficients.
template <typename T>
__global__ void FinishStatsK(int64_t G, int64_t S, int64_t C, float eps, const double* sums, Vec<T> scale,
                             Vec<T> bias, Vec<T> mean_out, Vec<T> var_out, Vec<T> rstd_out, Coef k) {
  JAX_MPS_GRID_STRIDE(i, G * C) {
    const int64_t c = i % C;
    const double m = sums[2 * i] / double(S);
    double var = sums[2 * i + 1] / double(S) - m * m;
    if (var < 0.0) var = 0.0;
    const double r = 1.0 / sqrt(var + double(eps));
    if (mean_out.p) mean_out.set(i, float(m));
    if (var_out.p) var_out.set(i, float(var));
    if (rstd_out.p) rstd_out.set(i, float(r));
    k.m[i] = m;
    k.a[i] = float(double(scale[c]) * r);
    k.b[i] = bias[c];
  }
}

// Inference: coefficients from the given statistics.
template <typename T>
__global__ void GivenStatsK(int64_t C, float eps, Vec<T> scale, Vec<T> bias, Vec<T> mean, Vec<T> var, Coef k) {
  JAX_MPS_GRID_STRIDE(c, C) {
    const double r = 1.0 / sqrt(double(var[c]) + double(eps));
    k.m[c] = mean[c];
    k.a[c] = float(double(scale[c]) * r);
    k.b[c] = bias[c];
  }
}

// y = act((x - m) * a + b), per (g, c).
template <typename T>
__global__ void AffineK(int64_t G, int64_t S, int64_t C, Act act, float alpha, const T* x, Coef k, T* y, Rows yr) {
  JAX_MPS_GRID_STRIDE(e, G * S * C) {
    const int64_t gc = (e / (S * C)) * C + e % C;
    const float z = float(double(Ld(x[e])) - k.m[gc]) * k.a[gc] + k.b[gc];
    y[yr.at(e, C)] = St<T>(ActF(act, alpha, z));
  }
}

// The gradient w.r.t. the pre-activation z at element e of x, ey of dy and y (z recomputed from
// x unless from_output).
template <typename T>
__device__ __forceinline__ float Dz(int64_t e, int64_t ey, int64_t gc, Act act, float alpha, bool from_output,
                                    const T* x, const T* s, const T* dy, const Coef& k) {
  const float g = Ld(dy[ey]);
  if (act == Act::kNone) return g;
  if (from_output) return ActGFromOutput(act, alpha, Ld(s[ey]), g);
  const float z = float(double(Ld(x[e])) - k.m[gc]) * k.a[gc] + k.b[gc];
  return ActG(act, alpha, z, g);
}

// sums[2 * gc] += sum dz, sums[2 * gc + 1] += sum dz * (x - m).
template <typename T>
__global__ void GradSumsK(int64_t S, int64_t C, Act act, float alpha, bool from_output, const T* x, const T* s,
                          const T* dy, Rows yr, Coef k, double* sums) {
  const int64_t c = int64_t(blockIdx.x) * kColX + threadIdx.x, g = blockIdx.z, gc = g * C + c;
  double sd = 0.0, sdx = 0.0;
  if (c < C)
    for (int64_t r = int64_t(blockIdx.y) * kColY + threadIdx.y; r < S; r += int64_t(gridDim.y) * kColY) {
      const int64_t e = (g * S + r) * C + c;
      const double dz = Dz(e, (g * S + r) * yr.ld + yr.off + c, gc, act, alpha, from_output, x, s, dy, k);
      sd += dz;
      sdx += dz * (double(Ld(x[e])) - k.m[gc]);
    }
  ColFlush(sd, sums, 2 * gc, 2 * (g * C + C));
  ColFlush(sdx, sums, 2 * gc + 1, 2 * (g * C + C));
}

// dx = a * dz + gb * (x - m) + gd, with a = scale * rstd (the forward's coefficient). Inference
// passes gb = gd = nullptr: dx = a * dz alone, so a NaN x whose dz is 0 (relu) gives 0, as in jax.
template <typename T>
__global__ void GradInputK(int64_t G, int64_t S, int64_t C, Act act, float alpha, bool from_output, const T* x,
                           const T* s, const T* dy, Rows yr, Coef k, const float* gb, const float* gd, T* dx) {
  JAX_MPS_GRID_STRIDE(e, G * S * C) {
    const int64_t gc = (e / (S * C)) * C + e % C;
    const float dz = Dz(e, yr.at(e, C), gc, act, alpha, from_output, x, s, dy, k);
    float g = k.a[gc] * dz;
    if (gb) g += gb[gc] * float(double(Ld(x[e])) - k.m[gc]) + gd[gc];
    dx[e] = St<T>(g);
  }
}

// Batch-norm training backward coefficients (exact paths through the mean and var outputs).
template <typename T>
__global__ void BnBwdCoefK(int64_t C, double M, const double* sums, Vec<T> scale, Vec<T> rstd, Vec<T> dmean,
                           Vec<T> dvar, float* gb, float* gd, Vec<T> dscale, Vec<T> dbias) {
  JAX_MPS_GRID_STRIDE(c, C) {
    const double r = rstd[c], g = scale[c], sdz = sums[2 * c], sdzx = sums[2 * c + 1];
    dbias.set(c, float(sdz));
    dscale.set(c, float(r * sdzx));
    gb[c] = float((-g * r * r * r * sdzx + 2.0 * double(dvar[c])) / M);
    gd[c] = float((-g * r * sdz + double(dmean[c])) / M);
  }
}

template <typename T>
__global__ void BniBwdCoefK(int64_t C, float eps, const double* sums, Vec<T> scale, Vec<T> var, Vec<T> dscale,
                            Vec<T> dbias, Vec<T> dmean, Vec<T> dvar) {
  JAX_MPS_GRID_STRIDE(c, C) {
    const double r = 1.0 / sqrt(double(var[c]) + double(eps)), g = scale[c];
    const double sdz = sums[2 * c], sdzx = sums[2 * c + 1];
    dbias.set(c, float(sdz));
    dscale.set(c, float(r * sdzx));
    dmean.set(c, float(-g * r * sdz));
    dvar.set(c, float(-0.5 * g * r * r * r * sdzx));
  }
}

// Instance norm backward: per-(g, c) coefficients, and dscale / dbias summed over g in order.
template <typename T>
__global__ void InBwdCoefK(int64_t G, int64_t C, double S, const double* sums, Vec<T> scale, Vec<T> rstd,
                           float* gb, float* gd, Vec<T> dscale, Vec<T> dbias) {
  JAX_MPS_GRID_STRIDE(c, C) {
    const double g = scale[c];
    double ds = 0.0, db = 0.0;
    for (int64_t n = 0; n < G; ++n) {
      const int64_t i = n * C + c;
      const double r = rstd[i], sdz = sums[2 * i], sdzx = sums[2 * i + 1];
      ds += r * sdzx;
      db += sdz;
      gb[i] = float(-g * r * r * r * sdzx / S);
      gd[i] = float(-g * r * sdz / S);
    }
    dscale.set(c, float(ds));
    dbias.set(c, float(db));
  }
}

// Instance norm: coefficients from the saved per-(g, c) mean and rstd.
template <typename T>
__global__ void SavedStatsK(int64_t G, int64_t C, Vec<T> scale, Vec<T> mean, Vec<T> rstd, Coef k) {
  JAX_MPS_GRID_STRIDE(i, G * C) {
    k.m[i] = mean[i];
    k.a[i] = scale[i % C] * rstd[i];
    k.b[i] = 0.f;
  }
}

// Batch norm backward: coefficients from the saved mean and rstd.
template <typename T>
__global__ void SavedBnStatsK(int64_t C, Vec<T> scale, Vec<T> bias, Vec<T> mean, Vec<T> rstd, Coef k) {
  JAX_MPS_GRID_STRIDE(c, C) {
    k.m[c] = mean[c];
    k.a[c] = scale[c] * rstd[c];
    k.b[c] = bias[c];
  }
}

// Scratch for G*C statistics: coefficients, the gradient pass's b/d and 2*G*C double sums.
struct Work {
  Coef k;
  float* gb;
  float* gd;
  double* sums;
};

ffi::Error MakeWork(const Ctx& ctx, const char* op, int64_t stats, Work* w) {
  const size_t n = size_t(stats);
  ffi::Error err;
  char* p = static_cast<char*>(Workspace(ctx, n * (2 * 8 + 8 + 4 * 4), op, &err));  // sums, m, a, b, gb, gd
  if (!p) return err;
  w->sums = reinterpret_cast<double*>(p);
  w->k.m = w->sums + 2 * n;
  float* f = reinterpret_cast<float*>(w->k.m + n);
  w->k.a = f;
  w->k.b = f + n;
  w->gb = f + 2 * n;
  w->gd = f + 3 * n;
  JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(w->sums, 0, 2 * n * sizeof(double), ctx.stream));
  return ffi::Error::Success();
}

// The batch-norm backward passes (training and inference) around their coefficient kernel:
// per-channel sums of dz and dz * x (GradSumsK), then `coef` (turns them into w.gb / w.gd and
// writes the parameter gradients), then dx (through the statistics unless `inference`).
template <typename T, typename CoefPass>
void BnGradients(cudaStream_t s, const NormView& v, ffi::AnyBuffer x, ffi::AnyBuffer sy, ffi::AnyBuffer dy,
                 const Work& w, ffi::AnyBuffer dx, bool inference, CoefPass&& coef) {
  GradSumsK<T><<<ColGrid3(v), dim3(kColX, kColY), 0, s>>>(v.S, v.C, v.act, v.alpha, v.from_output, Ptr<const T>(x),
                                                          Ptr<const T>(sy), Ptr<const T>(dy), YRows(v), w.k,
                                                          w.sums);
  coef();
  GradInputK<T><<<Blocks(x.element_count()), 256, 0, s>>>(1, v.S, v.C, v.act, v.alpha, v.from_output,
                                                          Ptr<const T>(x), Ptr<const T>(sy), Ptr<const T>(dy),
                                                          YRows(v), w.k, inference ? nullptr : w.gb, w.gd,
                                                          Ptr<T>(dx));
}

// ---- local response norm across the last axis (one thread per element; windows are short) ----
// Each window is summed directly, never as a running sum, which would carry an inf / NaN or huge
// channel (inf - inf, cancellation) into every later channel of the row.
// y_c = x_c * s_c^-beta, s_c = k + alpha/size * sum_{|c'-c| <= size/2} x_c'^2.
// dx_j = dy_j s_j^-beta - 2 alpha beta / size * x_j * sum_{|c-j| <= size/2} dy_c x_c s_c^(-beta-1).

template <typename T>
__device__ __forceinline__ float LrnS(const T* row, int64_t c, int64_t C, int64_t h, double coef, float k) {
  double acc = 0.0;
  const int64_t lo = c - h > 0 ? c - h : 0, hi = c + h < C - 1 ? c + h : C - 1;
  for (int64_t q = lo; q <= hi; ++q) {
    const double v = Ld(row[q]);
    acc += v * v;
  }
  return float(double(k) + coef * acc);
}

template <typename T>
__global__ void LrnFwdK(int64_t n, int64_t C, int64_t h, double coef, float beta, float k, const T* x, T* y) {
  JAX_MPS_GRID_STRIDE(e, n) {
    const int64_t c = e % C;
    const T* row = x + (e - c);
    y[e] = St<T>(Ld(x[e]) * powf(LrnS(row, c, C, h, coef, k), -beta));
  }
}

template <typename T>
__global__ void LrnBwdK(int64_t n, int64_t C, int64_t h, double coef, float beta, float k, const T* x, const T* dy,
                        T* dx) {
  JAX_MPS_GRID_STRIDE(e, n) {
    const int64_t j = e % C;
    const T* row = x + (e - j);
    const T* grow = dy + (e - j);
    const float sj = LrnS(row, j, C, h, coef, k);
    double acc = 0.0;
    const int64_t lo = j - h > 0 ? j - h : 0, hi = j + h < C - 1 ? j + h : C - 1;
    for (int64_t c = lo; c <= hi; ++c) {
      const float sc = LrnS(row, c, C, h, coef, k);
      acc += double(Ld(grow[c])) * Ld(row[c]) * powf(sc, -beta) / sc;
    }
    dx[e] = St<T>(float(Ld(grow[j]) * powf(sj, -beta) - 2.0 * coef * beta * Ld(row[j]) * acc));
  }
}

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {
using namespace cuda;  // NOLINT: the kernels above

ffi::Error Cuda::BatchNormFwd(Cuda::Ctx s, const NormView& v, Buf x, Buf scale, Buf bias, Buf y, Buf mean, Buf var,
                              Buf rstd) {
  const char* op = "batch_norm";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  JAX_MPS_RETURN_IF_ERROR(ChanDtype(op, x, {&scale, &bias, &mean, &var, &rstd}));
  Work w;
  JAX_MPS_RETURN_IF_ERROR(MakeWork(s, op, v.C, &w));
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    StatsK<T><<<ColGrid3(v), dim3(kColX, kColY), 0, s>>>(v.S, v.C, Ptr<const T>(x), w.sums);
    FinishStatsK<T><<<Blocks(v.C), 256, 0, s>>>(1, v.S, v.C, v.eps, w.sums, V<T>(scale), V<T>(bias), V<T>(mean),
                                               V<T>(var), V<T>(rstd), w.k);
    AffineK<T><<<Blocks(x.element_count()), 256, 0, s>>>(1, v.S, v.C, v.act, v.alpha, Ptr<const T>(x), w.k, Ptr<T>(y),
                                                         YRows(v));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::BatchNormBwd(Cuda::Ctx s, const NormView& v, Buf x, Buf scale, Buf bias, Buf mean, Buf rstd, Buf sy,
                              Buf dy, Buf dmean, Buf dvar, Buf dx, Buf dscale, Buf dbias) {
  const char* op = "batch_norm_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&sy, &dy, &dx}));
  JAX_MPS_RETURN_IF_ERROR(ChanDtype(op, x, {&scale, &bias, &mean, &rstd, &dmean, &dvar, &dscale, &dbias}));
  Work w;
  JAX_MPS_RETURN_IF_ERROR(MakeWork(s, op, v.C, &w));
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    SavedBnStatsK<T><<<Blocks(v.C), 256, 0, s>>>(v.C, V<T>(scale), V<T>(bias), V<T>(mean), V<T>(rstd), w.k);
    BnGradients<T>(s, v, x, sy, dy, w, dx, false, [&] {
      BnBwdCoefK<T><<<Blocks(v.C), 256, 0, s>>>(v.C, double(v.S), w.sums, V<T>(scale), V<T>(rstd), V<T>(dmean),
                                               V<T>(dvar), w.gb, w.gd, V<T>(dscale), V<T>(dbias));
    });
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::BatchNormInferenceFwd(Cuda::Ctx s, const NormView& v, Buf x, Buf scale, Buf bias, Buf mean, Buf var,
                                       Buf y) {
  const char* op = "batch_norm_inference";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  JAX_MPS_RETURN_IF_ERROR(ChanDtype(op, x, {&scale, &bias, &mean, &var}));
  Work w;
  JAX_MPS_RETURN_IF_ERROR(MakeWork(s, op, v.C, &w));
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    GivenStatsK<T><<<Blocks(v.C), 256, 0, s>>>(v.C, v.eps, V<T>(scale), V<T>(bias), V<T>(mean), V<T>(var), w.k);
    AffineK<T><<<Blocks(x.element_count()), 256, 0, s>>>(1, v.S, v.C, v.act, v.alpha, Ptr<const T>(x), w.k, Ptr<T>(y),
                                                         YRows(v));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::BatchNormInferenceBwd(Cuda::Ctx s, const NormView& v, Buf x, Buf scale, Buf bias, Buf mean, Buf var,
                                       Buf sy, Buf dy, Buf dx, Buf dscale, Buf dbias, Buf dmean, Buf dvar) {
  const char* op = "batch_norm_inference_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&sy, &dy, &dx}));
  JAX_MPS_RETURN_IF_ERROR(ChanDtype(op, x, {&scale, &bias, &mean, &var, &dscale, &dbias, &dmean, &dvar}));
  Work w;
  JAX_MPS_RETURN_IF_ERROR(MakeWork(s, op, v.C, &w));
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    GivenStatsK<T><<<Blocks(v.C), 256, 0, s>>>(v.C, v.eps, V<T>(scale), V<T>(bias), V<T>(mean), V<T>(var), w.k);
    BnGradients<T>(s, v, x, sy, dy, w, dx, true, [&] {
      BniBwdCoefK<T><<<Blocks(v.C), 256, 0, s>>>(v.C, v.eps, w.sums, V<T>(scale), V<T>(var), V<T>(dscale),
                                                V<T>(dbias), V<T>(dmean), V<T>(dvar));
    });
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::InstanceNormFwd(Cuda::Ctx s, const NormView& v, Buf x, Buf scale, Buf bias, Buf y, Buf mean,
                                 Buf rstd) {
  const char* op = "instance_norm";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  JAX_MPS_RETURN_IF_ERROR(ChanDtype(op, x, {&scale, &bias, &mean, &rstd}));
  if (v.stats() == 0) return ffi::Error::Success();
  Work w;
  JAX_MPS_RETURN_IF_ERROR(MakeWork(s, op, v.stats(), &w));
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    StatsK<T><<<ColGrid3(v), dim3(kColX, kColY), 0, s>>>(v.S, v.C, Ptr<const T>(x), w.sums);
    FinishStatsK<T><<<Blocks(v.stats()), 256, 0, s>>>(v.G, v.S, v.C, v.eps, w.sums, V<T>(scale), V<T>(bias),
                                                     V<T>(mean), Vec<T>{nullptr, false}, V<T>(rstd), w.k);
    AffineK<T><<<Blocks(x.element_count()), 256, 0, s>>>(v.G, v.S, v.C, Act::kNone, 0.f, Ptr<const T>(x), w.k,
                                                         Ptr<T>(y), Dense(v));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::InstanceNormBwd(Cuda::Ctx s, const NormView& v, Buf x, Buf scale, Buf mean, Buf rstd, Buf dy, Buf dx,
                                 Buf dscale, Buf dbias) {
  const char* op = "instance_norm_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&dy, &dx}));
  JAX_MPS_RETURN_IF_ERROR(ChanDtype(op, x, {&scale, &mean, &rstd, &dscale, &dbias}));
  if (v.C == 0) return ffi::Error::Success();
  Work w;
  JAX_MPS_RETURN_IF_ERROR(MakeWork(s, op, std::max<int64_t>(v.stats(), 1), &w));
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    SavedStatsK<T><<<Blocks(v.stats()), 256, 0, s>>>(v.G, v.C, V<T>(scale), V<T>(mean), V<T>(rstd), w.k);
    if (v.G > 0)
      GradSumsK<T><<<ColGrid3(v), dim3(kColX, kColY), 0, s>>>(v.S, v.C, Act::kNone, 0.f, false, Ptr<const T>(x),
                                                              nullptr, Ptr<const T>(dy), Dense(v), w.k, w.sums);
    InBwdCoefK<T><<<Blocks(v.C), 256, 0, s>>>(v.G, v.C, double(v.S), w.sums, V<T>(scale), V<T>(rstd), w.gb, w.gd,
                                             V<T>(dscale), V<T>(dbias));
    if (x.element_count() > 0)
      GradInputK<T><<<Blocks(x.element_count()), 256, 0, s>>>(v.G, v.S, v.C, Act::kNone, 0.f, false, Ptr<const T>(x),
                                                              nullptr, Ptr<const T>(dy), Dense(v), w.k, w.gb, w.gd,
                                                              Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::LrnFwd(Cuda::Ctx s, const LrnDesc& p, Buf x, Buf y) {
  const char* op = "local_response_norm";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  const int64_t n = p.rows * p.C;
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    LrnFwdK<T><<<Blocks(n), 256, 0, s>>>(n, p.C, p.half, double(p.alpha) / double(p.size), p.beta, p.k,
                                        Ptr<const T>(x), Ptr<T>(y));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::LrnBwd(Cuda::Ctx s, const LrnDesc& p, Buf x, Buf dy, Buf dx) {
  const char* op = "local_response_norm_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&dy, &dx}));
  const int64_t n = p.rows * p.C;
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    LrnBwdK<T><<<Blocks(n), 256, 0, s>>>(n, p.C, p.half, double(p.alpha) / double(p.size), p.beta, p.k,
                                        Ptr<const T>(x), Ptr<const T>(dy), Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

}  // namespace jax_mps
