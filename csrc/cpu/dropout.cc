// Inverted dropout on the CPU: the keep mask comes from a counter-based generator (Philox4x32-10,
// see runtime/dropout.h), so it depends on (key, element index) only; it is returned bit-packed
// (bit j of byte b <-> element 8b + j) for the backward pass.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/backend.h"
#include "cpu/f32.h"
#include "cpu/kernel_util.h"

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
  // Philox costs ~1.7 ns an element on one thread (~15x a memory-bound pass): weighted as such.
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
