// Activations, PReLU and softmax / log-softmax on CUDA (own kernels; float16/bfloat16 are loaded
// and stored in their dtype, computed in float32).
#include "cuda/act.cuh"
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

ffi::Error CheckAct(const char* op, int64_t act) {
  JAX_MPS_CHECK(ValidAct(act), op, ": unknown activation code ", act);
  return ffi::Error::Success();
}

ffi::Error ActFwd(Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t act, float alpha) {
  const char* op = "activation_fwd";
  JAX_MPS_RETURN_IF_ERROR(CheckAct(op, act));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "y", *y, x.element_type()));
  JAX_MPS_CHECK(y->element_count() == x.element_count(), op, ": y must have ", x.element_count(), " elements");
  const int64_t n = x.element_count();
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    ActFwdK<T><<<Blocks(n), 256, 0, ctx.stream>>>(Act(act), alpha, n, Ptr<const T>(x), Ptr<T>(*y));
    return LaunchStatus(op);
  });
}

ffi::Error ActBwd(Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx, int64_t act,
                  float alpha) {
  const char* op = "activation_bwd";
  JAX_MPS_RETURN_IF_ERROR(CheckAct(op, act));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "dy", dy, x.element_type()));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "dx", *dx, x.element_type()));
  JAX_MPS_CHECK(x.element_count() == dy.element_count() && dx->element_count() == x.element_count(), op,
                ": x has ", x.element_count(), " elements but dy has ", dy.element_count());
  const int64_t n = x.element_count();
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    ActBwdK<T><<<Blocks(n), 256, 0, ctx.stream>>>(Act(act), alpha, n, Ptr<const T>(x), Ptr<const T>(dy),
                                                  Ptr<T>(*dx));
    return LaunchStatus(op);
  });
}

// ---- PReLU: y = x > 0 ? x : alpha[c] * x over the last axis ----

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

ffi::Error CheckPrelu(const char* op, const ffi::AnyBuffer& x, const ffi::AnyBuffer& alpha, int64_t* c) {
  auto xd = x.dimensions();
  JAX_MPS_CHECK(xd.size() >= 1, op, ": x must have rank >= 1");
  *c = xd.back();
  JAX_MPS_CHECK(int64_t(alpha.element_count()) == *c, op, ": alpha must have shape (", *c, ",), got ",
                DimsStr(alpha.dimensions()));
  return CheckDtype(op, "alpha", alpha, x.element_type());
}

ffi::Error PreluFwd(Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer alpha, ffi::Result<ffi::AnyBuffer> y) {
  const char* op = "prelu";
  int64_t c = 0;
  JAX_MPS_RETURN_IF_ERROR(CheckPrelu(op, x, alpha, &c));
  JAX_MPS_CHECK(y->element_count() == x.element_count(), op, ": y size mismatch");
  const int64_t n = x.element_count();
  if (n == 0) return ffi::Error::Success();
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    PreluFwdK<T><<<Blocks(n), 256, 0, ctx.stream>>>(n, c, Ptr<const T>(x), Ptr<const T>(alpha), Ptr<T>(*y));
    return LaunchStatus(op);
  });
}

ffi::Error PreluBwd(Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer alpha, ffi::AnyBuffer dy,
                    ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dalpha) {
  const char* op = "prelu_bwd";
  int64_t c = 0;
  JAX_MPS_RETURN_IF_ERROR(CheckPrelu(op, x, alpha, &c));
  JAX_MPS_CHECK(dy.element_count() == x.element_count() && dx->element_count() == x.element_count() &&
                    int64_t(dalpha->element_count()) == c,
                op, ": dy/dx/dalpha size mismatch");
  if (c == 0) return ffi::Error::Success();
  const int64_t rows = x.element_count() / c;
  ffi::Error err;
  double* acc = static_cast<double*>(Workspace(ctx, c * sizeof(double), op, &err));
  if (!acc) return err;
  JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(acc, 0, c * sizeof(double), ctx.stream));
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    PreluBwdK<T><<<ColGrid(rows, c), dim3(kColX, kColY), 0, ctx.stream>>>(
        rows, c, Ptr<const T>(x), Ptr<const T>(alpha), Ptr<const T>(dy), Ptr<T>(*dx), acc);
    CastFromDouble<T><<<Blocks(c), 256, 0, ctx.stream>>>(c, acc, Ptr<T>(*dalpha));
    return LaunchStatus(op);
  });
}

// ---- softmax / log-softmax over axis 1 of x viewed as (outer, axis, inner) ----

ffi::Error SoftmaxView(ffi::Span<const int64_t> d, int64_t axis, int64_t* o, int64_t* a, int64_t* in) {
  JAX_MPS_CHECK(axis >= 0 && axis < int64_t(d.size()), "softmax: axis ", axis, " out of range for shape ",
                DimsStr(d));
  *o = 1;
  *in = 1;
  for (int64_t i = 0; i < axis; ++i) *o *= d[i];
  *a = d[axis];
  for (size_t i = axis + 1; i < d.size(); ++i) *in *= d[i];
  return ffi::Error::Success();
}

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
  m = WarpMax(m);
  float s = 0.f;
  for (int64_t j = lane; j < a; j += 32) s += expf(Ld(x[base + j * in]) - m);
  s = WarpSum(s);
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
  float s = 0.f;
  for (int64_t j = lane; j < a; j += 32) {
    const float g = Ld(dy[base + j * in]);
    s += kLog ? g : g * Ld(y[base + j * in]);
  }
  s = WarpSum(s);
  for (int64_t j = lane; j < a; j += 32) {
    const float g = Ld(dy[base + j * in]), v = Ld(y[base + j * in]);
    dx[base + j * in] = St<T>(kLog ? g - expf(v) * s : v * (g - s));
  }
}

ffi::Error SoftmaxFwd(Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t axis, int64_t log) {
  const char* op = "softmax_fwd";
  int64_t o = 0, a = 0, in = 0;
  JAX_MPS_RETURN_IF_ERROR(SoftmaxView(x.dimensions(), axis, &o, &a, &in));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "y", *y, x.element_type()));
  JAX_MPS_CHECK(y->element_count() == x.element_count(), op, ": y size mismatch");
  if (x.element_count() == 0) return ffi::Error::Success();
  const int64_t lines = o * in;
  const unsigned blocks = unsigned((lines + 7) / 8);
  return DispatchFloat(op, x.element_type(), [&](auto t) {
    using T = decltype(t);
    if (log) SoftmaxFwdK<T, true><<<blocks, 256, 0, ctx.stream>>>(lines, a, in, Ptr<const T>(x), Ptr<T>(*y));
    else SoftmaxFwdK<T, false><<<blocks, 256, 0, ctx.stream>>>(lines, a, in, Ptr<const T>(x), Ptr<T>(*y));
    return LaunchStatus(op);
  });
}

ffi::Error SoftmaxBwd(Ctx ctx, ffi::AnyBuffer y, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx, int64_t axis,
                      int64_t log) {
  const char* op = "softmax_bwd";
  int64_t o = 0, a = 0, in = 0;
  JAX_MPS_RETURN_IF_ERROR(SoftmaxView(y.dimensions(), axis, &o, &a, &in));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "dy", dy, y.element_type()));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "dx", *dx, y.element_type()));
  JAX_MPS_CHECK(dy.element_count() == y.element_count() && dx->element_count() == y.element_count(), op,
                ": dy/y size mismatch");
  if (y.element_count() == 0) return ffi::Error::Success();
  const int64_t lines = o * in;
  const unsigned blocks = unsigned((lines + 7) / 8);
  return DispatchFloat(op, y.element_type(), [&](auto t) {
    using T = decltype(t);
    if (log)
      SoftmaxBwdK<T, true><<<blocks, 256, 0, ctx.stream>>>(lines, a, in, Ptr<const T>(y), Ptr<const T>(dy),
                                                         Ptr<T>(*dx));
    else
      SoftmaxBwdK<T, false><<<blocks, 256, 0, ctx.stream>>>(lines, a, in, Ptr<const T>(y), Ptr<const T>(dy),
                                                          Ptr<T>(*dx));
    return LaunchStatus(op);
  });
}

}  // namespace

#define CTX Ctx<Ctx>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_activation_fwd, ActFwd,
                              ffi::Ffi::Bind().CTX.Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("act").Attr<float>("alpha"),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_activation_bwd, ActBwd,
                              ffi::Ffi::Bind().CTX.Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Attr<int64_t>("act").Attr<float>("alpha"),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_prelu_fwd, PreluFwd,
                              ffi::Ffi::Bind().CTX.Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>(),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_prelu_bwd, PreluBwd,
                              ffi::Ffi::Bind().CTX.Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_softmax_fwd, SoftmaxFwd,
                              ffi::Ffi::Bind().CTX.Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("axis").Attr<int64_t>("log"),
                              JAX_MPS_ONLY_KERNELS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_softmax_bwd, SoftmaxBwd,
                              ffi::Ffi::Bind().CTX.Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Attr<int64_t>("axis").Attr<int64_t>("log"),
                              JAX_MPS_ONLY_KERNELS);
#undef CTX

}  // namespace jax_mps::cuda
