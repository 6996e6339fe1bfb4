// Max / average pooling (2-D NHWC; 1-D is H == 1) and global average pooling on CUDA. One thread
// per output element (channels fastest, so a warp reads contiguous channels). Backward passes
// gather: each input element sums the windows that hold it, so dx is written once, without
// atomics or a zero fill. Max pooling's argmax (spatial index ih * W + iw, first maximum in window
// order wins, NaN wins) is the CPU kernel's.
#include "cuda/common.cuh"
#include "runtime/pooling.h"

namespace jax_mps::cuda {
namespace {

using Span = ffi::Span<const int64_t>;

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
    bool nan = false;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const float v = Ld(x[((n * g.h + ih) * g.w + iw) * g.c + k]);
        if (!nan && (v > m || v != v)) {
          m = v;
          a = int32_t(ih * g.w + iw);
          nan = v != v;
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

ffi::Error MaxPoolFwd(Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> idx,
                      Span window, Span stride, Span pad_lo, Span pad_hi, int64_t with_index) {
  const char* op = "max_pool_fwd";
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePool2D(op, x.dimensions(), y->dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "y", *y, x.element_type()));
  JAX_MPS_CHECK(with_index == 0 || with_index == 1, op, ": with_index must be 0 or 1, got ", with_index);
  JAX_MPS_CHECK(idx->element_type() == ffi::S32, op, ": argmax must be int32");
  if (with_index)
    JAX_MPS_CHECK(idx->dimensions().size() == 4 && idx->element_count() == y->element_count(), op,
                  ": argmax must have the output's shape ", DimsStr(y->dimensions()), ", got ",
                  DimsStr(idx->dimensions()));
  else
    JAX_MPS_CHECK(idx->element_count() == 0, op, ": argmax must be empty when with_index is 0, got ",
                  DimsStr(idx->dimensions()));
  JAX_MPS_CHECK(d.h * d.w <= INT32_MAX, op, ": H * W must fit in int32");
  const int64_t n = y->element_count();
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    MaxFwdK<T><<<Blocks(n), 256, 0, ctx.stream>>>(ToGeo(d), Ptr<const T>(x), Ptr<T>(*y),
                                                with_index ? Ptr<int32_t>(*idx) : nullptr);
    return LaunchStatus(op);
  });
}

ffi::Error MaxPoolBwd(Ctx ctx, ffi::AnyBuffer idx, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx, Span window,
                      Span stride, Span pad_lo, Span pad_hi) {
  const char* op = "max_pool_bwd";
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePool2D(op, dx->dimensions(), dy.dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "dx", *dx, dy.element_type()));
  JAX_MPS_CHECK(idx.element_type() == ffi::S32 && idx.element_count() == dy.element_count(), op,
                ": argmax must be int32 with dy's shape ", DimsStr(dy.dimensions()), ", got ",
                DimsStr(idx.dimensions()));
  const int64_t n = dx->element_count();
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, dy.element_type(), [&](auto t) {
    using T = decltype(t);
    MaxBwdK<T><<<Blocks(n), 256, 0, ctx.stream>>>(ToGeo(d), Ptr<const int32_t>(idx), Ptr<const T>(dy), Ptr<T>(*dx));
    return LaunchStatus(op);
  });
}

ffi::Error AvgPoolFwd(Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, Span window, Span stride,
                      Span pad_lo, Span pad_hi, int64_t count_include_pad) {
  const char* op = "avg_pool_fwd";
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePool2D(op, x.dimensions(), y->dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "y", *y, x.element_type()));
  const int64_t n = y->element_count();
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    AvgFwdK<T><<<Blocks(n), 256, 0, ctx.stream>>>(ToGeo(d), count_include_pad != 0, Ptr<const T>(x), Ptr<T>(*y));
    return LaunchStatus(op);
  });
}

ffi::Error AvgPoolBwd(Ctx ctx, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx, Span window, Span stride,
                      Span pad_lo, Span pad_hi, int64_t count_include_pad) {
  const char* op = "avg_pool_bwd";
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePool2D(op, dx->dimensions(), dy.dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "dx", *dx, dy.element_type()));
  const int64_t n = dx->element_count();
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, dy.element_type(), [&](auto t) {
    using T = decltype(t);
    AvgBwdK<T><<<Blocks(n), 256, 0, ctx.stream>>>(ToGeo(d), count_include_pad != 0, Ptr<const T>(dy), Ptr<T>(*dx));
    return LaunchStatus(op);
  });
}

// ---- global average pooling: (N, H, W, C) -> (N, C) ----

ffi::Error CheckGlobal(const char* op, Span in, Span out) {
  JAX_MPS_CHECK(in.size() == 4, op, ": input must have rank 4 (N, H, W, C), got ", DimsStr(in));
  JAX_MPS_CHECK(in[1] * in[2] > 0, op, ": H * W must be > 0, got ", DimsStr(in));
  JAX_MPS_CHECK(out.size() == 2 && out[0] == in[0] && out[1] == in[3], op, ": output must have shape (", in[0], ", ",
                in[3], "), got ", DimsStr(out));
  return ffi::Error::Success();
}

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

ffi::Error GlobalAvgFwd(Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  const char* op = "global_avg_pool2d_fwd";
  JAX_MPS_RETURN_IF_ERROR(CheckGlobal(op, x.dimensions(), y->dimensions()));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "y", *y, x.element_type()));
  auto dims = x.dimensions();
  const int64_t n = dims[0], hw = dims[1] * dims[2], c = dims[3];
  if (n * c == 0) return ffi::Error::Success();
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    GlobalAvgFwdK<T><<<Blocks(n * c), 256, 0, ctx.stream>>>(n, hw, c, Ptr<const T>(x), Ptr<T>(*y));
    return LaunchStatus(op);
  });
}

ffi::Error GlobalAvgBwd(Ctx ctx, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx) {
  const char* op = "global_avg_pool2d_bwd";
  JAX_MPS_RETURN_IF_ERROR(CheckGlobal(op, dx->dimensions(), dy.dimensions()));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "dx", *dx, dy.element_type()));
  auto dims = dx->dimensions();
  const int64_t n = dims[0], hw = dims[1] * dims[2], c = dims[3];
  if (n * c == 0) return ffi::Error::Success();
  return DispatchFloat(op, dy.element_type(), [&](auto t) {
    using T = decltype(t);
    GlobalAvgBwdK<T><<<Blocks(n * hw * c), 256, 0, ctx.stream>>>(n, hw, c, Ptr<const T>(dy), Ptr<T>(*dx));
    return LaunchStatus(op);
  });
}

}  // namespace

// Binding's move constructor is private, so the shared attributes are a macro, not a function.
#define POOL_ATTRS(b) b.Attr<Span>("window").Attr<Span>("stride").Attr<Span>("pad_lo").Attr<Span>("pad_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_max_pool_fwd, MaxPoolFwd,
                              POOL_ATTRS(ffi::Ffi::Bind().Ctx<Ctx>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                             .Ret<ffi::AnyBuffer>())
                                  .Attr<int64_t>("with_index"),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_max_pool_bwd, MaxPoolBwd,
                              POOL_ATTRS(ffi::Ffi::Bind().Ctx<Ctx>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                             .Ret<ffi::AnyBuffer>()),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_avg_pool_fwd, AvgPoolFwd,
                              POOL_ATTRS(ffi::Ffi::Bind().Ctx<Ctx>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>())
                                  .Attr<int64_t>("count_include_pad"),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_avg_pool_bwd, AvgPoolBwd,
                              POOL_ATTRS(ffi::Ffi::Bind().Ctx<Ctx>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>())
                                  .Attr<int64_t>("count_include_pad"),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_global_avg_pool2d_fwd, GlobalAvgFwd,
                              ffi::Ffi::Bind().Ctx<Ctx>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>(),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_global_avg_pool2d_bwd, GlobalAvgBwd,
                              ffi::Ffi::Bind().Ctx<Ctx>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>(),
                              JAX_MPS_ONLY_KERNELS);

#undef POOL_ATTRS

}  // namespace jax_mps::cuda
