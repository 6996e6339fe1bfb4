// Max / average pooling (2-D, NHWC; 1-D is H == 1) and global average pooling on the CPU.
// Own kernels: at the small channel counts of conv nets (6, 16, ...) oneDNN's nhwc pooling and
// its workspace layout buy nothing, and a plain loop over the window with channels innermost
// is memory-bound already. Max pooling keeps an int32 argmax (spatial index ih * W + iw per
// (n, c)) for the backward pass; ties go to the first maximum in window order, NaN wins.
#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu/dnnl_common.h"
#include "runtime/pooling.h"
#include "runtime/registry.h"

namespace jax_mps::cpu {
namespace {

using Span = ffi::Span<const int64_t>;

// Below this many window reads a single thread is faster than waking the OpenMP team.
constexpr int64_t kParallelWork = 1 << 15;

// Clipped window [h0, h1) x [w0, w1) of output (i, j).
struct Win {
  int64_t h0, h1, w0, w1;
};
inline Win Window(const Pool2DDesc& d, int64_t i, int64_t j) {
  const int64_t hs = i * d.sh - d.pt, ws = j * d.sw - d.pl;
  return {std::max<int64_t>(hs, 0), std::min(hs + d.kh, d.h), std::max<int64_t>(ws, 0), std::min(ws + d.kw, d.w)};
}

inline int64_t Work(const Pool2DDesc& d) { return d.n * d.oh * d.ow * d.c * d.kh * d.kw; }

void MaxFwd(const Pool2DDesc& d, const float* x, float* y, int32_t* idx) {
  const int64_t c = d.c;
#pragma omp parallel for collapse(2) if (Work(d) > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < d.oh; ++i) {
      const float* xn = x + n * d.h * d.w * c;
      for (int64_t j = 0; j < d.ow; ++j) {
        const Win win = Window(d, i, j);
        const int64_t o = ((n * d.oh + i) * d.ow + j) * c;
        float* yr = y + o;
        int32_t* ir = idx + o;
        // Start from the first real element (every window holds one): -inf inputs keep a gradient.
        const int64_t first = win.h0 * d.w + win.w0;
        std::memcpy(yr, xn + first * c, c * sizeof(float));
        for (int64_t k = 0; k < c; ++k) ir[k] = static_cast<int32_t>(first);
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) {
            const int64_t s = ih * d.w + iw;
            const float* xr = xn + s * c;
            for (int64_t k = 0; k < c; ++k) {
              const float v = xr[k], m = yr[k];
              if (v > m || (v != v && m == m)) {
                yr[k] = v;
                ir[k] = static_cast<int32_t>(s);
              }
            }
          }
      }
    }
}

void MaxBwd(const Pool2DDesc& d, const int32_t* idx, const float* dy, float* dx) {
  const int64_t c = d.c, hw = d.h * d.w;
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

inline float Divisor(const Pool2DDesc& d, const Win& win, bool include_pad) {
  return static_cast<float>(include_pad ? d.kh * d.kw : (win.h1 - win.h0) * (win.w1 - win.w0));
}

void AvgFwd(const Pool2DDesc& d, bool include_pad, const float* x, float* y) {
  const int64_t c = d.c;
#pragma omp parallel for collapse(2) if (Work(d) > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < d.oh; ++i) {
      const float* xn = x + n * d.h * d.w * c;
      for (int64_t j = 0; j < d.ow; ++j) {
        const Win win = Window(d, i, j);
        float* yr = y + ((n * d.oh + i) * d.ow + j) * c;
        for (int64_t k = 0; k < c; ++k) yr[k] = 0.f;
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) {
            const float* xr = xn + (ih * d.w + iw) * c;
            for (int64_t k = 0; k < c; ++k) yr[k] += xr[k];
          }
        const float inv = 1.f / Divisor(d, win, include_pad);
        for (int64_t k = 0; k < c; ++k) yr[k] *= inv;
      }
    }
}

void AvgBwd(const Pool2DDesc& d, bool include_pad, const float* dy, float* dx) {
  const int64_t c = d.c, hw = d.h * d.w;
#pragma omp parallel for if (Work(d) > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n) {
    float* dxn = dx + n * hw * c;
    std::memset(dxn, 0, hw * c * sizeof(float));
    for (int64_t i = 0; i < d.oh; ++i)
      for (int64_t j = 0; j < d.ow; ++j) {
        const Win win = Window(d, i, j);
        const float* g = dy + ((n * d.oh + i) * d.ow + j) * c;
        const float inv = 1.f / Divisor(d, win, include_pad);
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) {
            float* r = dxn + (ih * d.w + iw) * c;
            for (int64_t k = 0; k < c; ++k) r[k] += g[k] * inv;
          }
      }
  }
}

ffi::Error MaxPoolFwd(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::S32> idx,
                      Span window, Span stride, Span pad_lo, Span pad_hi) {
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePool2D("max_pool_fwd", x.dimensions(), y->dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_CHECK(idx->dimensions().size() == 4 && idx->element_count() == y->element_count(),
                "max_pool_fwd: argmax must have the output's shape ", DimsStr(y->dimensions()));
  JAX_MPS_CHECK(d.h * d.w <= std::numeric_limits<int32_t>::max(), "max_pool_fwd: H * W must fit in int32");
  MaxFwd(d, x.typed_data(), y->typed_data(), idx->typed_data());
  return ffi::Error::Success();
}

ffi::Error MaxPoolBwd(ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                      Span window, Span stride, Span pad_lo, Span pad_hi) {
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePool2D("max_pool_bwd", dx->dimensions(), dy.dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_CHECK(idx.element_count() == dy.element_count(), "max_pool_bwd: argmax must have dy's shape ",
                DimsStr(dy.dimensions()), ", got ", DimsStr(idx.dimensions()));
  MaxBwd(d, idx.typed_data(), dy.typed_data(), dx->typed_data());
  return ffi::Error::Success();
}

ffi::Error AvgPoolFwd(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, Span window, Span stride, Span pad_lo,
                      Span pad_hi, int64_t count_include_pad) {
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePool2D("avg_pool_fwd", x.dimensions(), y->dimensions(), window, stride, pad_lo, pad_hi, &d));
  AvgFwd(d, count_include_pad != 0, x.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

ffi::Error AvgPoolBwd(ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx, Span window, Span stride, Span pad_lo,
                      Span pad_hi, int64_t count_include_pad) {
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePool2D("avg_pool_bwd", dx->dimensions(), dy.dimensions(), window, stride, pad_lo, pad_hi, &d));
  AvgBwd(d, count_include_pad != 0, dy.typed_data(), dx->typed_data());
  return ffi::Error::Success();
}

// Global average pooling: (N, H, W, C) -> (N, C).
ffi::Error CheckGlobal(const char* op, Span in, Span out) {
  JAX_MPS_CHECK(in.size() == 4, op, ": input must have rank 4 (N, H, W, C), got ", DimsStr(in));
  JAX_MPS_CHECK(in[1] * in[2] > 0, op, ": H * W must be > 0, got ", DimsStr(in));
  JAX_MPS_CHECK(out.size() == 2 && out[0] == in[0] && out[1] == in[3], op, ": output must have shape (", in[0], ", ",
                in[3], "), got ", DimsStr(out));
  return ffi::Error::Success();
}

ffi::Error GlobalAvgFwd(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  JAX_MPS_RETURN_IF_ERROR(CheckGlobal("global_avg_pool2d_fwd", x.dimensions(), y->dimensions()));
  auto dims = x.dimensions();
  const int64_t n = dims[0], hw = dims[1] * dims[2], c = dims[3];
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
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

ffi::Error GlobalAvgBwd(ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx) {
  JAX_MPS_RETURN_IF_ERROR(CheckGlobal("global_avg_pool2d_bwd", dx->dimensions(), dy.dimensions()));
  auto dims = dx->dimensions();
  const int64_t n = dims[0], hw = dims[1] * dims[2], c = dims[3];
  const float* g = dy.typed_data();
  float* dxp = dx->typed_data();
  const float inv = 1.f / static_cast<float>(hw);
#pragma omp parallel for if (n * hw * c > kParallelWork)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t s = 0; s < hw; ++s) {
      float* r = dxp + (b * hw + s) * c;
      for (int64_t k = 0; k < c; ++k) r[k] = g[b * c + k] * inv;
    }
  return ffi::Error::Success();
}

}  // namespace

// Binding's move constructor is private, so the shared attributes are a macro, not a function.
#define POOL_ATTRS(b) \
  b.Attr<Span>("window").Attr<Span>("stride").Attr<Span>("pad_lo").Attr<Span>("pad_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(kMaxPoolFwd, MaxPoolFwd,
                              POOL_ATTRS(ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                            .Ret<ffi::Buffer<ffi::S32>>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kMaxPoolBwd, MaxPoolBwd,
                              POOL_ATTRS(ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::S32>>().Arg<ffi::Buffer<ffi::F32>>()
                                            .Ret<ffi::Buffer<ffi::F32>>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kAvgPoolFwd, AvgPoolFwd,
                              POOL_ATTRS(ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>())
                                  .Attr<int64_t>("count_include_pad"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kAvgPoolBwd, AvgPoolBwd,
                              POOL_ATTRS(ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>())
                                  .Attr<int64_t>("count_include_pad"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kGlobalAvgFwd, GlobalAvgFwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(kGlobalAvgBwd, GlobalAvgBwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

#undef POOL_ATTRS

JAX_MPS_REGISTER("jax_mps_max_pool_fwd", "cpu", kMaxPoolFwd);
JAX_MPS_REGISTER("jax_mps_max_pool_bwd", "cpu", kMaxPoolBwd);
JAX_MPS_REGISTER("jax_mps_avg_pool_fwd", "cpu", kAvgPoolFwd);
JAX_MPS_REGISTER("jax_mps_avg_pool_bwd", "cpu", kAvgPoolBwd);
JAX_MPS_REGISTER("jax_mps_global_avg_pool2d_fwd", "cpu", kGlobalAvgFwd);
JAX_MPS_REGISTER("jax_mps_global_avg_pool2d_bwd", "cpu", kGlobalAvgBwd);

}  // namespace jax_mps::cpu
