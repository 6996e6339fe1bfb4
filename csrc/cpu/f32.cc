// float16 / bfloat16 <-> float32 conversion for the CPU backend (cpu/f32.h).
#include "cpu/f32.h"

#include "cpu/kernel_util.h"

namespace jax_mps::cpu {

void ToF32(ffi::DataType t, const void* src, float* dst, int64_t n) {
  if (t == ffi::F16) {
    const _Float16* s = static_cast<const _Float16*>(src);
    ParallelFor(n, n, [&](int64_t i) { dst[i] = static_cast<float>(s[i]); });
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    ParallelFor(n, n, [&](int64_t i) { dst[i] = Bf16ToF32(s[i]); });
  }
}

void FromF32(ffi::DataType t, const float* src, void* dst, int64_t n) {
  if (t == ffi::F16) {
    _Float16* d = static_cast<_Float16*>(dst);
    ParallelFor(n, n, [&](int64_t i) { d[i] = static_cast<_Float16>(src[i]); });
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    ParallelFor(n, n, [&](int64_t i) { d[i] = F32ToBf16(src[i]); });
  }
}

}  // namespace jax_mps::cpu
