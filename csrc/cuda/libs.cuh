// cuDNN and cuBLASLt handles (one per thread and device: neither handle may be shared by
// concurrent callers) and their error conversion.
#pragma once
#include <cublasLt.h>
#include <cudnn.h>

#include <string>
#include <unordered_map>

#include "cuda/common.cuh"

namespace jax_mps::cuda {

inline ffi::Error CudnnError(const char* op, cudnnStatus_t s) {
  return ffi::Error::Internal(std::string(op) + ": cuDNN error: " + cudnnGetErrorString(s));
}
inline ffi::Error CublasError(const char* op, cublasStatus_t s) {
  return ffi::Error::Internal(std::string(op) + ": cuBLASLt error: " + cublasLtGetStatusString(s));
}

#define JAX_MPS_CUDNN(op, expr)                                                      \
  do {                                                                               \
    cudnnStatus_t s_ = (expr);                                                       \
    if (s_ != CUDNN_STATUS_SUCCESS) return ::jax_mps::cuda::CudnnError(op, s_);      \
  } while (0)
#define JAX_MPS_CUBLAS(op, expr)                                                     \
  do {                                                                               \
    cublasStatus_t s_ = (expr);                                                      \
    if (s_ != CUBLAS_STATUS_SUCCESS) return ::jax_mps::cuda::CublasError(op, s_);    \
  } while (0)

inline int StreamDevice(cudaStream_t s) {
  int dev = 0;
  if (cudaStreamGetDevice(s, &dev) != cudaSuccess) cudaGetDevice(&dev);
  return dev;
}

// The calling thread's cuDNN handle for the stream's device, bound to the stream.
inline ffi::Error Cudnn(const char* op, cudaStream_t stream, cudnnHandle_t* h) {
  thread_local std::unordered_map<int, cudnnHandle_t> handles;
  const int dev = StreamDevice(stream);
  auto it = handles.find(dev);
  if (it == handles.end()) {
    JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaSetDevice(dev));
    cudnnHandle_t nh;
    JAX_MPS_CUDNN(op, cudnnCreate(&nh));
    it = handles.emplace(dev, nh).first;
  }
  JAX_MPS_CUDNN(op, cudnnSetStream(it->second, stream));
  *h = it->second;
  return ffi::Error::Success();
}

inline ffi::Error CublasLt(const char* op, cudaStream_t stream, cublasLtHandle_t* h) {
  thread_local std::unordered_map<int, cublasLtHandle_t> handles;
  const int dev = StreamDevice(stream);
  auto it = handles.find(dev);
  if (it == handles.end()) {
    JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaSetDevice(dev));
    cublasLtHandle_t nh;
    JAX_MPS_CUBLAS(op, cublasLtCreate(&nh));
    it = handles.emplace(dev, nh).first;
  }
  *h = it->second;
  return ffi::Error::Success();
}

// Sub-buffers of one workspace request, 256-byte aligned.
struct Carve {
  size_t total = 0;
  size_t Add(size_t bytes) {
    const size_t off = total;
    total += (bytes + 255) / 256 * 256;
    return off;
  }
};

}  // namespace jax_mps::cuda
