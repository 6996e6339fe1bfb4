// 2-D upsampling of NHWC by integer factors on the CPU: nearest (torch 'nearest': source
// index dst / scale) and bilinear (torch align_corners=False: src = (dst + 0.5) / scale - 0.5,
// clamped at 0, neighbour clamped at the last row/column, and the element itself at scale 1).
// Zero-weight taps are multiplied like the others (0 * inf is NaN, as in torch). Own kernels,
// channels innermost.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string_view>
#include <vector>

#include "cpu/backend.h"
#include "cpu/f32.h"

namespace jax_mps::cpu {
namespace {

constexpr int64_t kParallelWork = 1 << 20;  // see pooling.cc

// Linear interpolation taps of each output row/column along one axis.
struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<float> l1;
};

Taps MakeTaps(int64_t in, int64_t scale) {
  Taps t;
  const int64_t out = in * scale;
  t.i0.resize(out);
  t.i1.resize(out);
  t.l1.resize(out);
  const float r = 1.f / static_cast<float>(scale);
  for (int64_t o = 0; o < out; ++o) {
    // One rounding (fma), as torch's compiled kernel: at scale 3 the second tap's weight is then
    // 1.5e-8, not 0, which decides inf against NaN next to an inf.
    float src = std::fma(r, static_cast<float>(o) + 0.5f, -0.5f);
    if (src < 0.f) src = 0.f;
    int64_t i0 = std::min<int64_t>(static_cast<int64_t>(src), in - 1);
    t.i0[o] = i0;
    // At scale 1 the (weight 0) neighbour is the element itself, as torch's: an inf or NaN stays
    // where it is instead of reaching the next row/column through 0 * inf.
    t.i1[o] = i0 + (scale > 1 && i0 < in - 1 ? 1 : 0);
    t.l1[o] = src - static_cast<float>(i0);
  }
  return t;
}

void NearestFwd(const Upsample2DDesc& d, const float* x, float* y) {
  const int64_t oh = d.h * d.sh, ow = d.w * d.sw, c = d.c;
#pragma omp parallel for collapse(2) if (d.n * oh * ow * c > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < oh; ++i) {
      const float* xr = x + (n * d.h + i / d.sh) * d.w * c;
      float* yr = y + (n * oh + i) * ow * c;
      for (int64_t j = 0; j < ow; ++j) std::memcpy(yr + j * c, xr + (j / d.sw) * c, c * sizeof(float));
    }
}

void NearestBwd(const Upsample2DDesc& d, const float* dy, float* dx) {
  const int64_t oh = d.h * d.sh, ow = d.w * d.sw, c = d.c;
#pragma omp parallel for collapse(2) if (d.n * oh * ow * c > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < d.h; ++i) {
      float* dr = dx + (n * d.h + i) * d.w * c;
      std::memset(dr, 0, d.w * c * sizeof(float));
      for (int64_t a = 0; a < d.sh; ++a) {
        const float* g = dy + (n * oh + i * d.sh + a) * ow * c;
        for (int64_t j = 0; j < ow; ++j) {
          float* r = dr + (j / d.sw) * c;
          for (int64_t k = 0; k < c; ++k) r[k] += g[j * c + k];
        }
      }
    }
}

void BilinearFwd(const Upsample2DDesc& d, const float* x, float* y) {
  const int64_t oh = d.h * d.sh, ow = d.w * d.sw, c = d.c;
  const Taps th = MakeTaps(d.h, d.sh), tw = MakeTaps(d.w, d.sw);
#pragma omp parallel for collapse(2) if (d.n * oh * ow * c > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < oh; ++i) {
      const float* r0 = x + (n * d.h + th.i0[i]) * d.w * c;
      const float* r1 = x + (n * d.h + th.i1[i]) * d.w * c;
      const float b = th.l1[i], a = 1.f - b;
      float* yr = y + (n * oh + i) * ow * c;
      for (int64_t j = 0; j < ow; ++j) {
        const int64_t j0 = tw.i0[j] * c, j1 = tw.i1[j] * c;
        const float q = tw.l1[j], p = 1.f - q;
        for (int64_t k = 0; k < c; ++k)
          yr[j * c + k] = a * (p * r0[j0 + k] + q * r0[j1 + k]) + b * (p * r1[j0 + k] + q * r1[j1 + k]);
      }
    }
}

void BilinearBwd(const Upsample2DDesc& d, const float* dy, float* dx) {
  const int64_t oh = d.h * d.sh, ow = d.w * d.sw, c = d.c;
  const Taps th = MakeTaps(d.h, d.sh), tw = MakeTaps(d.w, d.sw);
#pragma omp parallel for if (d.n * oh * ow * c > kParallelWork)
  for (int64_t n = 0; n < d.n; ++n) {
    float* dn = dx + n * d.h * d.w * c;
    std::memset(dn, 0, d.h * d.w * c * sizeof(float));
    for (int64_t i = 0; i < oh; ++i) {
      float* r0 = dn + th.i0[i] * d.w * c;
      float* r1 = dn + th.i1[i] * d.w * c;
      const float b = th.l1[i], a = 1.f - b;
      const float* g = dy + (n * oh + i) * ow * c;
      for (int64_t j = 0; j < ow; ++j) {
        const int64_t j0 = tw.i0[j] * c, j1 = tw.i1[j] * c;
        const float q = tw.l1[j], p = 1.f - q;
        for (int64_t k = 0; k < c; ++k) {
          const float v = g[j * c + k];
          r0[j0 + k] += a * p * v;
          r0[j1 + k] += a * q * v;
          r1[j0 + k] += b * p * v;
          r1[j1 + k] += b * q * v;
        }
      }
    }
  }
}

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

ffi::Error Cpu::UpsampleFwd(Ctx, const Upsample2DDesc& d, Buf x, Buf y) {
  if (x.element_count() == 0) return ffi::Error::Success();
  F32In xf(x);
  F32Out yf(y);
  (d.bilinear ? BilinearFwd : NearestFwd)(d, xf.get(), yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::UpsampleBwd(Ctx, const Upsample2DDesc& d, Buf dy, Buf dx) {
  if (dx.element_count() == 0) return ffi::Error::Success();
  F32In dyf(dy);
  F32Out dxf(dx);
  (d.bilinear ? BilinearBwd : NearestBwd)(d, dyf.get(), dxf.get());
  return ffi::Error::Success();
}

}  // namespace jax_mps
