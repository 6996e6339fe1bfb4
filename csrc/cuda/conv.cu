// Convolution (1-D as 2-D with H = 1), transposed convolution and dense on CUDA.
//
// Convolutions: cuDNN's legacy API in NHWC. Every target is phrased as one "forward conv"
// F: X (N, XH, XW, XC) -> Y (N, YH, YW, YC) with filter W' (YC, KH, KW, XC / groups) (KRSC):
//   conv:            X = x, Y = y, W' = w transposed to KRSC;
//   conv_transpose:  X = y, Y = x, W' = w spatially flipped, in/out channels swapped (lax.conv_transpose
//                    without kernel transpose is the data gradient of F), padding ek - 1 - lax padding.
// cuDNN pads symmetrically only, so asymmetric padding pads X physically (a copy in the workspace).
// Fused bias + activation run as one element-wise pass after the convolution; the backward passes
// first form dz = act'(.) * dy. Math (ConvMath): float32 follows the `precision` attribute
// (jax.default_matmul_precision): TF32 tensor cores allowed by default (CUDNN_DEFAULT_MATH, as
// PyTorch's allow_tf32; ALLOW_CONVERSION would also permit float16 down-conversion), FMA only for
// "highest"; float16/bfloat16 use tensor cores with float32 accumulation, float16 with float16
// accumulation for accumulate="float16". Algorithms: cuDNN's measured fastest (autotuned once per
// shape and pass, see Autotune), else its heuristics' first that runs; cached with the descriptors.
//
// Dense: cuBLASLt, row-major problems phrased column-major (y^T = w^T x^T), bias fused in the
// epilogue, the activation in one element-wise pass (our kernels' NaN and accuracy rules). Compute
// type: float32 CUBLAS_COMPUTE_32F_FAST_TF32 by default, CUBLAS_COMPUTE_32F for "highest";
// float16 with accumulate="float16" CUBLAS_COMPUTE_16F (bias then added by our pass: cuBLASLt's
// bias epilogue is documented for float32 compute), else float32 accumulation.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda/act.cuh"
#include "cuda/backend.h"
#include "cuda/libs.cuh"
#include "cuda/reduce.cuh"

namespace jax_mps::cuda {
namespace {

constexpr size_t kMaxAlgoWorkspace = size_t(256) << 20;

// ---- element-wise helpers ----

template <typename T>
__global__ void BiasActK(int64_t n, int64_t c, T* y, const T* b, Act act, float alpha) {
  JAX_MPS_GRID_STRIDE(i, n) {
    const float v = Ld(y[i]) + (b ? Ld(b[i % c]) : 0.f);
    y[i] = St<T>(ActF(act, alpha, v));
  }
}

template <typename T>
__global__ void DzK(int64_t n, Act act, float alpha, bool from_output, const T* s, const T* dy, T* dz) {
  JAX_MPS_GRID_STRIDE(i, n) {
    const float g = Ld(dy[i]);
    dz[i] = St<T>(from_output ? ActGFromOutput(act, alpha, Ld(s[i]), g) : ActG(act, alpha, Ld(s[i]), g));
  }
}

// dz = act'(.) * dy (n elements) into buf, or dy itself when there is no activation.
template <typename T>
const T* FormDz(const Ctx& ctx, const FusedDesc& f, int64_t n, const ffi::AnyBuffer& s, const T* dy, char* buf) {
  if (f.act == Act::kNone) return dy;
  T* q = reinterpret_cast<T*>(buf);
  DzK<T><<<Blocks(n), 256, 0, ctx.stream>>>(n, f.act, f.alpha, f.from_output, Ptr<const T>(s), dy, q);
  return q;
}

template <typename T>
__global__ void ColSumK(int64_t rows, int64_t c, const T* v, double* acc) {
  const int64_t j = int64_t(blockIdx.x) * kColX + threadIdx.x;
  double s = 0.0;
  if (j < c)
    for (int64_t r = int64_t(blockIdx.y) * kColY + threadIdx.y; r < rows; r += int64_t(gridDim.y) * kColY)
      s += Ld(v[r * c + j]);
  ColFlush(s, acc, j, c);
}

template <typename T>
__global__ void CastK(int64_t n, const double* s, T* out) {
  JAX_MPS_GRID_STRIDE(i, n) out[i] = St<T>(float(s[i]));
}

template <typename T>
__global__ void ZeroK(int64_t n, T* out) {
  JAX_MPS_GRID_STRIDE(i, n) out[i] = St<T>(0.f);
}

// dst (N, H + lo_h + hi_h, W + lo_w + hi_w, C) = src zero-padded; crop is the inverse.
template <typename T>
__global__ void PadK(int64_t n, int64_t h, int64_t w, int64_t c, int64_t hp, int64_t wp, int64_t lo_h, int64_t lo_w,
                     const T* src, T* dst) {
  JAX_MPS_GRID_STRIDE(e, n * hp * wp * c) {
    const int64_t k = e % c, x = (e / c) % wp, y = (e / (c * wp)) % hp, b = e / (c * wp * hp);
    const int64_t sy = y - lo_h, sx = x - lo_w;
    dst[e] = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? src[((b * h + sy) * w + sx) * c + k] : St<T>(0.f);
  }
}
template <typename T>
__global__ void CropK(int64_t n, int64_t h, int64_t w, int64_t c, int64_t hp, int64_t wp, int64_t lo_h, int64_t lo_w,
                      const T* src, T* dst) {
  JAX_MPS_GRID_STRIDE(e, n * h * w * c) {
    const int64_t k = e % c, x = (e / c) % w, y = (e / (c * w)) % h, b = e / (c * w * h);
    dst[e] = src[((b * hp + y + lo_h) * wp + x + lo_w) * c + k];
  }
}

// w (KH, KW, I, O) <-> W' (KRSC). Plain conv: W'[o][h][x][i] = w[h][x][i][o]. Transposed conv:
// W'[i][h][x][o] = w[KH-1-h][KW-1-x][i][o]. `to_krsc` picks the direction.
template <typename T>
__global__ void FilterK(int64_t kh, int64_t kw, int64_t ci, int64_t co, bool transpose, bool to_krsc, const T* src,
                        T* dst) {
  JAX_MPS_GRID_STRIDE(e, kh * kw * ci * co) {
    const int64_t o = e % co, i = (e / co) % ci, x = (e / (co * ci)) % kw, h = e / (co * ci * kw);  // e: HWIO index
    const int64_t k = transpose ? ((i * kh + (kh - 1 - h)) * kw + (kw - 1 - x)) * co + o
                                : ((o * kh + h) * kw + x) * ci + i;
    if (to_krsc) dst[k] = src[e];
    else dst[e] = src[k];
  }
}

// ---- cuDNN plans ----

cudnnDataType_t CudnnType(ffi::DataType t) {
  return t == ffi::F16 ? CUDNN_DATA_HALF : (t == ffi::BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT);
}

// The forward conv F of a target (see the top of this file).
struct Geo {
  int64_t n, xh, xw, xc, yh, yw, yc, kh, kw, groups, sh, sw, dh, dw;
  int64_t lo_h, lo_w, hi_h, hi_w;  // padding of X
  bool phys;                       // asymmetric: X is padded in the workspace, cuDNN pads 0
  int64_t XHp() const { return phys ? xh + lo_h + hi_h : xh; }
  int64_t XWp() const { return phys ? xw + lo_w + hi_w : xw; }
};

ffi::Error MakeGeo(const char* op, const ConvDesc& c, Geo* g) {
  *g = Geo{};
  g->n = c.n; g->kh = c.kh; g->kw = c.kw; g->groups = c.groups;
  g->sh = c.sh; g->sw = c.sw; g->dh = c.dh; g->dw = c.dw;
  if (!c.transpose) {
    g->xh = c.ih; g->xw = c.iw; g->xc = c.ic; g->yh = c.oh; g->yw = c.ow; g->yc = c.oc;
    g->lo_h = c.plh; g->hi_h = c.phh; g->lo_w = c.plw; g->hi_w = c.phw;
  } else {
    g->xh = c.oh; g->xw = c.ow; g->xc = c.oc; g->yh = c.ih; g->yw = c.iw; g->yc = c.ic;
    const int64_t ekh = (c.kh - 1) * c.dh + 1, ekw = (c.kw - 1) * c.dw + 1;  // dilated kernel extents
    g->lo_h = ekh - 1 - c.plh; g->hi_h = ekh - 1 - c.phh; g->lo_w = ekw - 1 - c.plw; g->hi_w = ekw - 1 - c.phw;
    JAX_MPS_CHECK(g->lo_h >= 0 && g->hi_h >= 0 && g->lo_w >= 0 && g->hi_w >= 0, op,
                  ": padding larger than the dilated kernel minus one is not supported on CUDA");
  }
  g->phys = g->lo_h != g->hi_h || g->lo_w != g->hi_w;
  return ffi::Error::Success();
}

// cuDNN's accumulation (compute) type and math type for one call's dtype and request.
struct ConvMath {
  cudnnDataType_t compute;
  cudnnMathType_t math;
};
ConvMath MathOf(const FusedDesc& f, ffi::DataType dt) {
  if (dt == ffi::F32)
    return {CUDNN_DATA_FLOAT, f.precision == Precision::kHighest ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH};
  return {dt == ffi::F16 && f.f16_accumulate ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH};
}

// Kept in an LRU PlanCache (runtime/common.h); callers hold the shared_ptr while they use it.
struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  std::vector<cudnnConvolutionFwdAlgo_t> fwd;
  std::vector<cudnnConvolutionBwdDataAlgo_t> bwd_data;
  std::vector<cudnnConvolutionBwdFilterAlgo_t> bwd_filter;
  int fwd_ok = -1, data_ok = -1, filter_ok = -1;  // index of the algorithm that ran, once known
  // Per pass: the largest workspace any of its algorithms may take (bounded), once asked. Asking
  // cuDNN on every call cost ~0.4 ms of host time per tiny convolution (the FFT algorithms' queries).
  size_t ws_most[3] = {SIZE_MAX, SIZE_MAX, SIZE_MAX};
  bool fma_only = false;  // precision "highest": no TF32 algorithms
  std::mutex mu;

  ConvPlan() = default;
  ConvPlan(const ConvPlan&) = delete;
  ConvPlan& operator=(const ConvPlan&) = delete;
  ~ConvPlan() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
  }
};

ffi::Error BuildPlan(const char* op, cudnnHandle_t h, const Geo& g, ffi::DataType dt, ConvMath m, ConvPlan* p) {
  const cudnnDataType_t t = CudnnType(dt);
  p->fma_only = m.math == CUDNN_FMA_MATH;
  JAX_MPS_CUDNN(op, cudnnCreateTensorDescriptor(&p->x));
  JAX_MPS_CUDNN(op, cudnnCreateTensorDescriptor(&p->y));
  JAX_MPS_CUDNN(op, cudnnCreateFilterDescriptor(&p->w));
  JAX_MPS_CUDNN(op, cudnnCreateConvolutionDescriptor(&p->conv));
  JAX_MPS_CUDNN(op, cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, t, int(g.n), int(g.xc), int(g.XHp()),
                                               int(g.XWp())));
  JAX_MPS_CUDNN(op, cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, t, int(g.n), int(g.yc), int(g.yh), int(g.yw)));
  JAX_MPS_CUDNN(op, cudnnSetFilter4dDescriptor(p->w, t, CUDNN_TENSOR_NHWC, int(g.yc), int(g.xc / g.groups), int(g.kh),
                                               int(g.kw)));
  // float16 accumulation (cuDNN's TRUE_HALF_CONFIG) where cuDNN has algorithms for all three
  // passes of this shape; otherwise float32 accumulation, which API.md allows as the fallback.
  for (cudnnDataType_t compute : {m.compute, CUDNN_DATA_FLOAT}) {
    JAX_MPS_CUDNN(op, cudnnSetConvolution2dDescriptor(p->conv, g.phys ? 0 : int(g.lo_h), g.phys ? 0 : int(g.lo_w),
                                                      int(g.sh), int(g.sw), int(g.dh), int(g.dw),
                                                      CUDNN_CROSS_CORRELATION, compute));
    JAX_MPS_CUDNN(op, cudnnSetConvolutionGroupCount(p->conv, int(g.groups)));
    JAX_MPS_CUDNN(op, cudnnSetConvolutionMathType(p->conv, m.math));
    int no[4] = {0, 0, 0, 0};
    JAX_MPS_CUDNN(op, cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &no[0], &no[1], &no[2], &no[3]));
    JAX_MPS_CHECK(no[0] == g.n && no[1] == g.yc && no[2] == g.yh && no[3] == g.yw, op,
                  ": internal: cuDNN output dims (", no[2], ", ", no[3], ") != (", g.yh, ", ", g.yw, ")");
    p->fwd.clear();
    p->bwd_data.clear();
    p->bwd_filter.clear();
    constexpr int kN = 8;
    int got = 0;
    cudnnConvolutionFwdAlgoPerf_t fp[kN];
    JAX_MPS_CUDNN(op, cudnnGetConvolutionForwardAlgorithm_v7(h, p->x, p->w, p->conv, p->y, kN, &got, fp));
    for (int i = 0; i < got; ++i) if (fp[i].status == CUDNN_STATUS_SUCCESS) p->fwd.push_back(fp[i].algo);
    cudnnConvolutionBwdDataAlgoPerf_t dp[kN];
    JAX_MPS_CUDNN(op, cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p->w, p->y, p->conv, p->x, kN, &got, dp));
    for (int i = 0; i < got; ++i) if (dp[i].status == CUDNN_STATUS_SUCCESS) p->bwd_data.push_back(dp[i].algo);
    cudnnConvolutionBwdFilterAlgoPerf_t wp[kN];
    JAX_MPS_CUDNN(op, cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->x, p->y, p->conv, p->w, kN, &got, wp));
    for (int i = 0; i < got; ++i) if (wp[i].status == CUDNN_STATUS_SUCCESS) p->bwd_filter.push_back(wp[i].algo);
    if (!p->fwd.empty() && !p->bwd_data.empty() && !p->bwd_filter.empty()) break;
  }
  return ffi::Error::Success();
}

ffi::Error GetPlan(const char* op, cudnnHandle_t h, int dev, const Geo& g, ffi::DataType dt, ConvMath m,
                   std::shared_ptr<ConvPlan>* out) {
  static PlanCache<ConvPlan> cache;
  PlanKey key;
  for (int64_t v : {g.n, g.xh, g.xw, g.xc, g.yh, g.yw, g.yc, g.kh, g.kw, g.groups, g.sh, g.sw, g.dh, g.dw, g.lo_h,
                    g.lo_w, g.hi_h, g.hi_w, int64_t(dt), int64_t(dev), int64_t(m.compute), int64_t(m.math)})
    key.add(v);
  return cache.GetBuilt(key, [&](ConvPlan* p) { return BuildPlan(op, h, g, dt, m, p); }, out);
}

// cuDNN's measured choice (cudnnFind*AlgorithmEx, as XLA's conv autotuner and PyTorch's
// cudnn.benchmark): the fastest algorithm within the workspace, timed once per plan and pass on the
// call's own buffers (its output is then written by the real run). Index into the plan's list for
// `kind` (appended if the heuristic did not list it), or -1. JAX_MPS_CUDNN_AUTOTUNE=0: heuristic only.
bool AutotuneOn() {
  static const bool on = [] {
    const char* e = std::getenv("JAX_MPS_CUDNN_AUTOTUNE");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

template <typename Algo, typename Perf>
int Fastest(const Perf* r, int got, size_t ws_size, bool fma_only, std::vector<Algo>& algos) {
  for (int i = 0; i < got; ++i) {  // sorted fastest first
    if (r[i].status != CUDNN_STATUS_SUCCESS || r[i].memory > ws_size) continue;
    if (fma_only && r[i].mathType != CUDNN_FMA_MATH) continue;
    for (size_t j = 0; j < algos.size(); ++j)
      if (algos[j] == r[i].algo) return int(j);
    algos.push_back(r[i].algo);
    return int(algos.size() - 1);
  }
  return -1;
}

int Autotune(cudnnHandle_t h, ConvPlan* p, int kind, const void* a, const void* b, void* out, void* ws,
             size_t ws_size) {
  constexpr int kN = 8;
  int got = 0;
  const bool fma = p->fma_only;
  if (kind == 0) {
    cudnnConvolutionFwdAlgoPerf_t r[kN];
    if (cudnnFindConvolutionForwardAlgorithmEx(h, p->x, a, p->w, b, p->conv, p->y, out, kN, &got, r, ws, ws_size) !=
        CUDNN_STATUS_SUCCESS)
      return -1;
    return Fastest(r, got, ws_size, fma, p->fwd);
  }
  if (kind == 1) {
    cudnnConvolutionBwdDataAlgoPerf_t r[kN];
    if (cudnnFindConvolutionBackwardDataAlgorithmEx(h, p->w, a, p->y, b, p->conv, p->x, out, kN, &got, r, ws,
                                                    ws_size) != CUDNN_STATUS_SUCCESS)
      return -1;
    return Fastest(r, got, ws_size, fma, p->bwd_data);
  }
  cudnnConvolutionBwdFilterAlgoPerf_t r[kN];
  if (cudnnFindConvolutionBackwardFilterAlgorithmEx(h, p->x, a, p->y, b, p->conv, p->w, out, kN, &got, r, ws,
                                                    ws_size) != CUDNN_STATUS_SUCCESS)
    return -1;
  return Fastest(r, got, ws_size, fma, p->bwd_filter);
}

// Pass `kind` of the plan (0: forward, 1: data gradient, 2: filter gradient of F): how many
// algorithms it lists, the workspace algorithm i needs, and running algorithm i.
size_t AlgoCount(const ConvPlan* p, int kind) {
  return kind == 0 ? p->fwd.size() : (kind == 1 ? p->bwd_data.size() : p->bwd_filter.size());
}
cudnnStatus_t AlgoNeed(cudnnHandle_t h, const ConvPlan* p, int kind, size_t i, size_t* need) {
  return kind == 0   ? cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->w, p->conv, p->y, p->fwd[i], need)
         : kind == 1 ? cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->w, p->y, p->conv, p->x, p->bwd_data[i], need)
                     : cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->x, p->y, p->conv, p->w, p->bwd_filter[i],
                                                                      need);
}
cudnnStatus_t AlgoRun(cudnnHandle_t h, const ConvPlan* p, int kind, size_t i, const void* a, const void* b, void* out,
                      void* ws, size_t ws_size) {
  const float one = 1.f, zero = 0.f;
  return kind == 0   ? cudnnConvolutionForward(h, &one, p->x, a, p->w, b, p->conv, p->fwd[i], ws, ws_size, &zero,
                                               p->y, out)
         : kind == 1 ? cudnnConvolutionBackwardData(h, &one, p->w, a, p->y, b, p->conv, p->bwd_data[i], ws, ws_size,
                                                    &zero, p->x, out)
                     : cudnnConvolutionBackwardFilter(h, &one, p->x, a, p->y, b, p->conv, p->bwd_filter[i], ws,
                                                      ws_size, &zero, p->w, out);
}

// Runs pass `kind` of F with the plan's algorithm for it: on the first call the autotuner's pick,
// else the heuristic's algorithms in order until one runs; remembered. ws/ws_size: the workspace
// left for cuDNN.
ffi::Error RunConv(const char* op, cudnnHandle_t h, ConvPlan* p, int kind, const void* a, const void* b, void* out,
                   void* ws, size_t ws_size) {
  std::lock_guard<std::mutex> lock(p->mu);
  int* ok = kind == 0 ? &p->fwd_ok : (kind == 1 ? &p->data_ok : &p->filter_ok);
  if (*ok < 0 && AutotuneOn()) *ok = Autotune(h, p, kind, a, b, out, ws, ws_size);
  if (*ok >= 0) {  // the remembered algorithm, which fit this (per-plan constant) workspace before
    const cudnnStatus_t st = AlgoRun(h, p, kind, size_t(*ok), a, b, out, ws, ws_size);
    return st == CUDNN_STATUS_SUCCESS ? ffi::Error::Success() : CudnnError(op, st);
  }
  cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
  for (size_t i = 0; i < AlgoCount(p, kind); ++i) {
    size_t need = 0;
    last = AlgoNeed(h, p, kind, i, &need);
    if (last == CUDNN_STATUS_SUCCESS && need <= ws_size) last = AlgoRun(h, p, kind, i, a, b, out, ws, ws_size);
    if (last == CUDNN_STATUS_SUCCESS && need <= ws_size) {
      *ok = int(i);
      return ffi::Error::Success();
    }
  }
  return CudnnError(op, last);
}

// Largest cuDNN workspace any algorithm of the plan may take for `kind` (bounded).
size_t AlgoWorkspace(cudnnHandle_t h, ConvPlan* p, int kind) {
  std::lock_guard<std::mutex> lock(p->mu);
  if (p->ws_most[kind] != SIZE_MAX) return p->ws_most[kind];
  size_t most = 0;
  for (size_t i = 0; i < AlgoCount(p, kind); ++i) {
    size_t need = 0;
    if (AlgoNeed(h, p, kind, i, &need) == CUDNN_STATUS_SUCCESS && need <= kMaxAlgoWorkspace && need > most)
      most = need;
  }
  p->ws_most[kind] = most;
  return most;
}

// Everything one conv call works with: geometry, handle and plan, and the workspace carved into
// the filter in KRSC (wk), the physically padded X (xp, asymmetric padding only), dz = act'(.) * dy
// (backward passes with an activation; else dz is dy itself), double accumulators for the bias
// gradient, and cuDNN's workspace for the pass run.
template <typename T>
struct ConvWork {
  Geo g;
  cudnnHandle_t h;
  std::shared_ptr<ConvPlan> plan;
  T* wk;
  T* xp;
  const T* dz;
  double* acc;
  char* algo;
  size_t algo_size;

  // X for F: src, or src padded into xp.
  const T* PadX(cudaStream_t st, const T* src) {
    if (!g.phys) return src;
    PadK<T><<<Blocks(g.n * g.XHp() * g.XWp() * g.xc), 256, 0, st>>>(g.n, g.xh, g.xw, g.xc, g.XHp(), g.XWp(), g.lo_h,
                                                                     g.lo_w, src, xp);
    return xp;
  }
  // Where F's X-shaped result goes: dst, or xp (then Crop copies it to dst).
  void* XOut(void* dst) { return g.phys ? static_cast<void*>(xp) : dst; }
  void Crop(cudaStream_t st, T* dst) {
    if (g.phys)
      CropK<T><<<Blocks(g.n * g.xh * g.xw * g.xc), 256, 0, st>>>(g.n, g.xh, g.xw, g.xc, g.XHp(), g.XWp(), g.lo_h,
                                                                  g.lo_w, xp, dst);
  }
};

// Sets up `k` for pass `kind` (0 forward, 1 data gradient, 2 filter gradient of F) with a filter
// of nw elements, re-laid out from w when given; dz from s and dy when dy is given.
template <typename T>
ffi::Error MakeConvWork(const char* op, const Ctx& ctx, const ConvDesc& c, ffi::DataType dt, int kind, int64_t nw,
                        const ffi::AnyBuffer* w, const ffi::AnyBuffer* s, const ffi::AnyBuffer* dy, bool bias_acc,
                        ConvWork<T>* k) {
  JAX_MPS_RETURN_IF_ERROR(MakeGeo(op, c, &k->g));
  JAX_MPS_RETURN_IF_ERROR(Cudnn(op, ctx.stream, &k->h));
  JAX_MPS_RETURN_IF_ERROR(GetPlan(op, k->h, StreamDevice(ctx.stream), k->g, dt, MathOf(c, dt), &k->plan));
  const Geo& g = k->g;
  const bool act = dy && c.act != Act::kNone;
  const int64_t ny = dy ? dy->element_count() : 0;
  k->algo_size = AlgoWorkspace(k->h, k->plan.get(), kind);
  Carve cv;
  const size_t o_w = cv.Add(nw * sizeof(T)), o_x = cv.Add(g.phys ? g.n * g.XHp() * g.XWp() * g.xc * sizeof(T) : 0),
               o_dz = cv.Add(act ? ny * sizeof(T) : 0), o_acc = cv.Add(bias_acc ? c.oc * sizeof(double) : 0),
               o_ws = cv.Add(k->algo_size);
  ffi::Error err;
  char* ws = static_cast<char*>(Workspace(ctx, cv.total, op, &err));
  if (!ws) return err;
  k->wk = reinterpret_cast<T*>(ws + o_w);
  k->xp = reinterpret_cast<T*>(ws + o_x);
  k->acc = reinterpret_cast<double*>(ws + o_acc);
  k->algo = ws + o_ws;
  if (w)
    FilterK<T><<<Blocks(nw), 256, 0, ctx.stream>>>(c.kh, c.kw, w->dimensions()[2], c.oc, c.transpose, true,
                                                    Ptr<const T>(*w), k->wk);
  k->dz = dy ? (act ? FormDz<T>(ctx, c, ny, *s, Ptr<const T>(*dy), ws + o_dz) : Ptr<const T>(*dy)) : nullptr;
  return ffi::Error::Success();
}

// The convolution of ConvFwdImpl (x non-empty), bias and activation not applied.
template <typename T>
ffi::Error ConvFwdCore(const char* op, Ctx ctx, const ConvDesc& c, ffi::DataType dt, ffi::AnyBuffer x,
                       ffi::AnyBuffer w, ffi::AnyBuffer y) {
  ConvWork<T> k;
  const int kind = c.transpose ? 1 : 0;
  JAX_MPS_RETURN_IF_ERROR(MakeConvWork<T>(op, ctx, c, dt, kind, w.element_count(), &w, nullptr, nullptr, false, &k));
  if (!c.transpose) {  // Y = F(X = x)
    JAX_MPS_RETURN_IF_ERROR(RunConv(op, k.h, k.plan.get(), 0, k.PadX(ctx.stream, Ptr<const T>(x)), k.wk,
                                    y.untyped_data(), k.algo, k.algo_size));
  } else {  // y = X = data gradient of F at Y = x
    JAX_MPS_RETURN_IF_ERROR(
        RunConv(op, k.h, k.plan.get(), 1, k.wk, x.untyped_data(), k.XOut(y.untyped_data()), k.algo, k.algo_size));
    k.Crop(ctx.stream, Ptr<T>(y));
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwdImpl(Ctx ctx, const ConvDesc& c, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                       ffi::AnyBuffer y) {
  const char* op = c.transpose ? "conv_transpose_fwd" : "conv_fwd";
  const ffi::DataType dt = x.element_type();
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&w, &y}));
  if (c.has_bias) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&b}));
  if (y.element_count() == 0) return ffi::Error::Success();
  return DispatchFloat(op, dt, [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    if (x.element_count() == 0) {  // padding only (cuDNN rejects empty operands): y = act(b)
      ZeroK<T><<<Blocks(y.element_count()), 256, 0, ctx.stream>>>(y.element_count(), Ptr<T>(y));
    } else {
      JAX_MPS_RETURN_IF_ERROR(ConvFwdCore<T>(op, ctx, c, dt, x, w, y));
    }
    if (c.has_bias || c.act != Act::kNone)
      BiasActK<T><<<Blocks(y.element_count()), 256, 0, ctx.stream>>>(
          y.element_count(), c.oc, Ptr<T>(y), c.has_bias ? Ptr<const T>(b) : nullptr, c.act, c.alpha);
    return LaunchStatus(op);
  });
}

// dx from the saved activation operand s (y or z), dy and w.
ffi::Error ConvBwdDataImpl(Ctx ctx, const ConvDesc& c, ffi::AnyBuffer s, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                           ffi::AnyBuffer dx) {
  const char* op = c.transpose ? "conv_transpose_bwd_data" : "conv_bwd_data";
  const ffi::DataType dt = dy.element_type();
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, dy, {&w, &dx}));
  if (c.act != Act::kNone) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, dy, {&s}));
  if (dx.element_count() == 0) return ffi::Error::Success();
  return DispatchFloat(op, dt, [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    if (dy.element_count() == 0) {
      ZeroK<T><<<Blocks(dx.element_count()), 256, 0, ctx.stream>>>(dx.element_count(), Ptr<T>(dx));
      return LaunchStatus(op);
    }
    ConvWork<T> k;
    const int kind = c.transpose ? 0 : 1;
    JAX_MPS_RETURN_IF_ERROR(MakeConvWork<T>(op, ctx, c, dt, kind, w.element_count(), &w, &s, &dy, false, &k));
    if (!c.transpose) {  // dx = data gradient of F at dY = dz (padded X: crop)
      JAX_MPS_RETURN_IF_ERROR(
          RunConv(op, k.h, k.plan.get(), 1, k.wk, k.dz, k.XOut(dx.untyped_data()), k.algo, k.algo_size));
      k.Crop(ctx.stream, Ptr<T>(dx));
    } else {  // dx = F(X = dz)
      JAX_MPS_RETURN_IF_ERROR(
          RunConv(op, k.h, k.plan.get(), 0, k.PadX(ctx.stream, k.dz), k.wk, dx.untyped_data(), k.algo, k.algo_size));
    }
    return LaunchStatus(op);
  });
}

// db (n) = column sums of dz (rows, n), accumulated in double in acc (n).
template <typename T>
ffi::Error BiasGrad(const char* op, const Ctx& ctx, int64_t rows, int64_t n, const T* dz, double* acc, T* db) {
  JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(acc, 0, n * sizeof(double), ctx.stream));
  ColSumK<T><<<ColGrid(rows, n), dim3(kColX, kColY), 0, ctx.stream>>>(rows, n, dz, acc);
  CastK<T><<<Blocks(n), 256, 0, ctx.stream>>>(n, acc, db);
  return LaunchStatus(op);
}

// dw, db from x, the saved activation operand s and dy.
ffi::Error ConvBwdWeightsImpl(Ctx ctx, const ConvDesc& c, ffi::AnyBuffer x, ffi::AnyBuffer s, ffi::AnyBuffer dy,
                              ffi::AnyBuffer dw, ffi::AnyBuffer db) {
  const char* op = c.transpose ? "conv_transpose_bwd_weights" : "conv_bwd_weights";
  const ffi::DataType dt = x.element_type();
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&dy, &dw}));
  if (c.act != Act::kNone) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&s}));
  if (c.has_bias) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&db}));
  return DispatchFloat(op, dt, [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    const int64_t nw = dw.element_count();
    if (dy.element_count() == 0 || x.element_count() == 0) {
      ZeroK<T><<<Blocks(nw), 256, 0, ctx.stream>>>(nw, Ptr<T>(dw));
      if (!c.has_bias) return LaunchStatus(op);
      const int64_t ny = dy.element_count();
      if (ny == 0) {
        ZeroK<T><<<Blocks(c.oc), 256, 0, ctx.stream>>>(c.oc, Ptr<T>(db));
        return LaunchStatus(op);
      }
      // No input (padding only): every output is act(b), so dy still reaches b.
      const bool act = c.act != Act::kNone;
      Carve cv;
      const size_t o_dz = cv.Add(act ? ny * sizeof(T) : 0), o_acc = cv.Add(c.oc * sizeof(double));
      ffi::Error err;
      char* ws = static_cast<char*>(Workspace(ctx, cv.total, op, &err));
      if (!ws) return err;
      const T* dz = FormDz<T>(ctx, c, ny, s, Ptr<const T>(dy), ws + o_dz);
      return BiasGrad<T>(op, ctx, ny / c.oc, c.oc, dz, reinterpret_cast<double*>(ws + o_acc), Ptr<T>(db));
    }
    ConvWork<T> k;
    JAX_MPS_RETURN_IF_ERROR(MakeConvWork<T>(op, ctx, c, dt, 2, nw, nullptr, &s, &dy, c.has_bias, &k));
    // F's filter gradient: X = x, dY = dz (conv); X = dz, dY = x (transposed conv).
    const T* fx = k.PadX(ctx.stream, c.transpose ? k.dz : Ptr<const T>(x));
    const T* fdy = c.transpose ? Ptr<const T>(x) : k.dz;
    JAX_MPS_RETURN_IF_ERROR(RunConv(op, k.h, k.plan.get(), 2, fx, fdy, k.wk, k.algo, k.algo_size));
    FilterK<T><<<Blocks(nw), 256, 0, ctx.stream>>>(c.kh, c.kw, dw.dimensions()[2], c.oc, c.transpose, false, k.wk,
                                                    Ptr<T>(dw));
    if (c.has_bias) return BiasGrad<T>(op, ctx, dy.element_count() / c.oc, c.oc, k.dz, k.acc, Ptr<T>(db));
    return LaunchStatus(op);
  });
}

// ---- dense (cuBLASLt) ----

cudaDataType_t CudaType(ffi::DataType t) {
  return t == ffi::F16 ? CUDA_R_16F : (t == ffi::BF16 ? CUDA_R_16BF : CUDA_R_32F);
}

// Kept in an LRU PlanCache like ConvPlan.
struct MatmulPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
  size_t ws = 0;
  bool half_scale = false;  // CUBLAS_COMPUTE_16F: alpha and beta are __half
  std::mutex mu;  // the bias pointer is an attribute of the shared descriptor

  MatmulPlan() = default;
  MatmulPlan(const MatmulPlan&) = delete;
  MatmulPlan& operator=(const MatmulPlan&) = delete;
  ~MatmulPlan() {
    for (cublasLtMatrixLayout_t l : {a, b, c})
      if (l) cublasLtMatrixLayoutDestroy(l);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

constexpr size_t kLtWorkspace = size_t(32) << 20;

// cuBLASLt's compute type for one call's dtype and request (see the top of this file).
cublasComputeType_t ComputeOf(const FusedDesc& f, ffi::DataType dt) {
  if (dt == ffi::F32) return f.precision == Precision::kHighest ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
  return dt == ffi::F16 && f.f16_accumulate ? CUBLAS_COMPUTE_16F : CUBLAS_COMPUTE_32F;
}

// Column-major C (m, n) = op(A) (m, k) @ op(B) (k, n), ld = rows of the stored matrix; the
// epilogue adds a bias (length m) when asked.
ffi::Error BuildMatmul(const char* op, cublasLtHandle_t h, ffi::DataType dt, cublasComputeType_t ct, int64_t m,
                       int64_t n, int64_t k, bool ta, bool tb, cublasLtEpilogue_t epi, MatmulPlan* p) {
  const cudaDataType_t t = CudaType(dt);
  p->half_scale = ct == CUBLAS_COMPUTE_16F;
  JAX_MPS_CUBLAS(op, cublasLtMatmulDescCreate(&p->desc, ct, p->half_scale ? CUDA_R_16F : CUDA_R_32F));
  const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  JAX_MPS_CUBLAS(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  JAX_MPS_CUBLAS(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  JAX_MPS_CUBLAS(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  JAX_MPS_CUBLAS(op, cublasLtMatrixLayoutCreate(&p->a, t, ta ? k : m, ta ? m : k, ta ? k : m));
  JAX_MPS_CUBLAS(op, cublasLtMatrixLayoutCreate(&p->b, t, tb ? n : k, tb ? k : n, tb ? n : k));
  JAX_MPS_CUBLAS(op, cublasLtMatrixLayoutCreate(&p->c, t, m, n, m));
  cublasLtMatmulPreference_t pref;
  JAX_MPS_CUBLAS(op, cublasLtMatmulPreferenceCreate(&pref));
  cublasLtMatmulHeuristicResult_t res;
  int got = 0;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &kLtWorkspace, sizeof(kLtWorkspace));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(h, p->desc, p->a, p->b, p->c, p->c, pref, 1, &res, &got);
  cublasLtMatmulPreferenceDestroy(pref);
  JAX_MPS_CUBLAS(op, st);
  JAX_MPS_CHECK(got > 0, op, ": cuBLASLt found no algorithm for (", m, ", ", n, ", ", k, ")");
  p->algo = res.algo;
  p->ws = res.workspaceSize;
  return ffi::Error::Success();
}

ffi::Error GetMatmul(const char* op, cublasLtHandle_t h, int dev, ffi::DataType dt, cublasComputeType_t ct, int64_t m,
                     int64_t n, int64_t k, bool ta, bool tb, cublasLtEpilogue_t epi, std::shared_ptr<MatmulPlan>* out) {
  static PlanCache<MatmulPlan> cache;
  PlanKey key;
  key.add(m).add(n).add(k).add(int64_t(ta)).add(int64_t(tb)).add(int64_t(epi)).add(int64_t(dt)).add(int64_t(ct));
  key.add(int64_t(dev));
  return cache.GetBuilt(key, [&](MatmulPlan* p) { return BuildMatmul(op, h, dt, ct, m, n, k, ta, tb, epi, p); },
                        out);
}

ffi::Error RunMatmul(const char* op, const Ctx& ctx, cublasLtHandle_t h, MatmulPlan* p, const void* a, const void* b, void* c,
                     const void* bias, void* ws) {
  const float one = 1.f, zero = 0.f;
  const __half hone = __float2half(1.f), hzero = __float2half(0.f);
  const void* alpha = p->half_scale ? static_cast<const void*>(&hone) : &one;
  const void* beta = p->half_scale ? static_cast<const void*>(&hzero) : &zero;
  std::lock_guard<std::mutex> lock(p->mu);
  if (bias)
    JAX_MPS_CUBLAS(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  JAX_MPS_CUBLAS(op, cublasLtMatmul(h, p->desc, alpha, a, p->a, b, p->b, beta, c, p->c, c, p->c, &p->algo, ws, p->ws,
                                    ctx.stream));
  return ffi::Error::Success();
}

ffi::Error DenseFwdImpl(Ctx ctx, const DenseDesc& d, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                        ffi::AnyBuffer y) {
  const char* op = "dense_fwd";
  const ffi::DataType dt = x.element_type();
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&w, &y}));
  if (d.has_bias) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&b}));
  if (d.m == 0 || d.n == 0) return ffi::Error::Success();
  return DispatchFloat(op, dt, [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    cublasLtHandle_t h = nullptr;
    JAX_MPS_RETURN_IF_ERROR(CublasLt(op, ctx.stream, &h));
    // Only the bias is fused in cuBLASLt's epilogue (float32 compute): its ReLU / GELU epilogues
    // give no NaN guarantee (a max that drops NaN) nor our accuracy at the tails
    // (runtime/activation.h), so every activation runs as our element-wise pass.
    const cublasComputeType_t ct = ComputeOf(d, dt);
    const bool epi_bias = d.has_bias && ct != CUBLAS_COMPUTE_16F;
    const cublasLtEpilogue_t epi = epi_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    std::shared_ptr<MatmulPlan> p;
    const int dev = StreamDevice(ctx.stream);
    JAX_MPS_RETURN_IF_ERROR(GetMatmul(op, h, dev, dt, ct, d.n, d.m, d.k, false, false, epi, &p));  // y^T = w^T x^T
    ffi::Error err;
    void* ws = Workspace(ctx, p->ws, op, &err);
    if (!ws) return err;
    JAX_MPS_RETURN_IF_ERROR(RunMatmul(op, ctx, h, p.get(), w.untyped_data(), x.untyped_data(), y.untyped_data(),
                                      epi_bias ? b.untyped_data() : nullptr, ws));
    const T* pass_bias = d.has_bias && !epi_bias ? Ptr<const T>(b) : nullptr;
    if (d.act != Act::kNone || pass_bias)
      BiasActK<T><<<Blocks(d.m * d.n), 256, 0, ctx.stream>>>(d.m * d.n, d.n, Ptr<T>(y), pass_bias, d.act, d.alpha);
    return LaunchStatus(op);
  });
}

ffi::Error DenseBwdDataImpl(Ctx ctx, const DenseDesc& d, ffi::AnyBuffer s, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                            ffi::AnyBuffer dx) {
  const char* op = "dense_bwd_data";
  const ffi::DataType dt = dy.element_type();
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, dy, {&w, &dx}));
  const bool act = d.act != Act::kNone;
  if (act) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, dy, {&s}));
  if (d.m == 0 || d.k == 0) return ffi::Error::Success();
  return DispatchFloat(op, dt, [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    if (d.n == 0) {
      ZeroK<T><<<Blocks(d.m * d.k), 256, 0, ctx.stream>>>(d.m * d.k, Ptr<T>(dx));
      return LaunchStatus(op);
    }
    cublasLtHandle_t h = nullptr;
    JAX_MPS_RETURN_IF_ERROR(CublasLt(op, ctx.stream, &h));
    std::shared_ptr<MatmulPlan> p;
    JAX_MPS_RETURN_IF_ERROR(GetMatmul(op, h, StreamDevice(ctx.stream), dt, ComputeOf(d, dt), d.k, d.m, d.n, true, false,
                                      CUBLASLT_EPILOGUE_DEFAULT, &p));
    Carve cv;
    const size_t o_dz = cv.Add(act ? d.m * d.n * sizeof(T) : 0), o_ws = cv.Add(p->ws);
    ffi::Error err;
    char* ws = static_cast<char*>(Workspace(ctx, cv.total, op, &err));
    if (!ws) return err;
    const T* dz = FormDz<T>(ctx, d, d.m * d.n, s, Ptr<const T>(dy), ws + o_dz);
    // dx^T (K, M) = w (K, N) @ dz^T (N, M): w is stored as a column-major (N, K).
    JAX_MPS_RETURN_IF_ERROR(RunMatmul(op, ctx, h, p.get(), w.untyped_data(), dz, dx.untyped_data(), nullptr, ws + o_ws));
    return LaunchStatus(op);
  });
}

ffi::Error DenseBwdWeightsImpl(Ctx ctx, const DenseDesc& d, ffi::AnyBuffer x, ffi::AnyBuffer s, ffi::AnyBuffer dy,
                               ffi::AnyBuffer dw, ffi::AnyBuffer db) {
  const char* op = "dense_bwd_weights";
  const ffi::DataType dt = x.element_type();
  JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&dy, &dw}));
  const bool act = d.act != Act::kNone;
  if (act) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&s}));
  if (d.has_bias) JAX_MPS_RETURN_IF_ERROR(SameDtype(op, x, {&db}));
  return DispatchFloat(op, dt, [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    if (d.m == 0) {
      ZeroK<T><<<Blocks(d.k * d.n), 256, 0, ctx.stream>>>(d.k * d.n, Ptr<T>(dw));
      if (d.has_bias) ZeroK<T><<<Blocks(d.n), 256, 0, ctx.stream>>>(d.n, Ptr<T>(db));
      return LaunchStatus(op);
    }
    if (d.k == 0 || d.n == 0) return ffi::Error::Success();
    cublasLtHandle_t h = nullptr;
    JAX_MPS_RETURN_IF_ERROR(CublasLt(op, ctx.stream, &h));
    std::shared_ptr<MatmulPlan> p;
    JAX_MPS_RETURN_IF_ERROR(GetMatmul(op, h, StreamDevice(ctx.stream), dt, ComputeOf(d, dt), d.n, d.k, d.m, false, true,
                                      CUBLASLT_EPILOGUE_DEFAULT, &p));
    Carve cv;
    const size_t o_dz = cv.Add(act ? d.m * d.n * sizeof(T) : 0), o_acc = cv.Add(d.has_bias ? d.n * sizeof(double) : 0),
                 o_ws = cv.Add(p->ws);
    ffi::Error err;
    char* ws = static_cast<char*>(Workspace(ctx, cv.total, op, &err));
    if (!ws) return err;
    const T* dz = FormDz<T>(ctx, d, d.m * d.n, s, Ptr<const T>(dy), ws + o_dz);
    // dw^T (N, K) = dz^T (N, M) @ x (M, K): x is stored as a column-major (K, M).
    JAX_MPS_RETURN_IF_ERROR(RunMatmul(op, ctx, h, p.get(), dz, x.untyped_data(), dw.untyped_data(), nullptr, ws + o_ws));
    if (d.has_bias) return BiasGrad<T>(op, ctx, d.m, d.n, dz, reinterpret_cast<double*>(ws + o_acc), Ptr<T>(db));
    return LaunchStatus(op);
  });
}

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {

ffi::Error Cuda::ConvFwd(Ctx s, const ConvDesc& c, Buf x, Buf w, Buf b, Buf y) {
  return cuda::ConvFwdImpl(s, c, x, w, b, y);
}
ffi::Error Cuda::ConvBwdData(Ctx s, const ConvDesc& c, Buf sy, Buf dy, Buf w, Buf dx) {
  return cuda::ConvBwdDataImpl(s, c, sy, dy, w, dx);
}
ffi::Error Cuda::ConvBwdWeights(Ctx s, const ConvDesc& c, Buf x, Buf sy, Buf dy, Buf dw, Buf db) {
  return cuda::ConvBwdWeightsImpl(s, c, x, sy, dy, dw, db);
}
ffi::Error Cuda::DenseFwd(Ctx s, const DenseDesc& d, Buf x, Buf w, Buf b, Buf y) {
  return cuda::DenseFwdImpl(s, d, x, w, b, y);
}
ffi::Error Cuda::DenseBwdData(Ctx s, const DenseDesc& d, Buf sy, Buf dy, Buf w, Buf dx) {
  return cuda::DenseBwdDataImpl(s, d, sy, dy, w, dx);
}
ffi::Error Cuda::DenseBwdWeights(Ctx s, const DenseDesc& d, Buf x, Buf sy, Buf dy, Buf dw, Buf db) {
  return cuda::DenseBwdWeightsImpl(s, d, x, sy, dy, dw, db);
}

}  // namespace jax_mps
