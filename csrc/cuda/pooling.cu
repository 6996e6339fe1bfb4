// Max / average pooling (2-D NHWC; 1-D is H == 1) and global average pooling on CUDA. One thread
// per output element (channels fastest, so a warp reads contiguous channels). Backward passes
// gather: each input element sums the windows that hold it, so dx is written once, without
// atomics or a zero fill. Max pooling's argmax (spatial index ih * W + iw, first maximum in window
// order wins, the last NaN wins) is the CPU kernel's.
#include "cuda/backend.h"
#include "cuda/common.cuh"

namespace jax_mps::cuda {
namespace {

struct Geo {  // Pool2DDesc as device-friendly ints
  int64_t n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl;
};
Geo ToGeo(const Pool2DDesc& d) { return {d.n, d.h, d.w, d.c, d.oh, d.ow, d.kh, d.kw, d.sh, d.sw, d.pt, d.pl}; }

template <typename T>
__global__ void MaxFwdK(Geo g, const T* x, T* y, int32_t* idx) {
  JAX_MPS_GRID_STRIDE(o, g.n * g.oh * g.ow * g.c) {
    const int64_t k = o % g.c, j = (o / g.c) % g.ow, i = (o / (g.c * g.ow)) % g.oh, n = o / (g.c * g.ow * g.oh);
    const int64_t hs = i * g.sh - g.pt, ws = j * g.sw - g.pl;
    const int64_t h0 = hs > 0 ? hs : 0, h1 = hs + g.kh < g.h ? hs + g.kh : g.h;
    const int64_t w0 = ws > 0 ? ws : 0, w1 = ws + g.kw < g.w ? ws + g.kw : g.w;
    float m = -INFINITY;
    int32_t a = int32_t(h0 * g.w + w0);
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const float v = Ld(x[((n * g.h + ih) * g.w + iw) * g.c + k]);
        if (v > m || v != v) {  // the last NaN wins, as in torch
          m = v;
          a = int32_t(ih * g.w + iw);
        }
      }
    y[o] = St<T>(m);
    if (idx) idx[o] = a;
  }
}

// Outputs i with i * s - p <= x < i * s - p + k, clipped to [0, out).
__device__ __forceinline__ void OutRange(int64_t x, int64_t p, int64_t k, int64_t s, int64_t out, int64_t* lo,
                                         int64_t* hi) {
  const int64_t a = x + p - k + 1;
  *lo = a <= 0 ? 0 : (a + s - 1) / s;
  const int64_t b = (x + p) / s;
  *hi = b < out - 1 ? b : out - 1;
}

template <typename T>
__global__ void MaxBwdK(Geo g, const int32_t* idx, const T* dy, T* dx) {
  JAX_MPS_GRID_STRIDE(e, g.n * g.h * g.w * g.c) {
    const int64_t k = e % g.c, iw = (e / g.c) % g.w, ih = (e / (g.c * g.w)) % g.h, n = e / (g.c * g.w * g.h);
    int64_t i0, i1, j0, j1;
    OutRange(ih, g.pt, g.kh, g.sh, g.oh, &i0, &i1);
    OutRange(iw, g.pl, g.kw, g.sw, g.ow, &j0, &j1);
    const int32_t me = int32_t(ih * g.w + iw);
    float acc = 0.f;
    for (int64_t i = i0; i <= i1; ++i)
      for (int64_t j = j0; j <= j1; ++j) {
        const int64_t o = ((n * g.oh + i) * g.ow + j) * g.c + k;
        if (idx[o] == me) acc += Ld(dy[o]);
      }
    dx[e] = St<T>(acc);
  }
}

__device__ __forceinline__ float Divisor(const Geo& g, int64_t i, int64_t j, bool include_pad) {
  if (include_pad) return float(g.kh * g.kw);
  const int64_t hs = i * g.sh - g.pt, ws = j * g.sw - g.pl;
  const int64_t h0 = hs > 0 ? hs : 0, h1 = hs + g.kh < g.h ? hs + g.kh : g.h;
  const int64_t w0 = ws > 0 ? ws : 0, w1 = ws + g.kw < g.w ? ws + g.kw : g.w;
  return float((h1 - h0) * (w1 - w0));
}

template <typename T>
__global__ void AvgFwdK(Geo g, bool include_pad, const T* x, T* y) {
  JAX_MPS_GRID_STRIDE(o, g.n * g.oh * g.ow * g.c) {
    const int64_t k = o % g.c, j = (o / g.c) % g.ow, i = (o / (g.c * g.ow)) % g.oh, n = o / (g.c * g.ow * g.oh);
    const int64_t hs = i * g.sh - g.pt, ws = j * g.sw - g.pl;
    const int64_t h0 = hs > 0 ? hs : 0, h1 = hs + g.kh < g.h ? hs + g.kh : g.h;
    const int64_t w0 = ws > 0 ? ws : 0, w1 = ws + g.kw < g.w ? ws + g.kw : g.w;
    float acc = 0.f;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) acc += Ld(x[((n * g.h + ih) * g.w + iw) * g.c + k]);
    y[o] = St<T>(acc * (1.f / Divisor(g, i, j, include_pad)));
  }
}

template <typename T>
__global__ void AvgBwdK(Geo g, bool include_pad, const T* dy, T* dx) {
  JAX_MPS_GRID_STRIDE(e, g.n * g.h * g.w * g.c) {
    const int64_t k = e % g.c, iw = (e / g.c) % g.w, ih = (e / (g.c * g.w)) % g.h, n = e / (g.c * g.w * g.h);
    int64_t i0, i1, j0, j1;
    OutRange(ih, g.pt, g.kh, g.sh, g.oh, &i0, &i1);
    OutRange(iw, g.pl, g.kw, g.sw, g.ow, &j0, &j1);
    float acc = 0.f;
    for (int64_t i = i0; i <= i1; ++i)
      for (int64_t j = j0; j <= j1; ++j)
        acc += Ld(dy[((n * g.oh + i) * g.ow + j) * g.c + k]) * (1.f / Divisor(g, i, j, include_pad));
    dx[e] = St<T>(acc);
  }
}

// ---- global average pooling: (N, H, W, C) -> (N, C) ----

template <typename T>
__global__ void GlobalAvgFwdK(int64_t n, int64_t hw, int64_t c, const T* x, T* y) {
  JAX_MPS_GRID_STRIDE(o, n * c) {
    const int64_t b = o / c, k = o % c;
    float acc = 0.f;
    for (int64_t s = 0; s < hw; ++s) acc += Ld(x[(b * hw + s) * c + k]);
    y[o] = St<T>(acc * (1.f / float(hw)));
  }
}

template <typename T>
__global__ void GlobalAvgBwdK(int64_t n, int64_t hw, int64_t c, const T* dy, T* dx) {
  JAX_MPS_GRID_STRIDE(e, n * hw * c) dx[e] = St<T>(Ld(dy[(e / (hw * c)) * c + e % c]) * (1.f / float(hw)));
}

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {
using namespace cuda;  // NOLINT: the kernels above

ffi::Error Cuda::MaxPoolFwd(Cuda::Ctx s, const Pool2DDesc& d, Buf x, Buf y, Buf idx) {
  const char* op = "max_pool_fwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  const int64_t n = y.element_count();
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    MaxFwdK<T><<<Blocks(n), 256, 0, s>>>(ToGeo(d), Ptr<const T>(x), Ptr<T>(y), d.with_index ? Ptr<int32_t>(idx) : nullptr);
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::MaxPoolBwd(Cuda::Ctx s, const Pool2DDesc& d, Buf idx, Buf dy, Buf dx) {
  const char* op = "max_pool_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, dy, {&dx}));
  const int64_t n = dx.element_count();
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, dy.element_type(), [&](auto t) {
    using T = decltype(t);
    MaxBwdK<T><<<Blocks(n), 256, 0, s>>>(ToGeo(d), Ptr<const int32_t>(idx), Ptr<const T>(dy), Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::AvgPoolFwd(Cuda::Ctx s, const Pool2DDesc& d, Buf x, Buf y) {
  const char* op = "avg_pool_fwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  const int64_t n = y.element_count();
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    AvgFwdK<T><<<Blocks(n), 256, 0, s>>>(ToGeo(d), d.count_include_pad, Ptr<const T>(x), Ptr<T>(y));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::AvgPoolBwd(Cuda::Ctx s, const Pool2DDesc& d, Buf dy, Buf dx) {
  const char* op = "avg_pool_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, dy, {&dx}));
  const int64_t n = dx.element_count();
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, dy.element_type(), [&](auto t) {
    using T = decltype(t);
    AvgBwdK<T><<<Blocks(n), 256, 0, s>>>(ToGeo(d), d.count_include_pad, Ptr<const T>(dy), Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::GlobalAvgPoolFwd(Cuda::Ctx s, const GlobalPoolDesc& d, Buf x, Buf y) {
  const char* op = "global_avg_pool2d_fwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  if (d.n * d.c == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    GlobalAvgFwdK<T><<<Blocks(d.n * d.c), 256, 0, s>>>(d.n, d.hw, d.c, Ptr<const T>(x), Ptr<T>(y));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::GlobalAvgPoolBwd(Cuda::Ctx s, const GlobalPoolDesc& d, Buf dy, Buf dx) {
  const char* op = "global_avg_pool2d_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, dy, {&dx}));
  if (d.n * d.c * d.hw == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, dy.element_type(), [&](auto t) {
    using T = decltype(t);
    GlobalAvgBwdK<T><<<Blocks(d.n * d.hw * d.c), 256, 0, s>>>(d.n, d.hw, d.c, Ptr<const T>(dy), Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

}  // namespace jax_mps
