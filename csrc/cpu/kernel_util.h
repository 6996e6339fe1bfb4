// Small building blocks shared by our own CPU kernels.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <new>

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

// Elements below which threads cost more than they save: waking a sleeping OpenMP worker costs
// ~50 us a parallel region on a 2-vCPU VM (see normalization.cc's kParMin).
constexpr int64_t kParallelMin = 1 << 18;

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

#define JAX_MPS_ALWAYS_INLINE inline __attribute__((always_inline))

JAX_MPS_ALWAYS_INLINE float BitsToFloat(int32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// Cephes' expf: exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln 2 with ln 2 taken as
// kExpLn2Hi - kExpLn2Lo, and exp(r) = 1 + r + r^2 P(r), P's coefficients highest first. Shared by
// FastExp and vec512.h's ExpNonPos512.
constexpr float kExpLog2e = 1.44269504088896341f, kExpLn2Hi = 0.693359375f, kExpLn2Lo = 2.12194440e-4f;
constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// exp with Cephes' range reduction and polynomial above (~1 ulp), branch-free so loops calling it
// vectorise. 2^n is applied as two factors, so results are right from FLT_MAX
// down into the denormals (as XLA's exp); beyond them exact 0 / inf; NaN stays NaN.
JAX_MPS_ALWAYS_INLINE float FastExp(float x) {
  float xc = x > 88.8f ? 88.8f : x;
  xc = xc < -104.f ? -104.f : xc;
  xc = x != x ? 0.f : xc;  // no float->int conversion of NaN below
  const float n = (xc * kExpLog2e + 12582912.f) - 12582912.f;  // 1.5 * 2^23: round to nearest
  const float r = xc - n * kExpLn2Hi + n * kExpLn2Lo;
  float p = kExpP[0];
  for (int q = 1; q < 6; ++q) p = p * r + kExpP[q];
  p = p * r * r + r + 1.f;
  const int32_t ni = static_cast<int32_t>(n), n1 = ni >> 1, n2 = ni - n1;  // each in [-75, 64]
  const float e = p * BitsToFloat((n1 + 127) << 23) * BitsToFloat((n2 + 127) << 23);
  return x != x ? x : e;
}

// log1p(u) for u in [0, 1] (the range softplus needs), ~1 ulp: Cephes' log(1 + t) polynomial on
// t = u for u <= sqrt(2) - 1, else on t = (1 + u) / 2 - 1 plus ln 2. Never rounds 1 + u, so
// tiny u give u.
JAX_MPS_ALWAYS_INLINE float Log1pUnit(float u) {
  const bool hi = u > 0.41421356f;
  const float t = hi ? (u - 1.f) * 0.5f : u, e = hi ? 1.f : 0.f;
  const float z = t * t;
  float y = 7.0376836292e-2f;
  y = y * t - 1.1514610310e-1f;
  y = y * t + 1.1676998740e-1f;
  y = y * t - 1.2420140846e-1f;
  y = y * t + 1.4249322787e-1f;
  y = y * t - 1.6668057665e-1f;
  y = y * t + 2.0000714765e-1f;
  y = y * t - 2.4999993993e-1f;
  y = y * t + 3.3333331174e-1f;
  y = y * t * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return (t + y) + e * 0.693359375f;
}

// expm1(x) for x <= 0 (ELU), ~1 ulp: Taylor series to x^8 where exp(x) - 1 would cancel.
JAX_MPS_ALWAYS_INLINE float Expm1NonPos(float x) {
  float p = 1.f / 40320.f;
  p = p * x + 1.f / 5040.f;
  p = p * x + 1.f / 720.f;
  p = p * x + 1.f / 120.f;
  p = p * x + 1.f / 24.f;
  p = p * x + 1.f / 6.f;
  p = p * x + 0.5f;
  const float small = p * x * x + x;
  return x > -0.34657359f ? small : FastExp(x) - 1.f;
}

// erfc(z) for z >= 0 (Numerical Recipes' erfcc, fractional error < 1.2e-7 everywhere); exact 0
// at +inf.
JAX_MPS_ALWAYS_INLINE float ErfcNonNeg(float z) {
  const float t = 1.f / (1.f + 0.5f * z);
  float q = 0.17087277f;
  q = q * t - 0.82215223f;
  q = q * t + 1.48851587f;
  q = q * t - 1.13520398f;
  q = q * t + 0.27886807f;
  q = q * t - 0.18628806f;
  q = q * t + 0.09678418f;
  q = q * t + 0.37409196f;
  q = q * t + 1.00002368f;
  q = q * t - 1.26551223f;
  return t * FastExp(q - z * z);
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

// Bytes held by every ScratchBuffer of every thread (reported by _jax_mps_cpu.scratch_bytes()).
inline std::atomic<int64_t> g_scratch_bytes{0};

// Per-thread scratch (XLA:CPU runs custom calls on several threads; OpenMP workers each keep
// their own). Grows to the largest request and gives memory back once calls need far less: after
// kDecay consecutive requests below a quarter of its size, spanning more than a second since it
// last needed more, it shrinks to the largest of them. So a training step's mix of big and many
// small requests (a conv's scratchpad, then per-chunk GEMMs) never re-allocates, while a big call
// followed by small work does not pin its high-water mark. Blocks of 1 MiB and more are mmap'd so
// that releasing them returns the pages to the OS (glibc would keep them in its heap). Contents
// are uninitialised; a pointer from get() is valid until the next get() on the same buffer.
// A thread that gets no later request (an XLA pool thread left idle) keeps its buffer until it
// runs again: buffers are only ever touched by their own thread.
template <typename T>
class ScratchBuffer {
 public:
  static constexpr int kDecay = 16;
  static constexpr size_t kMapBytes = size_t(1) << 20;

  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { Reset(0); }

  T* get(size_t n) {
    if (n > cap_) {
      Reset(n);
      last_big_ = std::chrono::steady_clock::now();
    } else if (cap_ * sizeof(T) >= kMapBytes && n < cap_ / 4) {
      recent_ = std::max(recent_, n);
      if (++small_ >= kDecay && std::chrono::steady_clock::now() - last_big_ > std::chrono::seconds(1))
        Reset(recent_);
    } else {
      small_ = 0;
      recent_ = 0;
      last_big_ = std::chrono::steady_clock::now();
    }
    return p_;
  }
  size_t capacity() const { return cap_; }

 private:
  void Reset(size_t n) {
    const size_t old = cap_ * sizeof(T), bytes = n * sizeof(T);
    if (p_) {
#ifdef __linux__
      if (old >= kMapBytes) munmap(p_, old); else
#endif
      ::operator delete(p_);
    }
    p_ = nullptr;
    cap_ = 0;
    small_ = 0;
    recent_ = 0;
    g_scratch_bytes -= static_cast<int64_t>(old);
    if (!n) return;
#ifdef __linux__
    if (bytes >= kMapBytes) {
      void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) throw std::bad_alloc();
      AdviseHugePages(m, bytes);
      p_ = static_cast<T*>(m);
    } else
#endif
      p_ = static_cast<T*>(::operator new(bytes));
    cap_ = n;
    g_scratch_bytes += static_cast<int64_t>(bytes);
  }

  T* p_ = nullptr;
  size_t cap_ = 0, recent_ = 0;
  int small_ = 0;
  std::chrono::steady_clock::time_point last_big_{};
};

}  // namespace jax_mps::cpu
