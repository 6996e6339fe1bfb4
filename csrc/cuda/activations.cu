// Activations, PReLU and softmax / log-softmax on CUDA (own kernels; float16/bfloat16 are loaded
// and stored in their dtype, computed in float32).
#include "cuda/act.cuh"
#include "cuda/backend.h"
#include "cuda/common.cuh"
#include "cuda/reduce.cuh"

namespace jax_mps::cuda {
namespace {

template <typename T>
__global__ void ActFwdK(Act a, float alpha, int64_t n, const T* x, T* y) {
  JAX_MPS_GRID_STRIDE(i, n) y[i] = St<T>(ActF(a, alpha, Ld(x[i])));
}

template <typename T>
__global__ void ActBwdK(Act a, float alpha, int64_t n, const T* x, const T* dy, T* dx) {
  JAX_MPS_GRID_STRIDE(i, n) dx[i] = St<T>(ActG(a, alpha, Ld(x[i]), Ld(dy[i])));
}

template <typename T>
__global__ void PreluFwdK(int64_t n, int64_t c, const T* x, const T* al, T* y) {
  JAX_MPS_GRID_STRIDE(i, n) {
    const float v = Ld(x[i]);
    y[i] = St<T>(v > 0.f ? v : Ld(al[i % c]) * v);
  }
}

template <typename T>
__global__ void PreluBwdK(int64_t rows, int64_t c, const T* x, const T* al, const T* dy, T* dx, double* dal) {
  const int64_t j = int64_t(blockIdx.x) * kColX + threadIdx.x;
  double acc = 0.0;
  if (j < c) {
    const float a = Ld(al[j]);
    for (int64_t r = int64_t(blockIdx.y) * kColY + threadIdx.y; r < rows; r += int64_t(gridDim.y) * kColY) {
      const float v = Ld(x[r * c + j]), g = Ld(dy[r * c + j]);
      dx[r * c + j] = St<T>(v > 0.f ? g : a * g);
      if (!(v > 0.f)) acc += double(g) * double(v);
    }
  }
  ColFlush(acc, dal, j, c);
}

template <typename T>
__global__ void CastFromDouble(int64_t n, const double* s, T* out) {
  JAX_MPS_GRID_STRIDE(i, n) out[i] = St<T>(float(s[i]));
}

// ---- softmax / log-softmax over axis 1 of x viewed as (outer, axis, inner) ----

// One warp per line of `a` elements (stride `in` between them); lines = outer * inner.
template <typename T, bool kLog>
__global__ void SoftmaxFwdK(int64_t lines, int64_t a, int64_t in, const T* x, T* y) {
  const int64_t line = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (line >= lines) return;
  const int64_t base = (line / in) * a * in + line % in;
  float m = -INFINITY;
  for (int64_t j = lane; j < a; j += 32) {
    const float v = Ld(x[base + j * in]);
    m = (v > m || v != v) ? v : m;
  }
  m = WarpMax(m);  // NaN wins
  // As jax.nn (and the CPU): a line holding NaN or +inf, or all -inf, is all NaN.
  if (isinf(m)) m = NAN;
  double sum = 0.0;  // a lane's terms in double: a/32 float additions drift on long axes
  for (int64_t j = lane; j < a; j += 32) sum += expf(Ld(x[base + j * in]) - m);
  const float s = WarpSum(float(sum));
  const float ls = logf(s);
  for (int64_t j = lane; j < a; j += 32) {
    const float z = Ld(x[base + j * in]) - m;
    y[base + j * in] = St<T>(kLog ? z - ls : expf(z) / s);
  }
}

template <typename T, bool kLog>
__global__ void SoftmaxBwdK(int64_t lines, int64_t a, int64_t in, const T* y, const T* dy, T* dx) {
  const int64_t line = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (line >= lines) return;
  const int64_t base = (line / in) * a * in + line % in;
  double acc = 0.0;  // (as the forward's sum)
  for (int64_t j = lane; j < a; j += 32) {
    const float g = Ld(dy[base + j * in]);
    acc += kLog ? g : g * Ld(y[base + j * in]);
  }
  const float s = WarpSum(float(acc));
  for (int64_t j = lane; j < a; j += 32) {
    const float g = Ld(dy[base + j * in]), v = Ld(y[base + j * in]);
    dx[base + j * in] = St<T>(kLog ? g - expf(v) * s : v * (g - s));
  }
}

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {
using namespace cuda;  // NOLINT: the kernels above

ffi::Error Cuda::ActivationFwd(Cuda::Ctx s, Buf x, Buf y, Act act, float alpha) {
  const char* op = "activation_fwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  const int64_t n = x.element_count();
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    ActFwdK<T><<<Blocks(n), 256, 0, s>>>(act, alpha, n, Ptr<const T>(x), Ptr<T>(y));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::ActivationBwd(Cuda::Ctx s, Buf x, Buf dy, Buf dx, Act act, float alpha) {
  const char* op = "activation_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&dy, &dx}));
  const int64_t n = x.element_count();
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    ActBwdK<T><<<Blocks(n), 256, 0, s>>>(act, alpha, n, Ptr<const T>(x), Ptr<const T>(dy), Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::PreluFwd(Cuda::Ctx s, const PreluDesc& d, Buf x, Buf alpha, Buf y) {
  const char* op = "prelu";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&alpha, &y}));
  const int64_t n = d.rows * d.c;
  if (n == 0) return ffi::Error::Success();
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    PreluFwdK<T><<<Blocks(n), 256, 0, s>>>(n, d.c, Ptr<const T>(x), Ptr<const T>(alpha), Ptr<T>(y));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::PreluBwd(Cuda::Ctx s, const PreluDesc& d, Buf x, Buf alpha, Buf dy, Buf dx, Buf dalpha) {
  const char* op = "prelu_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&alpha, &dy, &dx, &dalpha}));
  if (d.c == 0) return ffi::Error::Success();
  ffi::Error err;
  double* acc = static_cast<double*>(Workspace(s, d.c * sizeof(double), op, &err));
  if (!acc) return err;
  JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(acc, 0, d.c * sizeof(double), s));
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    PreluBwdK<T><<<ColGrid(d.rows, d.c), dim3(kColX, kColY), 0, s>>>(
        d.rows, d.c, Ptr<const T>(x), Ptr<const T>(alpha), Ptr<const T>(dy), Ptr<T>(dx), acc);
    CastFromDouble<T><<<Blocks(d.c), 256, 0, s>>>(d.c, acc, Ptr<T>(dalpha));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::SoftmaxFwd(Cuda::Ctx s, const SoftmaxDesc& d, Buf x, Buf y) {
  const char* op = "softmax_fwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&y}));
  const int64_t lines = d.outer * d.inner;
  if (lines * d.axis == 0) return ffi::Error::Success();
  const unsigned blocks = unsigned((lines + 7) / 8);
  return cuda::DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    if (d.log) SoftmaxFwdK<T, true><<<blocks, 256, 0, s>>>(lines, d.axis, d.inner, Ptr<const T>(x), Ptr<T>(y));
    else SoftmaxFwdK<T, false><<<blocks, 256, 0, s>>>(lines, d.axis, d.inner, Ptr<const T>(x), Ptr<T>(y));
    return LaunchStatus(op);
  });
}

ffi::Error Cuda::SoftmaxBwd(Cuda::Ctx s, const SoftmaxDesc& d, Buf y, Buf dy, Buf dx) {
  const char* op = "softmax_bwd";
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, y, {&dy, &dx}));
  const int64_t lines = d.outer * d.inner;
  if (lines * d.axis == 0) return ffi::Error::Success();
  const unsigned blocks = unsigned((lines + 7) / 8);
  return cuda::DispatchFloat(op, y.element_type(), [&](auto t) {
    using T = decltype(t);
    if (d.log)
      SoftmaxBwdK<T, true><<<blocks, 256, 0, s>>>(lines, d.axis, d.inner, Ptr<const T>(y), Ptr<const T>(dy), Ptr<T>(dx));
    else
      SoftmaxBwdK<T, false><<<blocks, 256, 0, s>>>(lines, d.axis, d.inner, Ptr<const T>(y), Ptr<const T>(dy),
                                                    Ptr<T>(dx));
    return LaunchStatus(op);
  });
}

}  // namespace jax_mps
