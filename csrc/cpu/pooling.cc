// Max / average pooling (2-D, NHWC; 1-D is H == 1) and global average pooling on the CPU.
// Own kernels: at the small channel counts of conv nets (6, 16, ...) oneDNN's nhwc pooling and
// its workspace layout buy nothing. Windows are reduced in registers, channels innermost. Max
// pooling's forward for the backward pass also writes an int32 argmax (spatial index ih * W + iw
// per (n, c)); ties go to the first maximum in window order, NaN wins (the last NaN, as torch).
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "cpu/backend.h"
#include "cpu/dnnl_common.h"
#include "cpu/f32.h"

namespace jax_mps::cpu {
namespace {

// Below this many window reads one thread is as fast as two (these kernels are memory-bound) and
// cannot stall on an OpenMP team member descheduled by XLA's own threads.
constexpr int64_t kParallelWork = 1 << 20;

// Clipped window [h0, h1) x [w0, w1) of output (i, j).
struct Win {
  int64_t h0, h1, w0, w1;
};
inline Win Window(const Pool2DDesc& d, int64_t i, int64_t j) {
  const int64_t hs = i * d.sh - d.pt, ws = j * d.sw - d.pl;
  return {std::max<int64_t>(hs, 0), std::min(hs + d.kh, d.h), std::max<int64_t>(ws, 0), std::min(ws + d.kw, d.w)};
}

inline int64_t Work(const Pool2DDesc& d) { return d.n * d.oh * d.ow * d.c * d.kh * d.kw; }

// 4-float vectors: SSE2 on x86-64, else a plain struct with the same meaning. Channel loops are
// written with them because GCC leaves the short (6, 16, ...) channel loops scalar and turns the
// max's select into branches, which mispredict on every other element of random data.
#if defined(__SSE2__)
using V4 = __m128;
inline V4 Set1(float x) { return _mm_set1_ps(x); }
inline V4 Set1Bits(int32_t s) { return _mm_castsi128_ps(_mm_set1_epi32(s)); }
inline V4 Add(V4 a, V4 b) { return _mm_add_ps(a, b); }
inline V4 Mul(V4 a, V4 b) { return _mm_mul_ps(a, b); }
// Loads/stores of the first r = 1..4 lanes (r is a constant once the block size is).
inline V4 Load(const float* p, int64_t r) {
  if (r == 4) return _mm_loadu_ps(p);
  const __m128 lo = r >= 2 ? _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))) : _mm_load_ss(p);
  return r == 3 ? _mm_movelh_ps(lo, _mm_load_ss(p + 2)) : lo;
}
inline void Store(float* p, V4 v, int64_t r) {
  if (r == 4) return _mm_storeu_ps(p, v);
  if (r >= 2) _mm_store_sd(reinterpret_cast<double*>(p), _mm_castps_pd(v));
  else _mm_store_ss(p, v);
  if (r == 3) _mm_store_ss(p + 2, _mm_movehl_ps(v, v));
}
// The running max m takes x where x > m or x is NaN (the last NaN wins, as in torch); the argmax
// bits a take sv there when Idx.
template <bool Idx>
inline void MaxStep(V4 x, V4 sv, V4* m, V4* a) {
  // x > m, or x is NaN (m NaN and x a number keeps m).
  const __m128 t = _mm_or_ps(_mm_cmpgt_ps(x, *m), _mm_cmpunord_ps(x, x));
  *m = _mm_or_ps(_mm_and_ps(t, x), _mm_andnot_ps(t, *m));
  if constexpr (Idx) *a = _mm_or_ps(_mm_and_ps(t, sv), _mm_andnot_ps(t, *a));
}
// MaxStep for NaN-free x (maxps keeps m where x is NaN) in fewer instructions; a window holding a
// NaN is redone with MaxStep.
template <bool Idx>
inline void MaxStepNumbers(V4 x, V4 sv, V4* m, V4* a) {
  const __m128 nm = _mm_max_ps(x, *m);
  if constexpr (Idx) {
    const __m128 t = _mm_cmpneq_ps(nm, *m);  // x > m (m is never NaN here)
    *a = _mm_or_ps(_mm_and_ps(t, sv), _mm_andnot_ps(t, *a));
  }
  *m = nm;
}
inline V4 OrNaN(V4 acc, V4 x) { return _mm_or_ps(acc, _mm_cmpunord_ps(x, x)); }
inline bool AnyNaN(V4 acc) { return _mm_movemask_ps(acc) != 0; }
#else
struct V4 {
  float f[4];
};
inline V4 Set1(float x) { return {{x, x, x, x}}; }
inline V4 Set1Bits(int32_t s) {
  V4 v;
  for (float& f : v.f) std::memcpy(&f, &s, 4);
  return v;
}
inline V4 Add(V4 a, V4 b) {
  for (int l = 0; l < 4; ++l) a.f[l] += b.f[l];
  return a;
}
inline V4 Mul(V4 a, V4 b) {
  for (int l = 0; l < 4; ++l) a.f[l] *= b.f[l];
  return a;
}
inline V4 Load(const float* p, int64_t r) {
  V4 v = Set1(0.f);
  std::copy(p, p + r, v.f);
  return v;
}
inline void Store(float* p, V4 v, int64_t r) { std::copy(v.f, v.f + r, p); }
template <bool Idx>
inline void MaxStep(V4 x, V4 sv, V4* m, V4* a) {
  for (int l = 0; l < 4; ++l) {
    const float v = x.f[l], cur = m->f[l];
    if ((v > cur) | (v != v)) {
      m->f[l] = v;
      if constexpr (Idx) a->f[l] = sv.f[l];
    }
  }
}
template <bool Idx>
inline void MaxStepNumbers(V4 x, V4 sv, V4* m, V4* a) {
  for (int l = 0; l < 4; ++l)
    if (x.f[l] > m->f[l]) {
      m->f[l] = x.f[l];
      if constexpr (Idx) a->f[l] = sv.f[l];
    }
}
inline V4 OrNaN(V4 acc, V4 x) {
  for (int l = 0; l < 4; ++l) acc.f[l] += x.f[l] != x.f[l];
  return acc;
}
inline bool AnyNaN(V4 acc) { return acc.f[0] + acc.f[1] + acc.f[2] + acc.f[3] != 0.f; }
#endif

// A block of NL (<= 32) consecutive channels of one pixel lives in kV registers, the last holding
// Lanes(kV - 1) channels.
template <int64_t NL>
struct Blk {
  static constexpr int64_t kV = (NL + 3) / 4;
  static constexpr int64_t Lanes(int64_t v) { return std::min<int64_t>(4, NL - 4 * v); }
};

template <int64_t N>
using IntC = std::integral_constant<int64_t, N>;

// Calls f(IntC<NL>, k) for channel blocks [k, k + NL) covering the c channels: one block when
// CT is a small constant (the short channel loops of small conv nets unroll), else blocks of Big
// (as many accumulators as registers allow: fewer address and loop instructions per channel),
// then 16, then 4, then the 1..3 left.
template <int64_t CT, int64_t Big = 32, typename F>
inline void ForBlocks(int64_t c, F&& f) {
  if constexpr (CT > 0 && CT <= 16) {
    f(IntC<CT>{}, 0);
  } else {
    int64_t k = 0;
    for (; k + Big <= c; k += Big) f(IntC<Big>{}, k);
    for (; k + 16 <= c; k += 16) f(IntC<16>{}, k);
    for (; k + 4 <= c; k += 4) f(IntC<4>{}, k);
    switch (c - k) {
      case 1: f(IntC<1>{}, k); break;
      case 2: f(IntC<2>{}, k); break;
      case 3: f(IntC<3>{}, k); break;
    }
  }
}

// Max (and, when Idx, the argmax: spatial index ih * W + iw) over window `win` of the NL channels
// at x (channel stride c between pixels) into y / idx, accumulating in registers across the taps.
// Ties and all -inf windows go to the first real element (every window holds one).
template <int64_t NL, bool Idx>
inline void MaxWindow(const Pool2DDesc& d, const Win& win, int64_t c, const float* x, float* y, int32_t* idx) {
  using B = Blk<NL>;
  V4 m[B::kV], a[B::kV];
  auto run = [&](auto step) {
    for (int64_t v = 0; v < B::kV; ++v) {
      m[v] = Set1(-std::numeric_limits<float>::infinity());
      a[v] = Set1Bits(static_cast<int32_t>(win.h0 * d.w + win.w0));
    }
    for (int64_t ih = win.h0; ih < win.h1; ++ih)
      for (int64_t iw = win.w0; iw < win.w1; ++iw) {
        const int32_t s = static_cast<int32_t>(ih * d.w + iw);
        const V4 sv = Set1Bits(s);
        for (int64_t v = 0; v < B::kV; ++v) step(Load(x + s * c + 4 * v, B::Lanes(v)), sv, &m[v], &a[v]);
      }
  };
  V4 nan = Set1(0.f);
  run([&](V4 xv, V4 sv, V4* mv, V4* av) {
    nan = OrNaN(nan, xv);
    MaxStepNumbers<Idx>(xv, sv, mv, av);
  });
  if (AnyNaN(nan)) run(MaxStep<Idx>);  // rare: redo with the NaN-aware step
  for (int64_t v = 0; v < B::kV; ++v) {
    Store(y + 4 * v, m[v], B::Lanes(v));
    if constexpr (Idx) Store(reinterpret_cast<float*>(idx + 4 * v), a[v], B::Lanes(v));
  }
}

// Calls f(xn, win, o) for every output window of the forward passes: xn is the window's image in
// x, o the offset of its output channels; threads split (image, output row) pairs.
template <typename F>
void ForEachWindow(const Pool2DDesc& d, int64_t c, const float* x, F&& f) {
#pragma omp parallel for collapse(2) if (Work(d) > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < d.oh; ++i)
      for (int64_t j = 0; j < d.ow; ++j) f(x + n * d.h * d.w * c, Window(d, i, j), ((n * d.oh + i) * d.ow + j) * c);
}

// CT: the channel count as a compile-time constant (0: runtime). Idx: also write the argmax for
// the backward pass; the primal alone skips it.
template <int64_t CT, bool Idx>
void MaxFwd(const Pool2DDesc& d, const float* x, float* y, int32_t* idx) {
  const int64_t c = CT ? CT : d.c;
  ForEachWindow(d, c, x, [&](const float* xn, const Win& win, int64_t o) {
    ForBlocks<CT, Idx ? 16 : 32>(c, [&](auto nl, int64_t k) {
      MaxWindow<decltype(nl)::value, Idx>(d, win, c, xn + k, y + o + k, Idx ? idx + o + k : nullptr);
    });
  });
}

template <int64_t CT>
void MaxBwd(const Pool2DDesc& d, const int32_t* idx, const float* dy, float* dx) {
  const int64_t c = CT ? CT : d.c, hw = d.h * d.w;
#pragma omp parallel for if (Work(d) > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n) {
    float* dxn = dx + n * hw * c;
    std::memset(dxn, 0, hw * c * sizeof(float));
    const int64_t o0 = n * d.oh * d.ow * c, o1 = o0 + d.oh * d.ow * c;
    for (int64_t o = o0; o < o1; o += c)
      for (int64_t k = 0; k < c; ++k) {
        const int64_t s = idx[o + k];
        if (static_cast<uint64_t>(s) < static_cast<uint64_t>(hw)) dxn[s * c + k] += dy[o + k];  // never OOB
      }
  }
}

// Calls f(IntC<CT>) with CT = c for the channel counts of small conv nets, else CT = 0 (runtime).
template <typename F>
void DispatchC(int64_t c, F&& f) {
  switch (c) {
    case 1: f(IntC<1>{}); break;
    case 2: f(IntC<2>{}); break;
    case 3: f(IntC<3>{}); break;
    case 4: f(IntC<4>{}); break;
    case 6: f(IntC<6>{}); break;
    case 8: f(IntC<8>{}); break;
    case 16: f(IntC<16>{}); break;
    default: f(IntC<0>{});
  }
}

inline float Divisor(const Pool2DDesc& d, const Win& win, bool include_pad) {
  return static_cast<float>(include_pad ? d.kh * d.kw : (win.h1 - win.h0) * (win.w1 - win.w0));
}

template <int64_t CT>
void AvgFwd(const Pool2DDesc& d, bool include_pad, const float* x, float* y) {
  const int64_t c = CT ? CT : d.c;
  ForEachWindow(d, c, x, [&](const float* xn, const Win& win, int64_t o) {
    const V4 inv = Set1(1.f / Divisor(d, win, include_pad));
    ForBlocks<CT>(c, [&](auto nl, int64_t k) {
      using B = Blk<decltype(nl)::value>;
      V4 acc[B::kV];
      for (int64_t v = 0; v < B::kV; ++v) acc[v] = Set1(0.f);
      for (int64_t ih = win.h0; ih < win.h1; ++ih)
        for (int64_t iw = win.w0; iw < win.w1; ++iw)
          for (int64_t v = 0; v < B::kV; ++v)
            acc[v] = Add(acc[v], Load(xn + (ih * d.w + iw) * c + k + 4 * v, B::Lanes(v)));
      for (int64_t v = 0; v < B::kV; ++v) Store(y + o + k + 4 * v, Mul(acc[v], inv), B::Lanes(v));
    });
  });
}

// Scatter form for windows that do not overlap (stride >= window): each input pixel lies in at
// most one window, so dx is written once. Window row i owns the input rows from its first to the
// next window row's first: the first of its window rows is built left to right (dy / divisor on
// the taps of each window, zeros where no window reaches), the others copy it, the rest are zeros.
template <int64_t CT>
void AvgBwdDisjoint(const Pool2DDesc& d, const float* inv, const float* dy, float* dx) {
  const int64_t c = CT ? CT : d.c, wc = d.w * c;
#pragma omp parallel for collapse(2) if (Work(d) > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < d.oh; ++i) {
      const Win rows = Window(d, i, 0);
      const int64_t end = i + 1 == d.oh ? d.h : (i + 1) * d.sh - d.pt;
      float* r = dx + (n * d.h + rows.h0) * wc;
      int64_t iw = 0;
      for (int64_t j = 0; j < d.ow; ++j) {
        const Win win = Window(d, i, j);
        if (win.w0 > iw) std::memset(r + iw * c, 0, (win.w0 - iw) * c * sizeof(float));
        const float* g = dy + ((n * d.oh + i) * d.ow + j) * c;
        const V4 q = Set1(inv[i * d.ow + j]);
        ForBlocks<CT>(c, [&](auto nl, int64_t k) {
          using B = Blk<decltype(nl)::value>;
          V4 t[B::kV];
          for (int64_t v = 0; v < B::kV; ++v) t[v] = Mul(Load(g + k + 4 * v, B::Lanes(v)), q);
          for (int64_t w = win.w0; w < win.w1; ++w)
            for (int64_t v = 0; v < B::kV; ++v) Store(r + w * c + k + 4 * v, t[v], B::Lanes(v));
        });
        iw = win.w1;
      }
      if (d.w > iw) std::memset(r + iw * c, 0, (d.w - iw) * c * sizeof(float));
      for (int64_t ih = rows.h0 + 1; ih < rows.h1; ++ih) std::memcpy(r + (ih - rows.h0) * wc, r, wc * sizeof(float));
      std::memset(r + (rows.h1 - rows.h0) * wc, 0, (end - rows.h1) * wc * sizeof(float));
    }
}

// Gather form for overlapping windows: each input pixel sums dy / divisor over the windows holding
// it, so dx is written once (no zero fill, no read-modify-write) and rows split across threads
// without races. Window ranges and divisors are tabulated once per call (integer divisions per
// pixel cost more than the arithmetic).
template <int64_t CT>
void AvgBwd(const Pool2DDesc& d, bool include_pad, const float* dy, float* dx) {
  const int64_t c = CT ? CT : d.c;
  std::vector<float> inv(d.oh * d.ow);
  for (int64_t i = 0; i < d.oh; ++i)
    for (int64_t j = 0; j < d.ow; ++j) inv[i * d.ow + j] = 1.f / Divisor(d, Window(d, i, j), include_pad);
  if (d.sh >= d.kh && d.sw >= d.kw) return AvgBwdDisjoint<CT>(d, inv.data(), dy, dx);
  // Outputs i with i * s - p <= x < i * s - p + k, clipped to [0, out).
  auto range = [](int64_t x, int64_t p, int64_t k, int64_t s, int64_t out, int64_t* lo, int64_t* hi) {
    const int64_t a = x + p - k + 1;
    *lo = a <= 0 ? 0 : (a + s - 1) / s;
    *hi = std::min(out - 1, (x + p) / s);
  };
  std::vector<int64_t> hr(2 * d.h), wr(2 * d.w);
  for (int64_t x = 0; x < d.h; ++x) range(x, d.pt, d.kh, d.sh, d.oh, &hr[2 * x], &hr[2 * x + 1]);
  for (int64_t x = 0; x < d.w; ++x) range(x, d.pl, d.kw, d.sw, d.ow, &wr[2 * x], &wr[2 * x + 1]);
#pragma omp parallel for collapse(2) if (Work(d) > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t ih = 0; ih < d.h; ++ih) {
      const int64_t i0 = hr[2 * ih], i1 = hr[2 * ih + 1];
      for (int64_t iw = 0; iw < d.w; ++iw) {
        const int64_t j0 = wr[2 * iw], j1 = wr[2 * iw + 1];
        float* r = dx + ((n * d.h + ih) * d.w + iw) * c;
        ForBlocks<CT>(c, [&](auto nl, int64_t k) {
          using B = Blk<decltype(nl)::value>;
          V4 acc[B::kV];
          for (int64_t v = 0; v < B::kV; ++v) acc[v] = Set1(0.f);
          for (int64_t i = i0; i <= i1; ++i)
            for (int64_t j = j0; j <= j1; ++j) {
              const V4 q = Set1(inv[i * d.ow + j]);
              const float* g = dy + ((n * d.oh + i) * d.ow + j) * c + k;
              for (int64_t v = 0; v < B::kV; ++v) acc[v] = Add(acc[v], Mul(Load(g + 4 * v, B::Lanes(v)), q));
            }
          for (int64_t v = 0; v < B::kV; ++v) Store(r + k + 4 * v, acc[v], B::Lanes(v));
        });
      }
    }
}

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

// with_index 0 (the primal alone, nothing to differentiate) skips the argmax: idx is then empty.
ffi::Error Cpu::MaxPoolFwd(Ctx, const Pool2DDesc& d, Buf x, Buf y, Buf idx) {
  F32In xf(x);
  F32Out yf(y);
  int32_t* ip = static_cast<int32_t*>(idx.untyped_data());
  DispatchC(d.c, [&](auto ct) {
    if (d.with_index) MaxFwd<decltype(ct)::value, true>(d, xf.get(), yf.get(), ip);
    else MaxFwd<decltype(ct)::value, false>(d, xf.get(), yf.get(), nullptr);
  });
  return ffi::Error::Success();
}

ffi::Error Cpu::MaxPoolBwd(Ctx, const Pool2DDesc& d, Buf idx, Buf dy, Buf dx) {
  F32In dyf(dy);
  F32Out dxf(dx);
  const int32_t* ip = static_cast<const int32_t*>(idx.untyped_data());
  DispatchC(d.c, [&](auto ct) { MaxBwd<decltype(ct)::value>(d, ip, dyf.get(), dxf.get()); });
  return ffi::Error::Success();
}

ffi::Error Cpu::AvgPoolFwd(Ctx, const Pool2DDesc& d, Buf x, Buf y) {
  F32In xf(x);
  F32Out yf(y);
  DispatchC(d.c, [&](auto ct) { AvgFwd<decltype(ct)::value>(d, d.count_include_pad, xf.get(), yf.get()); });
  return ffi::Error::Success();
}

ffi::Error Cpu::AvgPoolBwd(Ctx, const Pool2DDesc& d, Buf dy, Buf dx) {
  F32In dyf(dy);
  F32Out dxf(dx);
  DispatchC(d.c, [&](auto ct) { AvgBwd<decltype(ct)::value>(d, d.count_include_pad, dyf.get(), dxf.get()); });
  return ffi::Error::Success();
}

ffi::Error Cpu::GlobalAvgPoolFwd(Ctx, const GlobalPoolDesc& d, Buf x, Buf y) {
  const int64_t n = d.n, hw = d.hw, c = d.c;
  F32In xf(x);
  F32Out yf(y);
  const float* xp = xf.get();
  float* yp = yf.get();
  const float inv = 1.f / static_cast<float>(hw);
#pragma omp parallel for if (n * hw * c > kParallelWork)
  for (int64_t b = 0; b < n; ++b) {
    float* yr = yp + b * c;
    for (int64_t k = 0; k < c; ++k) yr[k] = 0.f;
    for (int64_t s = 0; s < hw; ++s) {
      const float* xr = xp + (b * hw + s) * c;
      for (int64_t k = 0; k < c; ++k) yr[k] += xr[k];
    }
    for (int64_t k = 0; k < c; ++k) yr[k] *= inv;
  }
  return ffi::Error::Success();
}

ffi::Error Cpu::GlobalAvgPoolBwd(Ctx, const GlobalPoolDesc& d, Buf dy, Buf dx) {
  const int64_t n = d.n, hw = d.hw, c = d.c;
  F32In gf(dy);
  F32Out dxf(dx);
  const float* g = gf.get();
  float* dxp = dxf.get();
  const float inv = 1.f / static_cast<float>(hw);
#pragma omp parallel for if (n * hw * c > kParallelWork)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t s = 0; s < hw; ++s) {
      float* r = dxp + (b * hw + s) * c;
      for (int64_t k = 0; k < c; ++k) r[k] = g[b * c + k] * inv;
    }
  return ffi::Error::Success();
}

}  // namespace jax_mps
