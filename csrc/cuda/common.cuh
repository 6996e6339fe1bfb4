// Shared pieces of the CUDA backend: the handler context (XLA's stream + scratch allocator), error
// conversion, dtype dispatch over float32/float16/bfloat16 and device-side load/store helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>

#include "cuda/backend.h"

namespace jax_mps::cuda {

inline ffi::Error CudaError(const char* op, cudaError_t e) {
  return ffi::Error::Internal(std::string(op) + ": CUDA error: " + cudaGetErrorString(e));
}

#define JAX_MPS_CUDA_RETURN_IF_ERROR(op, expr)                        \
  do {                                                                \
    cudaError_t e_ = (expr);                                          \
    if (e_ != cudaSuccess) return ::jax_mps::cuda::CudaError(op, e_); \
  } while (0)

// After a launch: configuration errors show up here (execution errors surface at a later sync).
inline ffi::Error LaunchStatus(const char* op) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? ffi::Error::Success() : CudaError(op, e);
}

// Device workspace of at least `bytes`, 256-byte aligned (cuDNN / cuBLAS want that; XLA's FFI
// refuses alignments over 16, so the block is over-asked and aligned here), from XLA's scratch
// allocator: valid until the handler returns, which is all any handler needs. Handlers that take
// it are not marked command-buffer compatible (a captured graph would keep a freed address).
// nullptr with *err set on failure.
inline void* Workspace(const Ctx& ctx, size_t bytes, const char* op, ffi::Error* err) {
  constexpr size_t kAlign = 256;
  std::optional<void*> p = ctx.scratch->Allocate(bytes + kAlign, 16);
  if (!p.has_value() || *p == nullptr) {
    *err = ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(op) + ": XLA's scratch allocator gave no " + std::to_string(bytes) +
                          " bytes of workspace");
    return nullptr;
  }
  uintptr_t a = (reinterpret_cast<uintptr_t>(*p) + kAlign - 1) & ~uintptr_t(kAlign - 1);
  return reinterpret_cast<void*>(a);
}

// The element type behind each of the runtime's dtype tags.
template <typename Tag> struct Elem;
template <> struct Elem<F32Tag> { using type = float; };
template <> struct Elem<F16Tag> { using type = __half; };
template <> struct Elem<BF16Tag> { using type = __nv_bfloat16; };

// The runtime's dtype switch, handing f a value of the CUDA element type (float, __half, __nv_bfloat16).
template <typename F>
ffi::Error DispatchFloat(const char* op, ffi::DataType t, F&& f) {
  return ::jax_mps::DispatchFloat(op, t, [&](auto tag) { return f(typename Elem<decltype(tag)>::type{}); });
}

// Every float operand of one call has x's dtype (the runtime checks each is a float; the CUDA
// kernels read them all as one type).
inline ffi::Error SameDtype(const char* op, const ffi::AnyBuffer& ref, std::initializer_list<const ffi::AnyBuffer*> bs) {
  for (const ffi::AnyBuffer* b : bs)
    JAX_MPS_CHECK(b->element_type() == ref.element_type(), op, ": every float operand must be ",
                  DtypeName(ref.element_type()), " like x, got ", DtypeName(b->element_type()));
  return ffi::Error::Success();
}

template <typename T> __device__ __forceinline__ float Ld(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float Ld<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float Ld<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T St(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half St<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 St<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Blocks for n elements at `threads` per block, capped so grid-stride loops cover the rest.
inline unsigned Blocks(int64_t n, int threads = 256, int64_t cap = 132 * 32) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > cap ? cap : b));
}

#define JAX_MPS_GRID_STRIDE(i, n)                                                            \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);                 \
       i += int64_t(blockDim.x) * gridDim.x)

template <typename T> T* Ptr(ffi::AnyBuffer b) { return static_cast<T*>(b.untyped_data()); }





}  // namespace jax_mps::cuda


