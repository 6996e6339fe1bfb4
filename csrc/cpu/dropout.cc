// Inverted dropout on the CPU: the keep mask comes from a counter-based generator (Philox4x32-10,
// see runtime/losses.h), so it depends on (key, element index) only; it is returned bit-packed
// (bit j of byte b <-> element 8b + j) for the backward pass.
#include <cmath>

#include "runtime/losses.h"
#include "runtime/registry.h"

namespace jax_mps::cpu {
namespace {

constexpr int64_t kParallelMinBytes = 4096;  // mask bytes (32k elements) below which we stay serial

ffi::Error DropoutFwd(ffi::Buffer<ffi::U32> key, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                      ffi::ResultBuffer<ffi::U8> mask, int64_t threshold, float scale) {
  DropoutDesc desc;
  JAX_MPS_RETURN_IF_ERROR(MakeDropoutDesc(threshold, scale, static_cast<int64_t>(key.element_count()), &desc));
  const int64_t n = x.element_count();
  const int64_t nbytes = (n + 7) / 8;
  JAX_MPS_CHECK(static_cast<int64_t>(mask->element_count()) == nbytes, "dropout: mask must have ", nbytes,
                " bytes for ", n, " elements, got ", mask->element_count());
  JAX_MPS_CHECK(static_cast<int64_t>(y->element_count()) == n, "dropout: y size mismatch");
  const uint32_t* k = key.typed_data();
  const uint32_t k0 = k[0], k1 = k[1];
  const uint32_t k2 = key.element_count() == 4 ? k[2] : 0u, k3 = key.element_count() == 4 ? k[3] : 0u;
  const uint64_t thr = desc.threshold;
  const float s = desc.scale;
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
  uint8_t* mp = mask->typed_data();
#pragma omp parallel for if (nbytes > kParallelMinBytes)
  for (int64_t b = 0; b < nbytes; ++b) {
    uint8_t bits = 0;
    for (int h = 0; h < 2; ++h) {
      const uint64_t blk = uint64_t(b) * 2 + h;  // 4 elements per Philox block
      Philox4x32 r = Philox(uint32_t(blk), uint32_t(blk >> 32), k2, k3, k0, k1);
      for (int q = 0; q < 4; ++q) {
        const int j = h * 4 + q;
        const int64_t i = b * 8 + j;
        if (i >= n) break;
        const bool keep = uint64_t(r.v[q]) < thr;
        bits |= uint8_t(keep) << j;
        yp[i] = keep ? xp[i] * s : 0.f;
      }
    }
    mp[b] = bits;
  }
  return ffi::Error::Success();
}

ffi::Error DropoutBwd(ffi::Buffer<ffi::U8> mask, ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dx,
                      float scale) {
  JAX_MPS_CHECK(std::isfinite(scale) && scale >= 1.f, "dropout_bwd: scale must be finite and >= 1, got ", scale);
  const int64_t n = g.element_count();
  const int64_t nbytes = (n + 7) / 8;
  JAX_MPS_CHECK(static_cast<int64_t>(mask.element_count()) == nbytes, "dropout_bwd: mask must have ", nbytes,
                " bytes for ", n, " elements, got ", mask.element_count());
  JAX_MPS_CHECK(static_cast<int64_t>(dx->element_count()) == n, "dropout_bwd: dx size mismatch");
  const uint8_t* mp = mask.typed_data();
  const float* gp = g.typed_data();
  float* dp = dx->typed_data();
#pragma omp parallel for if (nbytes > kParallelMinBytes)
  for (int64_t i = 0; i < n; ++i) dp[i] = (mp[i >> 3] >> (i & 7)) & 1 ? gp[i] * scale : 0.f;
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kDropoutFwd, DropoutFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("threshold")
                                  .Attr<float>("scale"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kDropoutBwd, DropoutBwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

JAX_MPS_REGISTER("jax_mps_dropout_fwd", "cpu", kDropoutFwd);
JAX_MPS_REGISTER("jax_mps_dropout_bwd", "cpu", kDropoutBwd);

}  // namespace jax_mps::cpu
