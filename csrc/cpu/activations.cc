// Activations, PReLU and softmax / log-softmax on the CPU.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/backend.h"
#include "cpu/eltwise.h"
#include "cpu/f32.h"
#include "cpu/kernel_util.h"
#include "runtime/act_formulas.h"

namespace jax_mps::cpu {

namespace {

// Our own element-wise kernels rather than oneDNN's eltwise: those turn NaN into 0 (relu, clip)
// and lose accuracy (soft_relu goes negative below -15, gelu(inf) is NaN). Rules (shared with the
// CUDA kernels, see runtime/activation.h): values and gradients are jax.nn's, with NaN and +-inf
// inputs giving what jax.nn gives, and float32-accurate over the whole float32 range. Every
// function is branch-free so the loops vectorise; each loop is compiled per ISA (JAX_MPS_CLONES).
#define AI JAX_MPS_ALWAYS_INLINE

// The shared formulas (runtime/act_formulas.h) over these branch-free approximations.
struct CpuMath {
  static AI float Exp(float x) { return FastExp(x); }
  static AI float Expm1NonPos(float x) { return cpu::Expm1NonPos(x); }
  static AI float Log1pUnit(float u) { return cpu::Log1pUnit(u); }
  // erfc(z) for any z.
  static AI float Erfc(float z) {
    const float e = ErfcNonNeg(std::fabs(z));
    return z >= 0.f ? e : 2.f - e;
  }
  // Cephes' odd polynomial below 0.625 (where (1 - e) / (1 + e) would cancel), else from
  // e = exp(-2|x|).
  static AI float Tanh(float x) {
    const float ax = std::fabs(x), z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const float small = p * z * x + x;
    const float e = FastExp(-2.f * ax);
    const float big = std::copysign((1.f - e) / (1.f + e), x);
    return ax < 0.625f ? small : big;
  }
};
AI float Forward(Act act, float x, float alpha) { return act::Forward<CpuMath>(act, x, alpha); }
AI float Backward(Act act, float x, float g, float alpha) { return act::Backward<CpuMath>(act, x, g, alpha); }
using act::BackwardFromOutput;

template <Act A>
AI void FwdLoop(int64_t n, float alpha, const float* x, float* y) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = Forward(A, x[i], alpha);
}
template <Act A>
AI void BwdLoop(int64_t n, float alpha, const float* x, const float* dy, float* dx) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = Backward(A, x[i], dy[i], alpha);
}
template <Act A>
AI void BwdOutLoop(int64_t n, float alpha, const float* y, const float* dy, float* dx) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = BackwardFromOutput(A, y[i], dy[i], alpha);
}

#define JAX_MPS_ACT_DISPATCH(act, LOOP, ...)                            \
  switch (act) {                                                        \
    case Act::kRelu: return LOOP<Act::kRelu>(__VA_ARGS__);              \
    case Act::kRelu6: return LOOP<Act::kRelu6>(__VA_ARGS__);            \
    case Act::kLeakyRelu: return LOOP<Act::kLeakyRelu>(__VA_ARGS__);    \
    case Act::kElu: return LOOP<Act::kElu>(__VA_ARGS__);                \
    case Act::kSigmoid: return LOOP<Act::kSigmoid>(__VA_ARGS__);        \
    case Act::kHardSigmoid: return LOOP<Act::kHardSigmoid>(__VA_ARGS__); \
    case Act::kTanh: return LOOP<Act::kTanh>(__VA_ARGS__);              \
    case Act::kSoftplus: return LOOP<Act::kSoftplus>(__VA_ARGS__);      \
    case Act::kSoftsign: return LOOP<Act::kSoftsign>(__VA_ARGS__);      \
    case Act::kGelu: return LOOP<Act::kGelu>(__VA_ARGS__);              \
    case Act::kGeluTanh: return LOOP<Act::kGeluTanh>(__VA_ARGS__);      \
    default: return;                                                    \
  }

JAX_MPS_CLONES void FwdKernel(Act act, float alpha, int64_t n, const float* x, float* y) {
  JAX_MPS_ACT_DISPATCH(act, FwdLoop, n, alpha, x, y)
}
JAX_MPS_CLONES void BwdKernel(Act act, float alpha, int64_t n, const float* x, const float* dy, float* dx) {
  JAX_MPS_ACT_DISPATCH(act, BwdLoop, n, alpha, x, dy, dx)
}
JAX_MPS_CLONES void BwdOutKernel(Act act, float alpha, int64_t n, const float* y, const float* dy, float* dx) {
  switch (act) {
    case Act::kRelu: return BwdOutLoop<Act::kRelu>(n, alpha, y, dy, dx);
    case Act::kRelu6: return BwdOutLoop<Act::kRelu6>(n, alpha, y, dy, dx);
    case Act::kLeakyRelu: return BwdOutLoop<Act::kLeakyRelu>(n, alpha, y, dy, dx);
    case Act::kElu: return BwdOutLoop<Act::kElu>(n, alpha, y, dy, dx);
    case Act::kSigmoid: return BwdOutLoop<Act::kSigmoid>(n, alpha, y, dy, dx);
    case Act::kTanh: return BwdOutLoop<Act::kTanh>(n, alpha, y, dy, dx);
    default: return;
  }
}
#undef AI

// Runs fn(begin, end) over [0, n) in cache-sized chunks, threaded when the work is large (and
// never from inside another parallel region: fused backward passes call us per chunk).
template <typename F>
void Chunked(Act act, int64_t n, F&& fn) {
  constexpr int64_t kChunk = 16384;
  const bool cheap = act == Act::kRelu || act == Act::kRelu6 || act == Act::kLeakyRelu || act == Act::kHardSigmoid;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t work = omp_in_parallel() ? 0 : n * (cheap ? 1 : 8);
  ParallelFor(chunks, work, [&](int64_t c) { fn(c * kChunk, std::min(n, (c + 1) * kChunk)); });
}

}  // namespace

void ActForward(Act act, float alpha, int64_t n, const float* x, float* y) {
  if (n == 0) return;
  if (act == Act::kNone) {
    if (x != y) std::memcpy(y, x, n * sizeof(float));
    return;
  }
  Chunked(act, n, [&](int64_t b, int64_t e) { FwdKernel(act, alpha, e - b, x + b, y + b); });
}

void ActBackward(Act act, float alpha, int64_t n, const float* s, const float* dy, float* dx,
                 bool from_output) {
  if (n == 0) return;
  if (act == Act::kNone) {
    if (dx != dy) std::memcpy(dx, dy, n * sizeof(float));
    return;
  }
  Chunked(act, n, [&](int64_t b, int64_t e) {
    if (from_output)
      BwdOutKernel(act, alpha, e - b, s + b, dy + b, dx + b);
    else
      BwdKernel(act, alpha, e - b, s + b, dy + b, dx + b);
  });
}

namespace {

// Sums along a long axis: float partial sums of kSumBlock terms, added in double (one float sum
// over 200k terms drifts by ~1e-5 relative; jax's pairwise reduction does not).
constexpr int64_t kSumBlock = 1024;

// sum over j < a of term(j) (term may also store what it computes).
template <class F>
JAX_MPS_ALWAYS_INLINE double BlockSum(int64_t a, F&& term) {
  double sum = 0.0;
  for (int64_t j0 = 0; j0 < a; j0 += kSumBlock) {
    float part = 0.f;
    const int64_t j1 = std::min(a, j0 + kSumBlock);
#pragma omp simd reduction(+ : part)
    for (int64_t j = j0; j < j1; ++j) part += term(j);
    sum += part;
  }
  return sum;
}

// Softmax / log-softmax over axis 1 of x viewed as (outer, axis, inner), as jax.nn: shifted by
// the axis max, and a slice holding NaN or +inf (or all -inf: -inf - -inf) is all NaN (oneDNN's
// max drops NaN, and it gave [0, NaN, 0] for a +inf row). Vectorised over the axis when inner
// is 1, over inner otherwise.
JAX_MPS_CLONES void SoftmaxRows(int64_t rows, int64_t a, const float* x, float* y, bool log) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * a;
    float* yr = y + r * a;
    float m = -INFINITY, bad = 0.f;
#pragma omp simd reduction(max : m) reduction(+ : bad)
    for (int64_t j = 0; j < a; ++j) {
      m = xr[j] > m ? xr[j] : m;
      bad += xr[j] != xr[j] ? 1.f : 0.f;
    }
    if (bad > 0.f || std::fabs(m) == INFINITY) {
      std::fill(yr, yr + a, NAN);
      continue;
    }
    if (log) {
      const float ls = static_cast<float>(std::log(BlockSum(a, [&](int64_t j) { return FastExp(xr[j] - m); })));
#pragma omp simd
      for (int64_t j = 0; j < a; ++j) yr[j] = (xr[j] - m) - ls;
    } else {
      const float fs = static_cast<float>(BlockSum(a, [&](int64_t j) { return yr[j] = FastExp(xr[j] - m); }));
#pragma omp simd
      for (int64_t j = 0; j < a; ++j) yr[j] = yr[j] / fs;
    }
  }
}

// One outer slice (a, in) with in > 1; m, s: scratch of `in` each (s in double: a column's sum
// runs over all a rows one at a time).
JAX_MPS_CLONES void SoftmaxStrided(int64_t a, int64_t in, const float* x, float* y, bool log, float* m, double* s) {
  std::fill(m, m + in, -INFINITY);
  std::fill(s, s + in, 0.0);  // first the NaN count, then the sum
  for (int64_t k = 0; k < a; ++k) {
    const float* xr = x + k * in;
#pragma omp simd
    for (int64_t i = 0; i < in; ++i) {
      m[i] = xr[i] > m[i] ? xr[i] : m[i];
      s[i] += xr[i] != xr[i] ? 1.0 : 0.0;
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < in; ++i) {
    m[i] = (s[i] > 0.0 || std::fabs(m[i]) == INFINITY) ? NAN : m[i];  // NaN m makes the slice NaN
    s[i] = 0.0;
  }
  for (int64_t k = 0; k < a; ++k) {
    const float* xr = x + k * in;
    float* yr = y + k * in;
#pragma omp simd
    for (int64_t i = 0; i < in; ++i) {
      const float e = FastExp(xr[i] - m[i]);
      if (!log) yr[i] = e;
      s[i] += e;
    }
  }
  if (log)
    for (int64_t i = 0; i < in; ++i) s[i] = std::log(s[i]);
  for (int64_t k = 0; k < a; ++k) {
    const float* xr = x + k * in;
    float* yr = y + k * in;
#pragma omp simd
    for (int64_t i = 0; i < in; ++i)
      yr[i] = log ? (xr[i] - m[i]) - static_cast<float>(s[i]) : yr[i] / static_cast<float>(s[i]);
  }
}

void SoftmaxForward(int64_t o, int64_t a, int64_t in, const float* x, float* y, bool log) {
  if (in == 1) {
    constexpr int64_t kRows = 64;
    ParallelFor((o + kRows - 1) / kRows, o * a * 8, [&](int64_t c) {
      const int64_t r0 = c * kRows, r1 = std::min(o, r0 + kRows);
      SoftmaxRows(r1 - r0, a, x + r0 * a, y + r0 * a, log);
    });
    return;
  }
  ParallelFor(o, o * a * in * 8, [&](int64_t r) {
    thread_local ScratchBuffer<float> mb;
    thread_local ScratchBuffer<double> sb;
    SoftmaxStrided(a, in, x + r * a * in, y + r * a * in, log, mb.get(in), sb.get(in));
  });
}

// The gradient from the output y, as jax's rules: softmax dx = y * (g - sum(y g)); log-softmax
// dx = g - exp(y) * sum(g) (NaN slices stay NaN through y).
JAX_MPS_CLONES void SoftmaxGradSlice(int64_t a, int64_t in, const float* y, const float* g, float* dx, bool log,
                                     double* acc) {
  std::fill(acc, acc + in, 0.0);
  for (int64_t k = 0; k < a; ++k) {
    const float* yr = y + k * in;
    const float* gr = g + k * in;
#pragma omp simd
    for (int64_t i = 0; i < in; ++i) acc[i] += log ? gr[i] : yr[i] * gr[i];
  }
  for (int64_t k = 0; k < a; ++k) {
    const float* yr = y + k * in;
    const float* gr = g + k * in;
    float* dr = dx + k * in;
#pragma omp simd
    for (int64_t i = 0; i < in; ++i) {
      const float c = static_cast<float>(acc[i]);
      dr[i] = log ? gr[i] - FastExp(yr[i]) * c : yr[i] * (gr[i] - c);
    }
  }
}

JAX_MPS_CLONES void SoftmaxGradRows(int64_t rows, int64_t a, const float* y, const float* g, float* dx, bool log) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * a;
    const float* gr = g + r * a;
    float* dr = dx + r * a;
    const float acc = static_cast<float>(BlockSum(a, [&](int64_t j) { return log ? gr[j] : yr[j] * gr[j]; }));
#pragma omp simd
    for (int64_t j = 0; j < a; ++j) dr[j] = log ? gr[j] - FastExp(yr[j]) * acc : yr[j] * (gr[j] - acc);
  }
}

void SoftmaxBackward(int64_t o, int64_t a, int64_t in, const float* y, const float* g, float* dx, bool log) {
  if (in == 1) {
    constexpr int64_t kRows = 64;
    ParallelFor((o + kRows - 1) / kRows, o * a * 4, [&](int64_t c) {
      const int64_t r0 = c * kRows, r1 = std::min(o, r0 + kRows);
      SoftmaxGradRows(r1 - r0, a, y + r0 * a, g + r0 * a, dx + r0 * a, log);
    });
    return;
  }
  ParallelFor(o, o * a * in * 4, [&](int64_t r) {
    thread_local ScratchBuffer<double> buf;
    const int64_t off = r * a * in;
    SoftmaxGradSlice(a, in, y + off, g + off, dx + off, log, buf.get(in));
  });
}

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

ffi::Error Cpu::ActivationFwd(Ctx, Buf x, Buf y, Act act, float alpha) {
  F32In xf(x);
  F32Out yf(y);
  ActForward(act, alpha, x.element_count(), xf.get(), yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::ActivationBwd(Ctx, Buf x, Buf dy, Buf dx, Act act, float alpha) {
  F32In xf(x), dyf(dy);
  F32Out dxf(dx);
  ActBackward(act, alpha, x.element_count(), xf.get(), dyf.get(), dxf.get(), false);
  return ffi::Error::Success();
}

ffi::Error Cpu::PreluFwd(Ctx, const PreluDesc& d, Buf x, Buf alpha, Buf y) {
  F32In xf(x), af(alpha);
  F32Out yf(y);
  const int64_t rows = d.rows, c = d.c;
  const float* xp = xf.get();
  const float* ap = af.get();
  float* yp = yf.get();
#pragma omp parallel for if (rows * c > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) {
      float v = xp[r * c + j];
      yp[r * c + j] = v > 0.f ? v : ap[j] * v;
    }
  return ffi::Error::Success();
}

ffi::Error Cpu::PreluBwd(Ctx, const PreluDesc& d, Buf x, Buf alpha, Buf dy, Buf dx, Buf dalpha) {
  F32In xf(x), af(alpha), gf(dy);
  F32Out dxf(dx), daf(dalpha);
  const int64_t rows = d.rows, c = d.c;
  const float* xp = xf.get();
  const float* ap = af.get();
  const float* g = gf.get();
  float* dxp = dxf.get();
  float* dap = daf.get();
  for (int64_t j = 0; j < c; ++j) dap[j] = 0.f;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) {
      float v = xp[r * c + j], gv = g[r * c + j];
      dxp[r * c + j] = v > 0.f ? gv : ap[j] * gv;
      if (!(v > 0.f)) dap[j] += gv * v;  // NaN x reaches alpha, as jnp.where
    }
  return ffi::Error::Success();
}

ffi::Error Cpu::SoftmaxFwd(Ctx, const SoftmaxDesc& d, Buf x, Buf y) {
  if (x.element_count() == 0) return ffi::Error::Success();
  F32In xf(x);
  F32Out yf(y);
  SoftmaxForward(d.outer, d.axis, d.inner, xf.get(), yf.get(), d.log);
  return ffi::Error::Success();
}

ffi::Error Cpu::SoftmaxBwd(Ctx, const SoftmaxDesc& d, Buf y, Buf dy, Buf dx) {
  if (y.element_count() == 0) return ffi::Error::Success();
  F32In yf(y), dyf(dy);
  F32Out dxf(dx);
  SoftmaxBackward(d.outer, d.axis, d.inner, yf.get(), dyf.get(), dxf.get(), d.log);
  return ffi::Error::Success();
}

}  // namespace jax_mps
