// 2-D upsampling of NHWC by integer factors on CUDA, with the CPU kernel's definitions: nearest
// (source index dst / scale) and bilinear (torch align_corners=False: src = (dst + 0.5) / scale
// - 0.5 clamped at 0, neighbour clamped at the last row/column, the element itself at scale 1).
// Backward passes gather (each input element sums the outputs that read it), so dx is written once
// without atomics.
#include "cuda/backend.h"
#include "cuda/common.cuh"

namespace jax_mps::cuda {
namespace {

// Tap of output o along an axis of `in` inputs: rows i0, i1 with weights 1 - l1, l1.
__device__ __forceinline__ void Tap(int64_t o, int64_t in, int64_t scale, int64_t* i0, int64_t* i1, float* l1) {
  float src = __fmaf_rn(1.f / float(scale), float(o) + 0.5f, -0.5f);  // one rounding, as resample.cc
  if (src < 0.f) src = 0.f;
  int64_t a = int64_t(src);
  if (a > in - 1) a = in - 1;
  *i0 = a;
  *i1 = a + (scale > 1 && a < in - 1 ? 1 : 0);  // scale 1: the element itself (resample.cc)
  *l1 = src - float(a);
}

// Weights of the taps of output o that read input x along one axis, into w; returns their count
// (both taps of a clamped edge or of scale 1 read the same input). Zero weights are kept, so that
// an inf cotangent gives NaN as the CPU's scatter (and torch) does.
__device__ __forceinline__ int TapWeights(int64_t o, int64_t x, int64_t in, int64_t scale, float w[2]) {
  int64_t i0, i1;
  float l1;
  Tap(o, in, scale, &i0, &i1, &l1);
  int n = 0;
  if (i0 == x) w[n++] = 1.f - l1;
  if (i1 == x) w[n++] = l1;
  return n;
}

template <typename T>
__global__ void UpFwdK(Upsample2DDesc d, const T* x, T* y) {
  const int64_t oh = d.h * d.sh, ow = d.w * d.sw, c = d.c;
  JAX_MPS_GRID_STRIDE(o, d.n * oh * ow * c) {
    const int64_t k = o % c, j = (o / c) % ow, i = (o / (c * ow)) % oh, n = o / (c * ow * oh);
    const T* xn = x + n * d.h * d.w * c + k;
    if (!d.bilinear) {
      y[o] = xn[((i / d.sh) * d.w + j / d.sw) * c];
      continue;
    }
    int64_t h0, h1, w0, w1;
    float b, q;
    Tap(i, d.h, d.sh, &h0, &h1, &b);
    Tap(j, d.w, d.sw, &w0, &w1, &q);
    const float a = 1.f - b, p = 1.f - q;
    y[o] = St<T>(a * (p * Ld(xn[(h0 * d.w + w0) * c]) + q * Ld(xn[(h0 * d.w + w1) * c])) +
                 b * (p * Ld(xn[(h1 * d.w + w0) * c]) + q * Ld(xn[(h1 * d.w + w1) * c])));
  }
}

template <typename T>
__global__ void UpBwdK(Upsample2DDesc d, const T* dy, T* dx) {
  const int64_t oh = d.h * d.sh, ow = d.w * d.sw, c = d.c;
  JAX_MPS_GRID_STRIDE(e, d.n * d.h * d.w * c) {
    const int64_t k = e % c, x = (e / c) % d.w, y = (e / (c * d.w)) % d.h, n = e / (c * d.w * d.h);
    const T* g = dy + n * oh * ow * c + k;
    float acc = 0.f;
    if (!d.bilinear) {
      for (int64_t a = 0; a < d.sh; ++a)
        for (int64_t b = 0; b < d.sw; ++b) acc += Ld(g[((y * d.sh + a) * ow + x * d.sw + b) * c]);
    } else {
      // Outputs reading input row y lie in [(y - 1) * s, (y + 2) * s) (plus the clamped edges).
      const int64_t i0 = (y - 1) * d.sh > 0 ? (y - 1) * d.sh : 0, i1 = (y + 2) * d.sh < oh ? (y + 2) * d.sh : oh;
      const int64_t j0 = (x - 1) * d.sw > 0 ? (x - 1) * d.sw : 0, j1 = (x + 2) * d.sw < ow ? (x + 2) * d.sw : ow;
      float wh[2], ww[2];
      for (int64_t i = i0; i < i1; ++i) {
        const int nh = TapWeights(i, y, d.h, d.sh, wh);
        for (int64_t j = j0; j < j1 && nh; ++j) {
          const int nw = TapWeights(j, x, d.w, d.sw, ww);
          if (!nw) continue;
          const float v = Ld(g[(i * ow + j) * c]);
          for (int a = 0; a < nh; ++a)
            for (int b = 0; b < nw; ++b) acc += wh[a] * ww[b] * v;
        }
      }
    }
    dx[e] = St<T>(acc);
  }
}

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {
using namespace cuda;  // NOLINT: the kernels above

ffi::Error Cuda::UpsampleFwd(Cuda::Ctx s, const Upsample2DDesc& d, Buf x, Buf y) {
  const char* op = "upsample2d_fwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  const int64_t n = y.element_count();
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    UpFwdK<T><<<Blocks(n), 256, 0, s>>>(d, Ptr<const T>(x), Ptr<T>(y));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::UpsampleBwd(Cuda::Ctx s, const Upsample2DDesc& d, Buf dy, Buf dx) {
  const char* op = "upsample2d_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, dy, {&dx}));
  const int64_t n = dx.element_count();
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, dy.element_type(), [&](auto t) {
    using T = decltype(t);
    UpBwdK<T><<<Blocks(n), 256, 0, s>>>(d, Ptr<const T>(dy), Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

}  // namespace jax_mps
