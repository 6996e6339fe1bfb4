// Small building blocks shared by our own CPU kernels.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace jax_mps::cpu {

// Hot element-wise kernels are compiled for several ISAs and picked at load time (the build has
// no -march: wheels must run on any x86-64).
#if defined(__x86_64__)
#define JAX_MPS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JAX_MPS_CLONES
#endif

constexpr int64_t kParallelMin = 32768;  // elements below which threads cost more than they save

// Runs fn(i) for i in [0, n): OpenMP threads only when `work` is large, and no parallel region at
// all otherwise (even a one-thread region costs microseconds, which dominate small batches).
template <typename F>
void ParallelFor(int64_t n, int64_t work, F&& fn) {
  if (work > kParallelMin) {
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) fn(i);
  } else {
    for (int64_t i = 0; i < n; ++i) fn(i);
  }
}

// exp with Cephes' range reduction exp(x) = 2^n exp(r) and polynomial (~1 ulp), branch-free so
// loops calling it vectorise; arguments are clamped to [-87.3, 88.3].
inline __attribute__((always_inline)) float FastExp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // 1.5 * 2^23: round to nearest
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &bits, sizeof s);
  return p * s;
}

// out = y > 0 ? dy : 0 (ReLU's gradient from its output). dy is read unconditionally so the
// select vectorises: a conditional load would keep the loop scalar and branchy.
inline void ReluGradFromOutput(int64_t n, const float* __restrict y, const float* __restrict dy,
                               float* __restrict out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float d = dy[i];
    out[i] = y[i] > 0.f ? d : 0.f;
  }
}

// XLA hands large results to us as fresh, untouched pages (glibc mmaps big blocks per call), and
// first-touch faults on 4 KiB pages cost ~20% of an LSTM forward at T100 B64 H256. Asking for huge
// pages before the first write makes that one fault per 2 MiB. Advice only: ignored where unsupported.
inline void AdviseHugePages(void* p, size_t bytes) {
#ifdef __linux__
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 2 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace jax_mps::cpu
