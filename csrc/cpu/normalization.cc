// Batch norm (training and inference), instance norm and local response norm on the CPU.
// Own kernels over an (G, S, C) view of x (channels last, contiguous): per-(g, c) statistics over
// the S rows of group g. Memory-bound, so every pass streams x once:
// - mean/var: rows are taken in cache-sized blocks; each block gets an exact two-pass float
//   mean/M2 (the block is re-read from cache), blocks and thread chunks merge in double (Chan).
// - gradient sums: per block in float, accumulated in double.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/eltwise.h"
#include "runtime/normalization.h"
#include "runtime/registry.h"

namespace jax_mps::cpu {
namespace {

constexpr int64_t kTile = 256;           // channels per tile (block accumulators live on the stack)
constexpr int64_t kBlockElems = 16384;   // elements of one row block (64 KiB: stays in L2)
constexpr int64_t kMaxBlockRows = 256;   // float block sums stay short (accuracy)
constexpr int64_t kParMin = 1 << 15;     // elements below which one thread does it all
constexpr int64_t kChunkMin = 1 << 13;   // least elements per parallel chunk

int Threads(int64_t elems) { return elems < kParMin ? 1 : omp_get_max_threads(); }

// Row chunks per group so that G * K tasks keep every thread busy.
int64_t ChunksPerGroup(const NormView& v) {
  const int nt = Threads(v.rows() * v.C);
  if (nt <= 1 || v.G >= nt) return 1;
  int64_t k = (2 * nt + v.G - 1) / v.G;
  k = std::min(k, std::max<int64_t>(1, v.S * v.C / kChunkMin));
  return std::max<int64_t>(1, std::min(k, v.S));
}

int64_t BlockRows(int64_t ct) { return std::clamp<int64_t>(kBlockElems / ct, 1, kMaxBlockRows); }

// Mean and M2 (sum of squared deviations) per channel over rows [s0, s1) of x (row stride C).
void ChunkMeanM2(const float* __restrict x, int64_t C, int64_t s0, int64_t s1, double* mean, double* m2) {
  float bs[kTile], bd[kTile], bq[kTile];
  for (int64_t c0 = 0; c0 < C; c0 += kTile) {
    const int64_t ct = std::min(kTile, C - c0), B = BlockRows(ct);
    double* mu = mean + c0;
    double* q = m2 + c0;
    std::fill(mu, mu + ct, 0.0);
    std::fill(q, q + ct, 0.0);
    double n = 0;
    for (int64_t r0 = s0; r0 < s1; r0 += B) {
      const int64_t nb = std::min(B, s1 - r0);
      std::fill(bs, bs + ct, 0.f);
      for (int64_t r = r0; r < r0 + nb; ++r) {
        const float* xr = x + r * C + c0;
        for (int64_t c = 0; c < ct; ++c) bs[c] += xr[c];
      }
      const float inv = 1.f / static_cast<float>(nb);
      for (int64_t c = 0; c < ct; ++c) bs[c] *= inv;
      // Second pass around the float block mean m' (block is in cache), corrected for the
      // rounding of m': mean = m' + sum(d)/nb, M2 = sum(d^2) - sum(d)^2/nb with d = x - m'.
      std::fill(bd, bd + ct, 0.f);
      std::fill(bq, bq + ct, 0.f);
      for (int64_t r = r0; r < r0 + nb; ++r) {
        const float* xr = x + r * C + c0;
        for (int64_t c = 0; c < ct; ++c) {
          const float d = xr[c] - bs[c];
          bd[c] += d;
          bq[c] += d * d;
        }
      }
      const double nn = n + nb, wa = nb / nn, wb = n * nb / nn;
      for (int64_t c = 0; c < ct; ++c) {
        const double sd = bd[c], bm = bs[c] + sd / nb;
        const double delta = bm - mu[c];
        mu[c] += delta * wa;
        q[c] += std::max(0.0, bq[c] - sd * sd / nb) + delta * delta * wb;
      }
      n = nn;
    }
  }
}

// Per-(g, c) mean and biased variance of x viewed as (G, S, C), in double.
void MeanVar(const float* x, const NormView& v, std::vector<double>& mean, std::vector<double>& var) {
  const int64_t K = ChunksPerGroup(v), T = v.G * K, C = v.C;
  std::vector<double> pm(T * C), pq(T * C);
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t g = t / K, k = t % K;
    ChunkMeanM2(x + g * v.S * C, C, v.S * k / K, v.S * (k + 1) / K, &pm[t * C], &pq[t * C]);
  }
  mean.assign(v.stats(), 0.0);
  var.assign(v.stats(), 0.0);
  for (int64_t g = 0; g < v.G; ++g) {
    double n = 0;
    double* mu = &mean[g * C];
    double* q = &var[g * C];
    for (int64_t k = 0; k < K; ++k) {
      const double nb = static_cast<double>(v.S * (k + 1) / K - v.S * k / K);
      if (nb == 0) continue;
      const double nn = n + nb, wa = nb / nn, wb = n * nb / nn;
      const double* bm = &pm[(g * K + k) * C];
      const double* bq = &pq[(g * K + k) * C];
      for (int64_t c = 0; c < C; ++c) {
        const double delta = bm[c] - mu[c];
        mu[c] += delta * wa;
        q[c] += bq[c] + delta * delta * wb;
      }
      n = nn;
    }
    for (int64_t c = 0; c < C; ++c) q[c] /= static_cast<double>(v.S);
  }
}

// The gradient w.r.t. the pre-activation z: dz, or (fused ReLU) dz = mask > 0 ? dz : 0 with
// mask = y, so that BN + ReLU costs no extra pass over memory.
struct PreGrad {
  const float* dz;
  const float* mask;  // nullptr: none
};

template <bool kMask>
inline float Dz(const float* dz, const float* mask, int64_t i) {
  const float d = dz[i];  // loaded unconditionally so that the select vectorizes
  return kMask ? (mask[i] > 0.f ? d : 0.f) : d;
}

// Per-(g, c) sums of dz and of dz * (x - m) over the S rows of each group, in double.
template <bool kMask>
void GradSumsT(const float* x, PreGrad pg, const float* m, const NormView& v, std::vector<double>& sdz,
               std::vector<double>& sdzx) {
  const int64_t K = ChunksPerGroup(v), T = v.G * K, C = v.C;
  std::vector<double> pa(T * C, 0.0), pb(T * C, 0.0);
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t g = t / K, k = t % K, s0 = v.S * k / K, s1 = v.S * (k + 1) / K;
    const float* __restrict xg = x + g * v.S * C;
    const float* __restrict dg = pg.dz + g * v.S * C;
    const float* __restrict kg = kMask ? pg.mask + g * v.S * C : nullptr;
    const float* mg = m + g * C;
    float ba[kTile], bb[kTile];
    for (int64_t c0 = 0; c0 < C; c0 += kTile) {
      const int64_t ct = std::min(kTile, C - c0), B = BlockRows(ct);
      const float* mc = mg + c0;
      for (int64_t r0 = s0; r0 < s1; r0 += B) {
        std::fill(ba, ba + ct, 0.f);
        std::fill(bb, bb + ct, 0.f);
        for (int64_t r = r0; r < std::min(r0 + B, s1); ++r) {
          const float* xr = xg + r * C + c0;
          const float* dr = dg + r * C + c0;
          const float* kr = kMask ? kg + r * C + c0 : nullptr;
          for (int64_t c = 0; c < ct; ++c) {
            const float dz = Dz<kMask>(dr, kr, c);
            ba[c] += dz;
            bb[c] += dz * (xr[c] - mc[c]);
          }
        }
        for (int64_t c = 0; c < ct; ++c) {
          pa[t * C + c0 + c] += ba[c];
          pb[t * C + c0 + c] += bb[c];
        }
      }
    }
  }
  sdz.assign(v.stats(), 0.0);
  sdzx.assign(v.stats(), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t g = t / K;
    for (int64_t c = 0; c < C; ++c) {
      sdz[g * C + c] += pa[t * C + c];
      sdzx[g * C + c] += pb[t * C + c];
    }
  }
}

void GradSums(const float* x, PreGrad pg, const float* m, const NormView& v, std::vector<double>& sdz,
              std::vector<double>& sdzx) {
  pg.mask ? GradSumsT<true>(x, pg, m, v, sdz, sdzx) : GradSumsT<false>(x, pg, m, v, sdz, sdzx);
}

// out = ((x - m) - ml) * a + b, with m, ml, a, b per (g, c). The mean is split in two floats
// (m + ml) so that a large common offset does not cost the output its precision.
template <bool kRelu>
void AffineT(const float* __restrict x, const NormView& v, const float* m, const float* ml, const float* a,
             const float* b, float* __restrict out) {
  const int64_t C = v.C;
#pragma omp parallel for schedule(static) if (v.rows() * C >= kParMin)
  for (int64_t r = 0; r < v.rows(); ++r) {
    const int64_t g = r / v.S;
    const float *mr = m + g * C, *lr = ml + g * C, *ar = a + g * C, *br = b + g * C;
    const float* xr = x + r * C;
    float* o = out + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float z = ((xr[c] - mr[c]) - lr[c]) * ar[c] + br[c];
      o[c] = kRelu ? std::max(z, 0.f) : z;
    }
  }
}

void Affine(const float* x, const NormView& v, const float* m, const float* ml, const float* a, const float* b,
            float* out, bool relu = false) {
  relu ? AffineT<true>(x, v, m, ml, a, b, out) : AffineT<false>(x, v, m, ml, a, b, out);
}

// dx = a * dz + b * (x - m) + d, with a, b, m, d per (g, c); dx = a * dz when b is null (inference:
// x enters only through dz, so a NaN x whose dz a fused relu zeroed gives 0, as jax). dx may alias dz.
template <bool kMask, bool kAffineOnly>
void GradInputT(const float* x, PreGrad pg, const NormView& v, const float* a, const float* b, const float* m,
                const float* d, float* dx) {
  const int64_t C = v.C;
#pragma omp parallel for schedule(static) if (v.rows() * C >= kParMin)
  for (int64_t r = 0; r < v.rows(); ++r) {
    const int64_t g = r / v.S;
    const float* ar = a + g * C;
    const float* zr = pg.dz + r * C;
    const float* kr = kMask ? pg.mask + r * C : nullptr;
    float* o = dx + r * C;
    if (kAffineOnly) {
      for (int64_t c = 0; c < C; ++c) o[c] = ar[c] * Dz<kMask>(zr, kr, c);
      continue;
    }
    const float *br = b + g * C, *mr = m + g * C, *dr = d + g * C;
    const float* xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) o[c] = ar[c] * Dz<kMask>(zr, kr, c) + br[c] * (xr[c] - mr[c]) + dr[c];
  }
}

void GradInput(const float* x, PreGrad pg, const NormView& v, const float* a, const float* b, const float* m,
               const float* d, float* dx) {
  if (!b)
    pg.mask ? GradInputT<true, true>(x, pg, v, a, b, m, d, dx) : GradInputT<false, true>(x, pg, v, a, b, m, d, dx);
  else
    pg.mask ? GradInputT<true, false>(x, pg, v, a, b, m, d, dx) : GradInputT<false, false>(x, pg, v, a, b, m, d, dx);
}

// Per-channel affine coefficients broadcast to G groups: a = scale * rstd, b = bias.
void AffineCoeffs(const NormView& v, const float* scale, const float* bias, const std::vector<double>& rstd,
                  std::vector<float>& a, std::vector<float>& b) {
  a.resize(v.stats());
  b.resize(v.stats());
  for (int64_t g = 0; g < v.G; ++g)
    for (int64_t c = 0; c < v.C; ++c) {
      a[g * v.C + c] = static_cast<float>(scale[c] * rstd[g * v.C + c]);
      b[g * v.C + c] = bias[c];
    }
}

// y = act((x - mean) * scale * rstd + bias).
void NormForward(const float* x, const NormView& v, const std::vector<double>& mean, const float* scale,
                 const float* bias, const std::vector<double>& rstd, Act act, float alpha, float* y) {
  std::vector<float> a, b, m(mean.size()), ml(mean.size());
  for (size_t i = 0; i < mean.size(); ++i) {
    m[i] = static_cast<float>(mean[i]);
    ml[i] = static_cast<float>(mean[i] - m[i]);
  }
  AffineCoeffs(v, scale, bias, rstd, a, b);
  Affine(x, v, m.data(), ml.data(), a.data(), b.data(), y, act == Act::kRelu);
  if (act != Act::kRelu) ActForward(act, alpha, v.rows() * v.C, y, y);
}

// dz = dy * act'(z): dy itself without activation; otherwise written into `dx` (which the
// gradient pass then overwrites in place). `s` is y when from_output, else x (z is recomputed).
PreGrad PreActGrad(const float* x, const float* s, const float* dy, const NormView& v,
                   const std::vector<float>& mean, const float* scale, const float* bias,
                   const std::vector<double>& rstd, Act act, float alpha, bool from_output, float* dx) {
  const int64_t n = v.rows() * v.C;
  if (act == Act::kNone) return {dy, nullptr};
  if (act == Act::kRelu && from_output) return {dy, s};
  if (from_output) {
    ActBackward(act, alpha, n, s, dy, dx, true);
  } else {
    std::vector<float> z(n), a, b, zero(mean.size(), 0.f);
    AffineCoeffs(v, scale, bias, rstd, a, b);
    Affine(x, v, mean.data(), zero.data(), a.data(), b.data(), z.data());
    ActBackward(act, alpha, n, z.data(), dy, dx, false);
  }
  return {dx, nullptr};
}

using F32 = ffi::Buffer<ffi::F32>;
using R32 = ffi::ResultBuffer<ffi::F32>;

// ---- batch norm, training mode ----

ffi::Error BnFwd(F32 x, F32 scale, F32 bias, R32 y, R32 mean, R32 var, R32 rstd, float eps, int64_t act,
                 float alpha) {
  const char* op = "batch_norm";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(BatchNormView(op, x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "scale", scale.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "bias", bias.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckEpsilon(op, eps));
  JAX_MPS_RETURN_IF_ERROR(CheckFusedAct(op, act, alpha, 0));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "y", y->element_count(), x.element_count()));
  for (auto* r : {&mean, &var, &rstd}) JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "stats", (*r)->element_count(), v.C));
  return Guard(op, [&] {
    std::vector<double> mu, var_d;
    MeanVar(x.typed_data(), v, mu, var_d);
    std::vector<double> rs(v.C);
    for (int64_t c = 0; c < v.C; ++c) {
      rs[c] = 1.0 / std::sqrt(var_d[c] + static_cast<double>(eps));
      mean->typed_data()[c] = static_cast<float>(mu[c]);
      var->typed_data()[c] = static_cast<float>(var_d[c]);
      rstd->typed_data()[c] = static_cast<float>(rs[c]);
    }
    NormForward(x.typed_data(), v, mu, scale.typed_data(), bias.typed_data(), rs, static_cast<Act>(act),
                alpha, y->typed_data());
    return ffi::Error::Success();
  });
}

ffi::Error BnBwd(F32 x, F32 scale, F32 bias, F32 mean, F32 rstd, F32 s, F32 dy, F32 dmean, F32 dvar, R32 dx,
                 R32 dscale, R32 dbias, int64_t act, float alpha, int64_t from_output) {
  const char* op = "batch_norm_bwd";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(BatchNormView(op, x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "scale", scale.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "bias", bias.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "mean", mean.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "rstd", rstd.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "dmean", dmean.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "dvar", dvar.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckSame(op, "y", s.dimensions(), x.dimensions()));
  JAX_MPS_RETURN_IF_ERROR(CheckSame(op, "dy", dy.dimensions(), x.dimensions()));
  JAX_MPS_RETURN_IF_ERROR(CheckFusedAct(op, act, alpha, from_output));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "dx", dx->element_count(), x.element_count()));
  for (auto* r : {&dscale, &dbias}) JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "dscale/dbias", (*r)->element_count(), v.C));
  return Guard(op, [&] {
    const int64_t C = v.C;
    const float* sc = scale.typed_data();
    std::vector<float> m(mean.typed_data(), mean.typed_data() + C);
    std::vector<double> rs(rstd.typed_data(), rstd.typed_data() + C);
    const PreGrad dz = PreActGrad(x.typed_data(), s.typed_data(), dy.typed_data(), v, m, sc, bias.typed_data(), rs,
                                 static_cast<Act>(act), alpha, from_output != 0, dx->typed_data());
    std::vector<double> sdz, sdzx;
    GradSums(x.typed_data(), dz, m.data(), v, sdz, sdzx);
    std::vector<float> a(C), b(C), d(C);
    const double M = static_cast<double>(v.S);
    for (int64_t c = 0; c < C; ++c) {
      const double r = rs[c], g = sc[c];
      dbias->typed_data()[c] = static_cast<float>(sdz[c]);
      dscale->typed_data()[c] = static_cast<float>(r * sdzx[c]);
      // d/dx of the normalization, plus the exact paths through the mean and var outputs.
      a[c] = static_cast<float>(g * r);
      b[c] = static_cast<float>((-g * r * r * r * sdzx[c] + 2.0 * dvar.typed_data()[c]) / M);
      d[c] = static_cast<float>((-g * r * sdz[c] + dmean.typed_data()[c]) / M);
    }
    GradInput(x.typed_data(), dz, v, a.data(), b.data(), m.data(), d.data(), dx->typed_data());
    return ffi::Error::Success();
  });
}

// ---- batch norm, inference mode (given statistics) ----

ffi::Error CheckBni(const char* op, F32& x, F32& scale, F32& bias, F32& mean, F32& var, float eps, NormView* v) {
  JAX_MPS_RETURN_IF_ERROR(BatchNormView(op, x.dimensions(), v));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "scale", scale.dimensions(), v->C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "bias", bias.dimensions(), v->C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "mean", mean.dimensions(), v->C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "var", var.dimensions(), v->C));
  return CheckEpsilon(op, eps);
}

std::vector<double> Rstd(const float* var, int64_t C, float eps) {
  std::vector<double> r(C);
  for (int64_t c = 0; c < C; ++c) r[c] = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
  return r;
}

ffi::Error BniFwd(F32 x, F32 scale, F32 bias, F32 mean, F32 var, R32 y, float eps, int64_t act, float alpha) {
  const char* op = "batch_norm_inference";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(CheckBni(op, x, scale, bias, mean, var, eps, &v));
  JAX_MPS_RETURN_IF_ERROR(CheckFusedAct(op, act, alpha, 0));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "y", y->element_count(), x.element_count()));
  return Guard(op, [&] {
    std::vector<double> m(mean.typed_data(), mean.typed_data() + v.C);
    NormForward(x.typed_data(), v, m, scale.typed_data(), bias.typed_data(), Rstd(var.typed_data(), v.C, eps),
                static_cast<Act>(act), alpha, y->typed_data());
    return ffi::Error::Success();
  });
}

ffi::Error BniBwd(F32 x, F32 scale, F32 bias, F32 mean, F32 var, F32 s, F32 dy, R32 dx, R32 dscale, R32 dbias,
                  R32 dmean, R32 dvar, float eps, int64_t act, float alpha, int64_t from_output) {
  const char* op = "batch_norm_inference_bwd";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(CheckBni(op, x, scale, bias, mean, var, eps, &v));
  JAX_MPS_RETURN_IF_ERROR(CheckSame(op, "y", s.dimensions(), x.dimensions()));
  JAX_MPS_RETURN_IF_ERROR(CheckSame(op, "dy", dy.dimensions(), x.dimensions()));
  JAX_MPS_RETURN_IF_ERROR(CheckFusedAct(op, act, alpha, from_output));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "dx", dx->element_count(), x.element_count()));
  for (auto* r : {&dscale, &dbias, &dmean, &dvar})
    JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "parameter gradient", (*r)->element_count(), v.C));
  return Guard(op, [&] {
    const int64_t C = v.C;
    const float* sc = scale.typed_data();
    std::vector<float> m(mean.typed_data(), mean.typed_data() + C);
    std::vector<double> rs = Rstd(var.typed_data(), C, eps);
    const PreGrad dz = PreActGrad(x.typed_data(), s.typed_data(), dy.typed_data(), v, m, sc, bias.typed_data(), rs,
                                 static_cast<Act>(act), alpha, from_output != 0, dx->typed_data());
    std::vector<double> sdz, sdzx;
    GradSums(x.typed_data(), dz, m.data(), v, sdz, sdzx);
    std::vector<float> a(C);
    for (int64_t c = 0; c < C; ++c) {
      const double r = rs[c], g = sc[c];
      a[c] = static_cast<float>(g * r);
      dbias->typed_data()[c] = static_cast<float>(sdz[c]);
      dscale->typed_data()[c] = static_cast<float>(r * sdzx[c]);
      dmean->typed_data()[c] = static_cast<float>(-g * r * sdz[c]);
      dvar->typed_data()[c] = static_cast<float>(-0.5 * g * r * r * r * sdzx[c]);
    }
    GradInput(x.typed_data(), dz, v, a.data(), nullptr, m.data(), nullptr, dx->typed_data());
    return ffi::Error::Success();
  });
}

// ---- instance norm ----

ffi::Error InFwd(F32 x, F32 scale, F32 bias, R32 y, R32 mean, R32 rstd, float eps) {
  const char* op = "instance_norm";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(InstanceNormView(x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "scale", scale.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "bias", bias.dimensions(), v.C));
  JAX_MPS_RETURN_IF_ERROR(CheckEpsilon(op, eps));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "y", y->element_count(), x.element_count()));
  for (auto* r : {&mean, &rstd}) JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "stats", (*r)->element_count(), v.stats()));
  return Guard(op, [&] {
    std::vector<double> mu, var;
    MeanVar(x.typed_data(), v, mu, var);
    for (auto& e : var) e = 1.0 / std::sqrt(e + static_cast<double>(eps));
    for (int64_t i = 0; i < v.stats(); ++i) {
      mean->typed_data()[i] = static_cast<float>(mu[i]);
      rstd->typed_data()[i] = static_cast<float>(var[i]);
    }
    NormForward(x.typed_data(), v, mu, scale.typed_data(), bias.typed_data(), var, Act::kNone, 0.f,
                y->typed_data());
    return ffi::Error::Success();
  });
}

ffi::Error InBwd(F32 x, F32 scale, F32 mean, F32 rstd, F32 dy, R32 dx, R32 dscale, R32 dbias) {
  const char* op = "instance_norm_bwd";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(InstanceNormView(x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(CheckVec(op, "scale", scale.dimensions(), v.C));
  const Dims sd{v.G, v.C};
  JAX_MPS_RETURN_IF_ERROR(CheckSame(op, "mean", mean.dimensions(), ffi::Span<const int64_t>(sd.data(), 2)));
  JAX_MPS_RETURN_IF_ERROR(CheckSame(op, "rstd", rstd.dimensions(), ffi::Span<const int64_t>(sd.data(), 2)));
  JAX_MPS_RETURN_IF_ERROR(CheckSame(op, "dy", dy.dimensions(), x.dimensions()));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "dx", dx->element_count(), x.element_count()));
  for (auto* r : {&dscale, &dbias}) JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "dscale/dbias", (*r)->element_count(), v.C));
  return Guard(op, [&] {
    const int64_t C = v.C;
    const float* sc = scale.typed_data();
    const float* rs = rstd.typed_data();
    std::vector<double> sdz, sdzx;
    GradSums(x.typed_data(), {dy.typed_data(), nullptr}, mean.typed_data(), v, sdz, sdzx);
    std::vector<float> a(v.stats()), b(v.stats()), d(v.stats());
    std::vector<double> ds(C, 0.0), db(C, 0.0);
    const double S = static_cast<double>(v.S);
    for (int64_t i = 0; i < v.stats(); ++i) {
      const int64_t c = i % C;
      const double r = rs[i], g = sc[c];
      ds[c] += r * sdzx[i];
      db[c] += sdz[i];
      a[i] = static_cast<float>(g * r);
      b[i] = static_cast<float>(-g * r * r * r * sdzx[i] / S);
      d[i] = static_cast<float>(-g * r * sdz[i] / S);
    }
    for (int64_t c = 0; c < C; ++c) {
      dscale->typed_data()[c] = static_cast<float>(ds[c]);
      dbias->typed_data()[c] = static_cast<float>(db[c]);
    }
    GradInput(x.typed_data(), {dy.typed_data(), nullptr}, v, a.data(), b.data(), mean.typed_data(), d.data(),
              dx->typed_data());
    return ffi::Error::Success();
  });
}

// ---- local response norm across the last axis ----
// y_c = x_c * s_c^-beta, s_c = k + alpha/size * sum_{|c'-c| <= size/2} x_c'^2.
// dx_j = dy_j s_j^-beta - 2 alpha beta / size * x_j * sum_{|c-j| <= size/2} dy_c x_c s_c^(-beta-1).
// Window sums come from prefix sums in double (exact enough, O(C) per row).

ffi::Error LrnRun(F32& x, const float* dy, float* out, int64_t size, float alpha, float beta, float k) {
  LrnDesc p{size, alpha, beta, k};
  JAX_MPS_RETURN_IF_ERROR(CheckLrn(x.dimensions(), p));
  const int64_t C = x.dimensions().back(), n = x.element_count();
  if (n == 0) return ffi::Error::Success();
  const int64_t rows = n / C, h = size / 2;
  const float* xp = x.typed_data();
  const double coef = static_cast<double>(alpha) / static_cast<double>(size);
  auto window = [&](const std::vector<double>& pre, int64_t c) {
    return pre[std::min(C, c + h + 1)] - pre[std::max<int64_t>(0, c - h)];
  };
#pragma omp parallel if (n >= kParMin)
  {
    std::vector<double> pre(C + 1), pre2(dy ? C + 1 : 0);
    std::vector<float> sb(C), pb(C);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * C;
      float* o = out + r * C;
      pre[0] = 0.0;
      for (int64_t c = 0; c < C; ++c) pre[c + 1] = pre[c] + static_cast<double>(xr[c]) * xr[c];
      for (int64_t c = 0; c < C; ++c) {
        sb[c] = static_cast<float>(k + coef * window(pre, c));
        pb[c] = std::pow(sb[c], -beta);
      }
      if (!dy) {
        for (int64_t c = 0; c < C; ++c) o[c] = xr[c] * pb[c];
        continue;
      }
      const float* gr = dy + r * C;
      pre2[0] = 0.0;
      for (int64_t c = 0; c < C; ++c)
        pre2[c + 1] = pre2[c] + static_cast<double>(gr[c]) * xr[c] * pb[c] / sb[c];
      const double f = 2.0 * coef * beta;
      for (int64_t c = 0; c < C; ++c)
        o[c] = static_cast<float>(gr[c] * pb[c] - f * xr[c] * window(pre2, c));
    }
  }
  return ffi::Error::Success();
}

ffi::Error LrnFwd(F32 x, R32 y, int64_t size, float alpha, float beta, float k) {
  JAX_MPS_RETURN_IF_ERROR(CheckCount("local_response_norm", "y", y->element_count(), x.element_count()));
  return Guard("local_response_norm", [&] { return LrnRun(x, nullptr, y->typed_data(), size, alpha, beta, k); });
}

ffi::Error LrnBwd(F32 x, F32 dy, R32 dx, int64_t size, float alpha, float beta, float k) {
  JAX_MPS_CHECK(ToDims(dy.dimensions()) == ToDims(x.dimensions()), "local_response_norm_bwd: dy must have shape ",
                DimsStr(x.dimensions()), ", got ", DimsStr(dy.dimensions()));
  JAX_MPS_RETURN_IF_ERROR(CheckCount("local_response_norm_bwd", "dx", dx->element_count(), x.element_count()));
  return Guard("local_response_norm_bwd",
               [&] { return LrnRun(x, dy.typed_data(), dx->typed_data(), size, alpha, beta, k); });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kBnFwd, BnFwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("epsilon").Attr<int64_t>("act").Attr<float>("alpha"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kBnBwd, BnBwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<int64_t>("act").Attr<float>("alpha").Attr<int64_t>("from_output"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kBniFwd, BniFwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<float>("epsilon").Attr<int64_t>("act").Attr<float>("alpha"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kBniBwd, BniBwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("epsilon").Attr<int64_t>("act").Attr<float>("alpha")
                                  .Attr<int64_t>("from_output"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kInFwd, InFwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kInBwd, InBwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(kLrnFwd, LrnFwd,
                              ffi::Ffi::Bind().Arg<F32>().Ret<F32>()
                                  .Attr<int64_t>("size").Attr<float>("alpha").Attr<float>("beta").Attr<float>("k"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kLrnBwd, LrnBwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()
                                  .Attr<int64_t>("size").Attr<float>("alpha").Attr<float>("beta").Attr<float>("k"));

JAX_MPS_REGISTER("jax_mps_batch_norm_fwd", "cpu", kBnFwd);
JAX_MPS_REGISTER("jax_mps_batch_norm_bwd", "cpu", kBnBwd);
JAX_MPS_REGISTER("jax_mps_batch_norm_inference_fwd", "cpu", kBniFwd);
JAX_MPS_REGISTER("jax_mps_batch_norm_inference_bwd", "cpu", kBniBwd);
JAX_MPS_REGISTER("jax_mps_instance_norm_fwd", "cpu", kInFwd);
JAX_MPS_REGISTER("jax_mps_instance_norm_bwd", "cpu", kInBwd);
JAX_MPS_REGISTER("jax_mps_local_response_norm_fwd", "cpu", kLrnFwd);
JAX_MPS_REGISTER("jax_mps_local_response_norm_bwd", "cpu", kLrnBwd);

}  // namespace jax_mps::cpu
