// Shared pieces of the CUDA backend: the handler context (XLA's stream + scratch allocator), error
// conversion, dtype dispatch over float32/float16/bfloat16 and device-side load/store helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <initializer_list>
#include <optional>
#include <unordered_map>
#include <string>

#include "runtime/backend.h"

namespace jax_mps::cuda {

// The kernels' view of XLA's compute stream (Cuda::Ctx, a cudaStream_t): no synchronisation.
struct Ctx {
  cudaStream_t stream;
};

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

// Device workspace of at least `bytes` for the calling handler, owned by the backend: one buffer
// per stream, grown (never shrunk) when a call needs more; valid until the next handler on the
// same stream (stream order keeps it private). XLA's FFI scratch allocator is not used: it
// refused every request under jax 0.11's CUDA plugin. Growing synchronises the stream once
// (earlier kernels may still read the old buffer), so handlers using it are not marked
// command-buffer compatible. nullptr with *err set on failure.
inline void* Workspace(Ctx& ctx, size_t bytes, const char* op, ffi::Error* err) {
  struct Buf {
    void* p = nullptr;
    size_t size = 0;
  };
  static std::mutex mu;
  static std::unordered_map<cudaStream_t, Buf> bufs;
  std::lock_guard<std::mutex> lock(mu);
  Buf& b = bufs[ctx.stream];
  if (b.p && b.size >= bytes) return b.p;  // (a first request of 0 bytes still allocates: never nullptr)
  int dev = 0;
  cudaError_t e = cudaStreamGetDevice(ctx.stream, &dev);
  if (e == cudaSuccess) e = cudaSetDevice(dev);
  if (e == cudaSuccess && b.p) e = cudaStreamSynchronize(ctx.stream);
  if (e == cudaSuccess && b.p) e = cudaFree(b.p);
  b = Buf{};
  size_t want = bytes < (size_t(1) << 20) ? (size_t(1) << 20) : bytes;
  if (e == cudaSuccess) e = cudaMalloc(&b.p, want);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state for later launches
    *err = ffi::Error(ffi::ErrorCode::kResourceExhausted, std::string(op) + ": could not allocate " +
                                                              std::to_string(bytes) + " bytes of workspace: " +
                                                              cudaGetErrorString(e));
    b = Buf{};
    return nullptr;
  }
  b.size = want;
  return b.p;
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


