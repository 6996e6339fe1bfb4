// The CPU computes float16 / bfloat16 in float32: F32In / F32Out view any float buffer as float32
// (the buffer itself when it is float32, else a converted copy; F32Out converts back when it goes
// out of scope). The runtime has checked that every such buffer is a float.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/kernel_util.h"
#include "runtime/backend.h"

namespace jax_mps::cpu {

inline float Bf16ToF32(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t F32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                          // round to nearest even
  return uint16_t(u >> 16);
}

void ToF32(ffi::DataType t, const void* src, float* dst, int64_t n);
void FromF32(ffi::DataType t, const float* src, void* dst, int64_t n);

class F32In {
 public:
  F32In() = default;  // no buffer (yet): Load() it
  explicit F32In(const ffi::AnyBuffer& b) { Load(b); }
  void Load(const ffi::AnyBuffer& b) {
    if (b.element_type() == ffi::F32) {
      p_ = static_cast<const float*>(b.untyped_data());
    } else {
      copy_.resize(b.element_count());
      ToF32(b.element_type(), b.untyped_data(), copy_.data(), int64_t(copy_.size()));
      p_ = copy_.data();
    }
  }
  F32In(const F32In&) = delete;
  F32In& operator=(const F32In&) = delete;
  const float* get() const { return p_; }

 private:
  std::vector<float> copy_;
  const float* p_ = nullptr;
};

class F32Out {
 public:
  // A float32 result is written in place. Where XLA's buffers are fresh pages every step (malloc
  // not retaining freed memory: JAX_MPS_RETAIN_MEMORY=0, or not glibc), large ones are advised into
  // 2 MiB pages first (InceptionV3's training step at batch 8: 176k -> 90k page faults a step).
  explicit F32Out(const ffi::AnyBuffer& b) : buf_(b) {
    if (b.element_type() == ffi::F32) {
      p_ = static_cast<float*>(b.untyped_data());
      AdviseHugePages(p_, b.size_bytes());
    } else {
      copy_.resize(b.element_count());
      p_ = copy_.data();
    }
  }
  ~F32Out() {
    if (!copy_.empty()) FromF32(buf_.element_type(), copy_.data(), buf_.untyped_data(), int64_t(copy_.size()));
  }
  F32Out(const F32Out&) = delete;
  F32Out& operator=(const F32Out&) = delete;
  float* get() const { return p_; }

 private:
  ffi::AnyBuffer buf_;
  std::vector<float> copy_;
  float* p_;
};

}  // namespace jax_mps::cpu
