// Inverted dropout on CUDA: the same Philox4x32-10 counter stream as the CPU kernel
// (runtime/dropout.h), so one key gives the same mask on every backend; the mask is bit-packed
// (bit j of byte b <-> element 8b + j). One thread makes one mask byte (8 elements, 2 blocks).
#include "cuda/backend.h"
#include "cuda/common.cuh"

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

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {
using namespace cuda;  // NOLINT: the kernels above

ffi::Error Cuda::DropoutFwd(Cuda::Ctx s, const DropoutDesc& d, Buf key, Buf x, Buf y, Buf mask) {
  const char* op = "dropout";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  const int64_t nbytes = (d.n + 7) / 8;
  if (d.n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    DropoutFwdK<T><<<Blocks(nbytes), 256, 0, s>>>(d.n, Ptr<const uint32_t>(key), int(d.key_words), d.threshold,
                                                 d.scale, Ptr<const T>(x), Ptr<T>(y), Ptr<uint8_t>(mask));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::DropoutBwd(Cuda::Ctx s, const DropoutDesc& d, Buf mask, Buf g, Buf dx) {
  const char* op = "dropout_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, g, {&dx}));
  if (d.n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, g.element_type(), [&](auto t) {
    using T = decltype(t);
    DropoutBwdK<T><<<Blocks(d.n), 256, 0, s>>>(d.n, Ptr<const uint8_t>(mask), d.scale, Ptr<const T>(g), Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

}  // namespace jax_mps
