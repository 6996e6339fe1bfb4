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

#include "cpu/backend.h"
#include "cpu/eltwise.h"
#include "cpu/f32.h"
#include "cpu/kernel_util.h"

namespace jax_mps::cpu {
namespace {

constexpr int64_t kTile = 256;           // channels per tile (block accumulators live on the stack)
constexpr int64_t kBlockElems = 16384;   // elements of one row block (64 KiB: stays in L2)
constexpr int64_t kMaxBlockRows = 256;   // float block sums stay short (accuracy)
// Elements below which one thread does it all: waking a sleeping OpenMP worker (OMP_WAIT_POLICY=
// PASSIVE) costs ~50 us a region on a 2-vCPU VM, about what one thread needs for 500k elements here
// (batch norm forward on 640x128: 30 us on one thread, 133 us on two).
constexpr int64_t kParMin = 1 << 19;
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
JAX_MPS_CLONES void ChunkMeanM2(const float* __restrict x, int64_t C, int64_t s0, int64_t s1, double* mean, double* m2) {
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
    for (int64_t c = 0; c < C; ++c) {
      q[c] /= static_cast<double>(v.S);
      // Non-finite input: the shifted sums give NaN where jnp.mean's plain sum gives +-inf (infs of
      // one sign, no NaN); take the plain sum there, as CUDA's kernels do (rare, so not vectorised).
      if (!std::isfinite(mu[c])) {
        double sum = 0.0;
        for (int64_t r = 0; r < v.S; ++r) sum += x[(g * v.S + r) * C + c];
        mu[c] = sum / static_cast<double>(v.S);
      }
    }
  }
}

// The gradient w.r.t. the pre-activation z: dz, or (fused ReLU) dz = mask > 0 ? dz : 0 with
// mask = y, so that BN + ReLU costs no extra pass over memory. Rows are `ld` apart (dy and y may
// be channel slices of a concatenation's buffers).
struct PreGrad {
  const float* dz;
  const float* mask;  // nullptr: none
  int64_t ld;
};

template <bool kMask>
inline float Dz(const float* dz, const float* mask, int64_t i) {
  const float d = dz[i];  // loaded unconditionally so that the select vectorizes
  return kMask ? (mask[i] > 0.f ? d : 0.f) : d;
}

// Sums of dz and dz * (x - m) over rows [s0, s1) of one group (per-ISA clone: the caller's parallel
// loop body would otherwise be compiled for baseline x86-64 only).
template <bool kMask>
JAX_MPS_CLONES void GroupGradSums(const float* __restrict xg, const float* __restrict dg, const float* __restrict kg,
                                  int64_t ld, const float* mg, int64_t C, int64_t s0, int64_t s1, double* pa,
                                  double* pb) {
  float ba[kTile], bb[kTile];
  for (int64_t c0 = 0; c0 < C; c0 += kTile) {
    const int64_t ct = std::min(kTile, C - c0), B = BlockRows(ct);
    const float* mc = mg + c0;
    for (int64_t r0 = s0; r0 < s1; r0 += B) {
      std::fill(ba, ba + ct, 0.f);
      std::fill(bb, bb + ct, 0.f);
      for (int64_t r = r0; r < std::min(r0 + B, s1); ++r) {
        const float* xr = xg + r * C + c0;
        const float* dr = dg + r * ld + c0;
        const float* kr = kMask ? kg + r * ld + c0 : nullptr;
        for (int64_t c = 0; c < ct; ++c) {
          const float dz = Dz<kMask>(dr, kr, c);
          ba[c] += dz;
          bb[c] += dz * (xr[c] - mc[c]);
        }
      }
      for (int64_t c = 0; c < ct; ++c) {
        pa[c0 + c] += ba[c];
        pb[c0 + c] += bb[c];
      }
    }
  }
}

// Per-(g, c) sums of dz and of dz * (x - m) over the S rows of each group, in double.
template <bool kMask>
void GradSumsT(const float* x, PreGrad pg, const float* m, const NormView& v, std::vector<double>& sdz,
               std::vector<double>& sdzx) {
  const int64_t K = ChunksPerGroup(v), T = v.G * K, C = v.C;
  std::vector<double> pa(T * C, 0.0), pb(T * C, 0.0);
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t g = t / K, k = t % K;
    GroupGradSums<kMask>(x + g * v.S * C, pg.dz + g * v.S * pg.ld, kMask ? pg.mask + g * v.S * pg.ld : nullptr,
                         pg.ld, m + g * C, C, v.S * k / K, v.S * (k + 1) / K, &pa[t * C], &pb[t * C]);
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

// Rows [r0, r1) of a row-wise pass over rows of C, in parallel chunks when the pass is large.
template <class F>
void RowChunks(int64_t rows, int64_t C, F&& f) {
  const int nt = Threads(rows * C);
  if (nt <= 1) return f(int64_t(0), rows);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int i = 0; i < nt; ++i) f(rows * i / nt, rows * (i + 1) / nt);
}

template <class F>
void RowChunks(const NormView& v, F&& f) {
  RowChunks(v.rows(), v.C, f);
}

// out = ((x - m) - ml) * a + b, with m, ml, a, b per (g, c), for rows [r0, r1); out's rows are `ldo`
// apart. The mean is split in two floats (m + ml) so that a large common offset does not cost the
// output its precision.
template <bool kRelu>
JAX_MPS_CLONES void AffineRows(const float* __restrict x, int64_t S, int64_t C, int64_t r0, int64_t r1,
                               const float* m, const float* ml, const float* a, const float* b,
                               float* __restrict out, int64_t ldo) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t g = r / S;
    const float *__restrict mr = m + g * C, *__restrict lr = ml + g * C, *__restrict ar = a + g * C,
                            *__restrict br = b + g * C;
    const float* xr = x + r * C;
    float* o = out + r * ldo;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float z = ((xr[c] - mr[c]) - lr[c]) * ar[c] + br[c];
      o[c] = kRelu ? std::max(z, 0.f) : z;
    }
  }
}

template <bool kRelu>
void AffineT(const float* x, const NormView& v, const float* m, const float* ml, const float* a, const float* b,
             float* out, int64_t ldo) {
  RowChunks(v, [&](int64_t r0, int64_t r1) { AffineRows<kRelu>(x, v.S, v.C, r0, r1, m, ml, a, b, out, ldo); });
}

void Affine(const float* x, const NormView& v, const float* m, const float* ml, const float* a, const float* b,
            float* out, bool relu = false, int64_t ldo = 0) {
  if (!ldo) ldo = v.C;
  relu ? AffineT<true>(x, v, m, ml, a, b, out, ldo) : AffineT<false>(x, v, m, ml, a, b, out, ldo);
}

// An element-wise pass over rows of C that are `ld` apart: f(offset of the row's first element, count).
template <class F>
void Rows(const NormView& v, int64_t ld, F&& f) {
  if (ld == v.C) return f(int64_t(0), v.rows() * v.C);
  RowChunks(v, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) f(r * ld, v.C);
  });
}

template <bool kMask, bool kAffineOnly>
JAX_MPS_CLONES void GradInputRows(const float* x, const float* dz, const float* mask, int64_t ld, int64_t S,
                                  int64_t C, int64_t r0, int64_t r1, const float* a, const float* b, const float* m,
                                  const float* d, float* dx) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t g = r / S;
    const float* __restrict ar = a + g * C;
    const float* zr = dz + r * ld;  // dx may alias it (same index only: simd-safe)
    const float* __restrict kr = kMask ? mask + r * ld : nullptr;
    float* o = dx + r * C;  // may alias dz
    if (kAffineOnly) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = ar[c] * Dz<kMask>(zr, kr, c);
      continue;
    }
    const float *__restrict br = b + g * C, *__restrict mr = m + g * C, *__restrict dr = d + g * C;
    const float* __restrict xr = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = ar[c] * Dz<kMask>(zr, kr, c) + br[c] * (xr[c] - mr[c]) + dr[c];
  }
}

// dx = a * dz + b * (x - m) + d, with a, b, m, d per (g, c); dx = a * dz when b is null (inference:
// x enters only through dz, so a NaN x whose dz a fused relu zeroed gives 0, as jax). dx may alias dz.
template <bool kMask, bool kAffineOnly>
void GradInputT(const float* x, PreGrad pg, const NormView& v, const float* a, const float* b, const float* m,
                const float* d, float* dx) {
  RowChunks(v, [&](int64_t r0, int64_t r1) {
    GradInputRows<kMask, kAffineOnly>(x, pg.dz, pg.mask, pg.ld, v.S, v.C, r0, r1, a, b, m, d, dx);
  });
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

// y = act((x - mean) * scale * rstd + bias), into channels [v.off, v.off + C) of rows v.yld() apart.
void NormForward(const float* x, const NormView& v, const std::vector<double>& mean, const float* scale,
                 const float* bias, const std::vector<double>& rstd, Act act, float alpha, float* y) {
  std::vector<float> a, b, m(mean.size()), ml(mean.size());
  for (size_t i = 0; i < mean.size(); ++i) {
    m[i] = static_cast<float>(mean[i]);
    ml[i] = static_cast<float>(mean[i] - m[i]);
  }
  AffineCoeffs(v, scale, bias, rstd, a, b);
  y += v.off;
  Affine(x, v, m.data(), ml.data(), a.data(), b.data(), y, act == Act::kRelu, v.yld());
  if (act != Act::kRelu) Rows(v, v.yld(), [&](int64_t o, int64_t n) { ActForward(act, alpha, n, y + o, y + o); });
}

// dz = dy * act'(z): dy itself without activation; otherwise written into `dx` (which the
// gradient pass then overwrites in place). `s` is y when from_output, else x (z is recomputed).
// dy (and y) are channels [v.off, v.off + C) of rows v.yld() apart.
PreGrad PreActGrad(const float* x, const float* s, const float* dy, const NormView& v,
                   const std::vector<float>& mean, const float* scale, const float* bias,
                   const std::vector<double>& rstd, Act act, float alpha, bool from_output, float* dx) {
  const int64_t n = v.rows() * v.C, ld = v.yld(), C = v.C;
  dy += v.off;
  if (act == Act::kNone) return {dy, nullptr, ld};
  if (act == Act::kRelu && from_output) return {dy, s + v.off, ld};
  if (from_output) {
    s += v.off;
    Rows(v, ld, [&](int64_t o, int64_t k) { ActBackward(act, alpha, k, s + o, dy + o, dx + o / ld * C, true); });
  } else {
    std::vector<float> z(n), a, b, zero(mean.size(), 0.f);
    AffineCoeffs(v, scale, bias, rstd, a, b);
    Affine(x, v, mean.data(), zero.data(), a.data(), b.data(), z.data());
    Rows(v, ld, [&](int64_t o, int64_t k) {
      const int64_t d = o / ld * C;
      ActBackward(act, alpha, k, z.data() + d, dy + o, dx + d, false);
    });
  }
  return {dx, nullptr, C};
}

std::vector<double> Rstd(const float* var, int64_t C, float eps) {
  std::vector<double> r(C);
  for (int64_t c = 0; c < C; ++c) r[c] = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
  return r;
}

// ---- local response norm across the last axis ----
// y_c = x_c * s_c^-beta, s_c = k + alpha/size * sum_{|c'-c| <= size/2} x_c'^2.
// dx_j = dy_j s_j^-beta - 2 alpha beta / size * x_j * sum_{|c-j| <= size/2} dy_c x_c s_c^(-beta-1).
// Every window is summed directly (O(C * size), vectorised over c), in double: a running or
// prefix sum would carry a huge channel's cancellation, or an inf / NaN channel's inf - inf, into
// every later channel of the row.

// w[c] = sum_{d < size} v[c + d], c < C: the windows of a row stored at v + size/2 between
// size/2 zeros on either side.
JAX_MPS_ALWAYS_INLINE void WindowSums(const double* __restrict v, int64_t C, int64_t size, double* __restrict w) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) w[c] = v[c];
  for (int64_t d = 1; d < size; ++d) {
    const double* __restrict vd = v + d;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) w[c] += vd[c];
  }
}

// Rows [r0, r1): y (dy null) or dx (dy given) into out.
JAX_MPS_CLONES void LrnRows(const LrnDesc& p, const float* __restrict x, const float* __restrict dy,
                            float* __restrict out, int64_t r0, int64_t r1) {
  const int64_t C = p.C, h = p.half;
  const float beta = p.beta;
  const double k = p.k, coef = static_cast<double>(p.alpha) / static_cast<double>(p.size), f = 2.0 * coef * beta;
  std::vector<double> pad(C + 2 * h, 0.0), win(C);  // pad's h zeros at either end stay zero
  std::vector<float> sb(C), pb(C);
  double* v = pad.data() + h;
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict xr = x + r * C;
    float* __restrict o = out + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) v[c] = static_cast<double>(xr[c]) * xr[c];
    WindowSums(pad.data(), C, 2 * h + 1, win.data());
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) sb[c] = static_cast<float>(k + coef * win[c]);
    if (beta == 0.75f) {  // the usual beta: s^-3/4 = r sqrt(r), r = 1/sqrt(s), vectorised (powf is not)
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const double rs = 1.0 / std::sqrt(static_cast<double>(sb[c]));
        pb[c] = static_cast<float>(rs * std::sqrt(rs));
      }
    } else {
      for (int64_t c = 0; c < C; ++c) pb[c] = std::pow(sb[c], -beta);
    }
    if (!dy) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = xr[c] * pb[c];
      continue;
    }
    const float* __restrict gr = dy + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) v[c] = static_cast<double>(gr[c]) * xr[c] * pb[c] / sb[c];
    WindowSums(pad.data(), C, 2 * h + 1, win.data());
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = static_cast<float>(gr[c] * pb[c] - f * xr[c] * win[c]);
  }
}

void LrnRun(const LrnDesc& p, const float* x, const float* dy, float* out) {
  if (p.rows * p.C == 0) return;
  RowChunks(p.rows, p.C, [&](int64_t r0, int64_t r1) { LrnRows(p, x, dy, out, r0, r1); });
}

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

// ---- batch norm, training mode ----

ffi::Error Cpu::BatchNormFwd(Ctx, const NormView& v, Buf x, Buf scale, Buf bias, Buf y, Buf mean, Buf var,
                             Buf rstd) {
  F32In xf(x), sf(scale), bf(bias);
  F32Out yf(y), mf(mean), vf(var), rf(rstd);
  std::vector<double> mu, var_d;
  MeanVar(xf.get(), v, mu, var_d);
  std::vector<double> rs(v.C);
  for (int64_t c = 0; c < v.C; ++c) {
    rs[c] = 1.0 / std::sqrt(var_d[c] + static_cast<double>(v.eps));
    mf.get()[c] = static_cast<float>(mu[c]);
    vf.get()[c] = static_cast<float>(var_d[c]);
    rf.get()[c] = static_cast<float>(rs[c]);
  }
  NormForward(xf.get(), v, mu, sf.get(), bf.get(), rs, v.act, v.alpha, yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::BatchNormBwd(Ctx, const NormView& v, Buf x, Buf scale, Buf bias, Buf mean, Buf rstd, Buf s, Buf dy,
                             Buf dmean, Buf dvar, Buf dx, Buf dscale, Buf dbias) {
  F32In xf(x), scf(scale), bf(bias), mf(mean), rf(rstd), sf(s), dyf(dy), dmf(dmean), dvf(dvar);
  F32Out dxf(dx), dsf(dscale), dbf(dbias);
  const int64_t C = v.C;
  const float* sc = scf.get();
  std::vector<float> m(mf.get(), mf.get() + C);
  std::vector<double> rs(rf.get(), rf.get() + C);
  const PreGrad dz = PreActGrad(xf.get(), sf.get(), dyf.get(), v, m, sc, bf.get(), rs, v.act, v.alpha,
                                v.from_output, dxf.get());
  std::vector<double> sdz, sdzx;
  GradSums(xf.get(), dz, m.data(), v, sdz, sdzx);
  std::vector<float> a(C), b(C), d(C);
  const double M = static_cast<double>(v.S);
  for (int64_t c = 0; c < C; ++c) {
    const double r = rs[c], g = sc[c];
    dbf.get()[c] = static_cast<float>(sdz[c]);
    dsf.get()[c] = static_cast<float>(r * sdzx[c]);
    // d/dx of the normalization, plus the exact paths through the mean and var outputs.
    a[c] = static_cast<float>(g * r);
    b[c] = static_cast<float>((-g * r * r * r * sdzx[c] + 2.0 * dvf.get()[c]) / M);
    d[c] = static_cast<float>((-g * r * sdz[c] + dmf.get()[c]) / M);
  }
  GradInput(xf.get(), dz, v, a.data(), b.data(), m.data(), d.data(), dxf.get());
  return ffi::Error::Success();
}

// ---- batch norm, inference mode (given statistics) ----

ffi::Error Cpu::BatchNormInferenceFwd(Ctx, const NormView& v, Buf x, Buf scale, Buf bias, Buf mean, Buf var, Buf y) {
  F32In xf(x), sf(scale), bf(bias), mf(mean), vf(var);
  F32Out yf(y);
  std::vector<double> m(mf.get(), mf.get() + v.C);
  NormForward(xf.get(), v, m, sf.get(), bf.get(), Rstd(vf.get(), v.C, v.eps), v.act, v.alpha, yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::BatchNormInferenceBwd(Ctx, const NormView& v, Buf x, Buf scale, Buf bias, Buf mean, Buf var, Buf s,
                                      Buf dy, Buf dx, Buf dscale, Buf dbias, Buf dmean, Buf dvar) {
  F32In xf(x), scf(scale), bf(bias), mf(mean), vf(var), sf(s), dyf(dy);
  F32Out dxf(dx), dsf(dscale), dbf(dbias), dmf(dmean), dvf(dvar);
  const int64_t C = v.C;
  const float* sc = scf.get();
  std::vector<float> m(mf.get(), mf.get() + C);
  std::vector<double> rs = Rstd(vf.get(), C, v.eps);
  const PreGrad dz = PreActGrad(xf.get(), sf.get(), dyf.get(), v, m, sc, bf.get(), rs, v.act, v.alpha,
                                v.from_output, dxf.get());
  std::vector<double> sdz, sdzx;
  GradSums(xf.get(), dz, m.data(), v, sdz, sdzx);
  std::vector<float> a(C);
  for (int64_t c = 0; c < C; ++c) {
    const double r = rs[c], g = sc[c];
    a[c] = static_cast<float>(g * r);
    dbf.get()[c] = static_cast<float>(sdz[c]);
    dsf.get()[c] = static_cast<float>(r * sdzx[c]);
    dmf.get()[c] = static_cast<float>(-g * r * sdz[c]);
    dvf.get()[c] = static_cast<float>(-0.5 * g * r * r * r * sdzx[c]);
  }
  GradInput(xf.get(), dz, v, a.data(), nullptr, m.data(), nullptr, dxf.get());
  return ffi::Error::Success();
}

// ---- instance norm ----

ffi::Error Cpu::InstanceNormFwd(Ctx, const NormView& v, Buf x, Buf scale, Buf bias, Buf y, Buf mean, Buf rstd) {
  F32In xf(x), sf(scale), bf(bias);
  F32Out yf(y), mf(mean), rf(rstd);
  std::vector<double> mu, var;
  MeanVar(xf.get(), v, mu, var);
  for (auto& e : var) e = 1.0 / std::sqrt(e + static_cast<double>(v.eps));
  for (int64_t i = 0; i < v.stats(); ++i) {
    mf.get()[i] = static_cast<float>(mu[i]);
    rf.get()[i] = static_cast<float>(var[i]);
  }
  NormForward(xf.get(), v, mu, sf.get(), bf.get(), var, Act::kNone, 0.f, yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::InstanceNormBwd(Ctx, const NormView& v, Buf x, Buf scale, Buf mean, Buf rstd, Buf dy, Buf dx,
                                Buf dscale, Buf dbias) {
  F32In xf(x), scf(scale), mf(mean), rf(rstd), dyf(dy);
  F32Out dxf(dx), dsf(dscale), dbf(dbias);
  const int64_t C = v.C;
  const float* sc = scf.get();
  const float* rs = rf.get();
  std::vector<double> sdz, sdzx;
  GradSums(xf.get(), {dyf.get(), nullptr, v.C}, mf.get(), v, sdz, sdzx);
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
    dsf.get()[c] = static_cast<float>(ds[c]);
    dbf.get()[c] = static_cast<float>(db[c]);
  }
  GradInput(xf.get(), {dyf.get(), nullptr, v.C}, v, a.data(), b.data(), mf.get(), d.data(), dxf.get());
  return ffi::Error::Success();
}

// ---- local response norm ----

ffi::Error Cpu::LrnFwd(Ctx, const LrnDesc& p, Buf x, Buf y) {
  F32In xf(x);
  F32Out yf(y);
  LrnRun(p, xf.get(), nullptr, yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::LrnBwd(Ctx, const LrnDesc& p, Buf x, Buf dy, Buf dx) {
  F32In xf(x), dyf(dy);
  F32Out dxf(dx);
  LrnRun(p, xf.get(), dyf.get(), dxf.get());
  return ffi::Error::Success();
}

}  // namespace jax_mps
