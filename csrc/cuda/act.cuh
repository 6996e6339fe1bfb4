// Element-wise activations on the device: the shared formulas (runtime/act_formulas.h) over CUDA's
// float32 math library (expf, erfcf, log1pf, expm1f, tanhf: within 2 ulp), so both backends follow
// the same numerical rules. Used by the activation targets and every target with a fused
// activation (batch norm, conv, dense).
#pragma once
#include "runtime/act_formulas.h"

namespace jax_mps::cuda {

struct CudaMath {
  static JAX_MPS_HDI float Exp(float x) { return expf(x); }
  static JAX_MPS_HDI float Expm1NonPos(float x) { return expm1f(x); }
  static JAX_MPS_HDI float Log1pUnit(float u) { return log1pf(u); }
  static JAX_MPS_HDI float Erfc(float z) { return erfcf(z); }
  static JAX_MPS_HDI float Tanh(float x) { return tanhf(x); }
};

__device__ __forceinline__ float ActF(Act a, float alpha, float x) { return act::Forward<CudaMath>(a, x, alpha); }
// dy * act'(x) from the pre-activation x.
__device__ __forceinline__ float ActG(Act a, float alpha, float x, float g) {
  return act::Backward<CudaMath>(a, x, g, alpha);
}
// dy * act'(.) from the output y; legal only where ActGradFromOutput(a, alpha).
__device__ __forceinline__ float ActGFromOutput(Act a, float alpha, float y, float g) {
  return act::BackwardFromOutput(a, y, g, alpha);
}

}  // namespace jax_mps::cuda
