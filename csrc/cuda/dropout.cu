// Inverted dropout on CUDA: the same Philox4x32-10 counter stream as the CPU kernel
// (runtime/losses.h), so one key gives the same mask on every backend; the mask is bit-packed
// (bit j of byte b <-> element 8b + j). One thread makes one mask byte (8 elements, 2 blocks).
#include "cuda/common.cuh"
#include "runtime/losses.h"

namespace jax_mps::cuda {
namespace {

__device__ __forceinline__ uint4 Philox(uint64_t block, uint32_t k0, uint32_t k1, uint32_t k2, uint32_t k3) {
  uint32_t c0 = uint32_t(block), c1 = uint32_t(block >> 32), c2 = k2, c3 = k3;
  uint32_t r0 = k0, r1 = k1;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ r0, n2 = hi0 ^ c3 ^ r1;
    c1 = lo1;
    c3 = lo0;
    c0 = n0;
    c2 = n2;
    r0 += 0x9E3779B9u;
    r1 += 0xBB67AE85u;
  }
  return make_uint4(c0, c1, c2, c3);
}

template <typename T>
__global__ void DropoutFwdK(int64_t n, const uint32_t* key, int key_words, uint64_t threshold, float scale,
                            const T* x, T* y, uint8_t* mask) {
  const uint32_t k0 = key[0], k1 = key[1];
  const uint32_t k2 = key_words == 4 ? key[2] : 0u, k3 = key_words == 4 ? key[3] : 0u;
  const int64_t nbytes = (n + 7) / 8;
  JAX_MPS_GRID_STRIDE(b, nbytes) {
    const uint4 u0 = Philox(uint64_t(2 * b), k0, k1, k2, k3), u1 = Philox(uint64_t(2 * b + 1), k0, k1, k2, k3);
    const uint32_t u[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
    uint8_t bits = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const bool keep = uint64_t(u[j]) < threshold;
      bits |= uint8_t(keep) << j;
      const int64_t i = 8 * b + j;
      if (i < n) y[i] = St<T>(keep ? Ld(x[i]) * scale : 0.f);
    }
    mask[b] = bits;
  }
}

template <typename T>
__global__ void DropoutBwdK(int64_t n, const uint8_t* mask, float scale, const T* g, T* dx) {
  JAX_MPS_GRID_STRIDE(i, n) dx[i] = St<T>((mask[i >> 3] >> (i & 7)) & 1 ? Ld(g[i]) * scale : 0.f);
}

ffi::Error DropoutFwd(Ctx ctx, ffi::AnyBuffer key, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                      ffi::Result<ffi::AnyBuffer> mask, int64_t threshold, float scale) {
  const char* op = "dropout";
  DropoutDesc desc;
  JAX_MPS_CHECK(key.element_type() == ffi::U32, op, ": key data must be uint32");
  JAX_MPS_CHECK(mask->element_type() == ffi::U8, op, ": mask must be uint8");
  JAX_MPS_RETURN_IF_ERROR(MakeDropoutDesc(threshold, scale, int64_t(key.element_count()), &desc));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "y", *y, x.element_type()));
  const int64_t n = x.element_count(), nbytes = (n + 7) / 8;
  JAX_MPS_CHECK(int64_t(mask->element_count()) == nbytes, op, ": mask must have ", nbytes, " bytes for ", n,
                " elements, got ", mask->element_count());
  JAX_MPS_CHECK(int64_t(y->element_count()) == n, op, ": y size mismatch");
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    DropoutFwdK<T><<<Blocks(nbytes), 256, 0, ctx.stream>>>(n, Ptr<const uint32_t>(key), int(key.element_count()),
                                                         desc.threshold, desc.scale, Ptr<const T>(x), Ptr<T>(*y),
                                                         Ptr<uint8_t>(*mask));
    return LaunchStatus(op);
  });
}

ffi::Error DropoutBwd(Ctx ctx, ffi::AnyBuffer mask, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dx, float scale) {
  const char* op = "dropout_bwd";
  JAX_MPS_CHECK(std::isfinite(scale) && scale >= 1.f, op, ": scale must be finite and >= 1, got ", scale);
  JAX_MPS_CHECK(mask.element_type() == ffi::U8, op, ": mask must be uint8");
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "dx", *dx, g.element_type()));
  const int64_t n = g.element_count(), nbytes = (n + 7) / 8;
  JAX_MPS_CHECK(int64_t(mask.element_count()) == nbytes, op, ": mask must have ", nbytes, " bytes for ", n,
                " elements, got ", mask.element_count());
  JAX_MPS_CHECK(int64_t(dx->element_count()) == n, op, ": dx size mismatch");
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, g.element_type(), [&](auto t) {
    using T = decltype(t);
    DropoutBwdK<T><<<Blocks(n), 256, 0, ctx.stream>>>(n, Ptr<const uint8_t>(mask), scale, Ptr<const T>(g),
                                                    Ptr<T>(*dx));
    return LaunchStatus(op);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_dropout_fwd, DropoutFwd,
                              ffi::Ffi::Bind().Ctx<Ctx>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("threshold").Attr<float>("scale"),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_dropout_bwd, DropoutBwd,
                              ffi::Ffi::Bind().Ctx<Ctx>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Attr<float>("scale"),
                              JAX_MPS_ONLY_KERNELS);

}  // namespace jax_mps::cuda
