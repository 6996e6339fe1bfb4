// Inverted dropout on the CPU: the keep mask comes from a counter-based generator (Philox4x32-10,
// see runtime/dropout.h), so it depends on (key, element index) only; it is returned bit-packed
// (bit j of byte b <-> element 8b + j) for the backward pass.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/backend.h"
#include "cpu/f32.h"
#include "cpu/kernel_util.h"
#include "cpu/vec512.h"

namespace jax_mps::cpu {
namespace {

constexpr int64_t kChunk = 512;  // elements per work item (a multiple of 8: whole mask bytes)

// Elements [ch * kChunk, ...) of the dropout forward. Compiled per ISA: Philox's 32x32->64-bit
// multiplies are most of the work and widen with the vectors.
JAX_MPS_CLONES void DropoutChunk(int64_t ch, int64_t n, uint64_t block0, uint32_t k0, uint32_t k1, uint32_t k2,
                                 uint32_t k3, bool keep_all, uint32_t thr32, float sc, const float* xp, float* yp,
                                 uint8_t* mp) {
  // Philox4x32-10 on kChunk / 4 blocks at once, rounds outside so the block loop vectorises.
  constexpr int kBlocks = kChunk / 4;
  uint32_t c0[kBlocks], c1[kBlocks], c2[kBlocks], c3[kBlocks], u[kChunk];
  const uint64_t base = block0 + uint64_t(ch) * kBlocks;  // block0: Philox block of element 0
  for (int q = 0; q < kBlocks; ++q) {
    c0[q] = uint32_t(base + q);
    c1[q] = uint32_t((base + q) >> 32);
    c2[q] = k2;
    c3[q] = k3;
  }
  uint32_t r0 = k0, r1 = k1;
  for (int r = 0; r < 10; ++r) {
#pragma omp simd
    for (int q = 0; q < kBlocks; ++q) {
      const uint64_t p0 = uint64_t(0xD2511F53u) * c0[q], p1 = uint64_t(0xCD9E8D57u) * c2[q];
      const uint32_t n0 = uint32_t(p1 >> 32) ^ c1[q] ^ r0, n2 = uint32_t(p0 >> 32) ^ c3[q] ^ r1;
      c1[q] = uint32_t(p1);
      c3[q] = uint32_t(p0);
      c0[q] = n0;
      c2[q] = n2;
    }
    r0 += 0x9E3779B9u;
    r1 += 0xBB67AE85u;
  }
  for (int q = 0; q < kBlocks; ++q) {
    u[4 * q] = c0[q];
    u[4 * q + 1] = c1[q];
    u[4 * q + 2] = c2[q];
    u[4 * q + 3] = c3[q];
  }
  const int64_t i0 = ch * kChunk;
  const int64_t cnt = std::min<int64_t>(kChunk, n - i0);
  const float* __restrict xc = xp + i0;
  float* __restrict yc = yp + i0;
  // Keep tests on the 32-bit u (same width as the floats, so the select vectorises).
#pragma omp simd
  for (int64_t e = 0; e < cnt; ++e) {
    const float v = xc[e] * sc;  // loaded unconditionally: a conditional load keeps the loop scalar
    yc[e] = (keep_all | (u[e] < thr32)) ? v : 0.f;
  }
  for (int64_t b = 0; b * 8 < cnt; ++b) {
    const uint32_t* ub = u + 8 * b;
    uint8_t bits = 0;
    for (int j = 0; j < 8; ++j) bits |= uint8_t((keep_all | (ub[j] < thr32)) << j);  // bits past n are never read
    mp[i0 / 8 + b] = bits;
  }
}

#if defined(__x86_64__)
#define JAX_MPS_AVX512_BMI2 __attribute__((target("avx512f,bmi2")))
#define JAX_MPS_AVX512_BMI2_INLINE __attribute__((target("avx512f,bmi2"), always_inline)) inline

bool HasAvx512Bmi2() {
  static const bool has = HasAvx512() && __builtin_cpu_supports("bmi2");
  return has;
}

// (hi, lo) 32-bit halves of the 64-bit products a * m, lane by lane.
JAX_MPS_AVX512_BMI2_INLINE void MulHiLo512(__m512i a, __m512i m, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// DropoutChunk with Philox on 16 blocks (64 elements) per step in registers: the generic loop's
// 64-bit lane products and array round trips cost ~1.7 ns an element; this ~0.3. The keep bits
// of the four words interleave into element order with pdep; same stream, same results.
JAX_MPS_AVX512_BMI2 void DropoutChunk512(int64_t ch, int64_t n, uint64_t block0, uint32_t k0, uint32_t k1,
                                         uint32_t k2, uint32_t k3, bool keep_all, uint32_t thr32, float sc,
                                         const float* xp, float* yp, uint8_t* mp) {
  const int64_t i0 = ch * kChunk, cnt = std::min<int64_t>(kChunk, n - i0);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(int(0xD2511F53u)), m1 = _mm512_set1_epi32(int(0xCD9E8D57u));
  const __m512i thr = _mm512_set1_epi32(int(thr32));
  const __m512 scale = _mm512_set1_ps(sc);
  for (int64_t e0 = 0; e0 < cnt; e0 += 64) {
    const uint64_t q0 = block0 + uint64_t(i0 + e0) / 4;  // Philox block of element i0 + e0
    const __m512i base_lo = _mm512_set1_epi32(int(uint32_t(q0)));
    __m512i c0 = _mm512_add_epi32(base_lo, lane);
    __m512i c1 = _mm512_set1_epi32(int(uint32_t(q0 >> 32)));
    c1 = _mm512_mask_add_epi32(c1, _mm512_cmplt_epu32_mask(c0, base_lo), c1, _mm512_set1_epi32(1));  // carry
    __m512i c2 = _mm512_set1_epi32(int(k2)), c3 = _mm512_set1_epi32(int(k3));
    uint32_t r0 = k0, r1 = k1;
    for (int r = 0; r < 10; ++r) {
      __m512i hi0, lo0, hi1, lo1;
      MulHiLo512(c0, m0, &hi0, &lo0);
      MulHiLo512(c2, m1, &hi1, &lo1);
      c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(int(r0)), 0x96);  // a ^ b ^ c
      c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(int(r1)), 0x96);
      c1 = lo1;
      c3 = lo0;
      r0 += 0x9E3779B9u;
      r1 += 0xBB67AE85u;
    }
    // Word w of block q is element 4q + w: bit 4q + w of the 64-element keep mask.
    uint64_t keep = ~uint64_t(0);
    if (!keep_all)
      keep = _pdep_u64(_mm512_cmplt_epu32_mask(c0, thr), 0x1111111111111111ull) |
             _pdep_u64(_mm512_cmplt_epu32_mask(c1, thr), 0x2222222222222222ull) |
             _pdep_u64(_mm512_cmplt_epu32_mask(c2, thr), 0x4444444444444444ull) |
             _pdep_u64(_mm512_cmplt_epu32_mask(c3, thr), 0x8888888888888888ull);
    const int64_t m = std::min<int64_t>(64, cnt - e0);
    for (int64_t v = 0; v < m; v += 16) {
      const __mmask16 in = m - v >= 16 ? __mmask16(0xffff) : __mmask16((1u << (m - v)) - 1);
      const __m512 xv = _mm512_maskz_loadu_ps(in, xp + i0 + e0 + v);  // unconditional: a NaN dropped is 0
      _mm512_mask_storeu_ps(yp + i0 + e0 + v, in, _mm512_maskz_mul_ps(__mmask16(keep >> v), xv, scale));
    }
    std::memcpy(mp + (i0 + e0) / 8, &keep, size_t((m + 7) / 8));  // little-endian: byte b = bits 8b..8b+7
  }
}
#endif

// Lane masks of the 8 elements of each mask byte: all ones where the element is kept.
struct ByteLanes {
  uint32_t m[256][8];
  ByteLanes() {
    for (int b = 0; b < 256; ++b)
      for (int j = 0; j < 8; ++j) m[b][j] = (b >> j) & 1 ? ~0u : 0u;
  }
};

// dx = keep ? g * scale : 0 for elements [ch * kChunk, ...): a dropped element is +0 even where g is
// NaN (jnp.where's gradient), so the mask is applied as a bitwise AND, which vectorises (a
// per-element bit shift did not: ~3 ns an element).
JAX_MPS_CLONES void DropoutBwdChunk(int64_t ch, int64_t n, float scale, const uint8_t* mp, const float* gp,
                                    float* dp) {
  static const ByteLanes lanes;
  const int64_t i0 = ch * kChunk, cnt = std::min<int64_t>(kChunk, n - i0), full = cnt / 8;
  for (int64_t b = 0; b < full; ++b) {
    const uint32_t* __restrict m = lanes.m[mp[i0 / 8 + b]];
    const float* __restrict gc = gp + i0 + 8 * b;
    float* __restrict dc = dp + i0 + 8 * b;
#pragma omp simd
    for (int j = 0; j < 8; ++j) {
      uint32_t v;
      const float f = gc[j] * scale;
      std::memcpy(&v, &f, 4);
      v &= m[j];
      std::memcpy(&dc[j], &v, 4);
    }
  }
  for (int64_t e = 8 * full; e < cnt; ++e) {
    const float v = gp[i0 + e] * scale;
    dp[i0 + e] = (mp[(i0 + e) >> 3] >> (e & 7)) & 1 ? v : 0.f;
  }
}

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

ffi::Error Cpu::DropoutFwd(Ctx, const DropoutDesc& d, Buf key, Buf x, Buf y, Buf mask) {
  const int64_t n = d.n;
  const uint32_t* k = static_cast<const uint32_t*>(key.untyped_data());
  const uint32_t k0 = k[0], k1 = k[1];
  const uint32_t k2 = d.key_words == 4 ? k[2] : 0u, k3 = d.key_words == 4 ? k[3] : 0u;
  const uint64_t offset = d.with_offset ? k[d.key_words] | (uint64_t(k[d.key_words + 1]) << 32) : 0;
  JAX_MPS_CHECK(offset % 8 == 0, "dropout_offset: the element offset must be a multiple of 8, got ", offset);
  // u < threshold in 32-bit arithmetic (vectorises); threshold 2^32 keeps everything.
  const bool keep_all = d.threshold >> 32;
  const uint32_t thr32 = uint32_t(d.threshold);
  const float sc = d.scale;
  F32In xf(x);
  F32Out yf(y);
  const float* xp = xf.get();
  float* yp = yf.get();
  uint8_t* mp = static_cast<uint8_t*>(mask.untyped_data());
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
#if defined(__x86_64__)
  if (HasAvx512Bmi2()) {
    // ~0.3 ns an element: weighted as a memory-bound pass.
    ParallelFor(nchunks, n, [&](int64_t ch) {
      DropoutChunk512(ch, n, offset / 4, k0, k1, k2, k3, keep_all, thr32, sc, xp, yp, mp);
    });
    return ffi::Error::Success();
  }
#endif
  // The generic Philox costs ~1.7 ns an element on one thread (~15x a memory-bound pass): weighted as such.
  ParallelFor(nchunks, 4 * n, [&](int64_t ch) {
    DropoutChunk(ch, n, offset / 4, k0, k1, k2, k3, keep_all, thr32, sc, xp, yp, mp);
  });
  return ffi::Error::Success();
}

ffi::Error Cpu::DropoutBwd(Ctx, const DropoutDesc& d, Buf mask, Buf g, Buf dx) {
  const int64_t n = d.n;
  const uint8_t* mp = static_cast<const uint8_t*>(mask.untyped_data());
  F32In gf(g);
  F32Out df(dx);
  const float* gp = gf.get();
  float* dp = df.get();
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  ParallelFor(nchunks, n, [&](int64_t ch) { DropoutBwdChunk(ch, n, d.scale, mp, gp, dp); });
  return ffi::Error::Success();
}

}  // namespace jax_mps
