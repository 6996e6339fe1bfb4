// AVX-512 versions of the transcendental element-wise functions, for kernels whose generic loops
// GCC vectorises poorly (the LSTM cell: five exps and five divisions an element ran at ~12 cycles
// an element; these take ~7). Callers check HasAvx512() and keep a generic path, which
// JAX_MPS_NO_AVX512=1 selects on AVX-512 machines too (tests/test_isa.py runs both).
#pragma once
#if defined(__x86_64__)
#include <cstdlib>
#include <cstring>

#include "cpu/kernel_util.h"
// GCC 12 warns inside its own unmasked AVX-512 intrinsics (_mm512_undefined_ps operands).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define JAX_MPS_AVX512 __attribute__((target("avx512f")))
#define JAX_MPS_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline

namespace jax_mps::cpu {

inline bool HasAvx512() {
  static const bool has = [] {
    const char* off = std::getenv("JAX_MPS_NO_AVX512");
    return __builtin_cpu_supports("avx512f") && !(off && off[0] && std::strcmp(off, "0") != 0);
  }();
  return has;
}

// exp(x) for x <= 0 (NaN: any finite value; callers restore NaN): kernel_util.h's Cephes range
// reduction and polynomial (FastExp's), the power of two applied by vscalefps (right down through the denormals;
// below -104 the result rounds to 0).
JAX_MPS_AVX512_INLINE __m512 ExpNonPos512(__m512 x) {
  const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-104.f));  // NaN -> -104
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kExpLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpLn2Hi), xc);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(kExpLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpP[0]);
  for (int q = 1; q < 6; ++q) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP[q]));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// 1 / d for d in [1, 2]: rcp14 and one Newton step (~1 ulp), instead of a division.
JAX_MPS_AVX512_INLINE __m512 RecipOneTwo512(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
}

JAX_MPS_AVX512_INLINE __m512 KeepNan512(__m512 y, __m512 x) {
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

// sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|): no overflow, and small
// results keep their relative accuracy; exact 1 / 0 at +-inf, NaN stays NaN.
JAX_MPS_AVX512_INLINE __m512 Sigmoid512(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 e = ExpNonPos512(_mm512_sub_ps(_mm512_setzero_ps(), ax));
  const __m512 s = RecipOneTwo512(_mm512_add_ps(e, _mm512_set1_ps(1.f)));
  const __m512 y = _mm512_mask_mul_ps(s, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), e, s);
  return KeepNan512(y, x);
}

// tanh(x) = sign(x) (1 - 2 / (1 + 1 / e)) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); exact +-1 at
// +-inf, NaN stays NaN.
JAX_MPS_AVX512_INLINE __m512 Tanh512(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 e = ExpNonPos512(_mm512_mul_ps(ax, _mm512_set1_ps(-2.f)));
  const __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_set1_ps(1.f), e), RecipOneTwo512(_mm512_add_ps(e, _mm512_set1_ps(1.f))));
  // sign of x onto t (t >= 0)
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0x80000000u)));
  return KeepNan512(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), sign)), x);
}

}  // namespace jax_mps::cpu
#endif
