// Shared pieces of the CUDA backend: the handler context (XLA's stream + scratch allocator), error
// conversion, dtype dispatch over float32/float16/bfloat16 and device-side load/store helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <string>

#include "runtime/common.h"

namespace jax_mps::cuda {

// Every handler runs on XLA's compute stream, with no synchronisation.
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

inline bool IsFloat(ffi::DataType t) { return t == ffi::F32 || t == ffi::F16 || t == ffi::BF16; }

inline const char* DtypeName(ffi::DataType t) {
  switch (t) {
    case ffi::F32: return "float32";
    case ffi::F16: return "float16";
    case ffi::BF16: return "bfloat16";
    case ffi::S32: return "int32";
    case ffi::U32: return "uint32";
    case ffi::U8: return "uint8";
    default: return "an unsupported dtype";
  }
}

// Calls f(T{}) with T the C++ type of float dtype t (float, __half, __nv_bfloat16).
template <typename F>
ffi::Error DispatchFloat(const char* op, ffi::DataType t, F&& f) {
  switch (t) {
    case ffi::F32: return f(float{});
    case ffi::F16: return f(__half{});
    case ffi::BF16: return f(__nv_bfloat16{});
    default: return Invalid(op, ": dtype must be float32, float16 or bfloat16, got ", DtypeName(t));
  }
}

// All float operands of one call share one dtype.
inline ffi::Error CheckDtype(const char* op, const char* name, const ffi::AnyBuffer& b, ffi::DataType want) {
  JAX_MPS_CHECK(b.element_type() == want, op, ": ", name, " must be ", DtypeName(want), ", got ",
                DtypeName(b.element_type()));
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

// Traits of handlers that only launch kernels (no workspace, no library call, no synchronisation):
// XLA may capture them in CUDA graphs.
#define JAX_MPS_ONLY_KERNELS {ffi::Traits::kCmdBufferCompatible}

}  // namespace jax_mps::cuda

namespace xla::ffi {
template <>
struct CtxDecoding<::jax_mps::cuda::Ctx> {
  using Type = ::jax_mps::cuda::Ctx;
  static std::optional<Type> Decode(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx,
                                    DiagnosticEngine& diagnostic) {
    auto stream = CtxDecoding<PlatformStream<cudaStream_t>>::Decode(api, ctx, diagnostic);
    if (!stream.has_value()) return std::nullopt;
    return Type{*stream};
  }
};
}  // namespace xla::ffi
