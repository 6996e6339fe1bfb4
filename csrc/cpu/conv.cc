// Convolution (1-D as 2-D with H = 1), transposed convolution and dense on the CPU (oneDNN), the
// targets of runtime/conv.h. Bias and activation are fused as oneDNN post-ops; each backward first
// turns dy into dz = dy * act'(.) from the saved output y (ActGradFromOutput) or pre-activation z.
#include <algorithm>
#include <cmath>
#include <vector>

#include <omp.h>

#include "cpu/backend.h"
#include "cpu/dnnl_common.h"
#include "cpu/eltwise.h"
#include "cpu/f32.h"
#include "cpu/kernel_util.h"
#include "cpu/winograd.h"

namespace jax_mps::cpu {
namespace {

using dnnl::algorithm;
using dnnl::memory;
using dnnl::prop_kind;

// Primitive attribute for a fused activation: the activation always runs as our own pass after
// the primitive (*after), never as a oneDNN eltwise post-op, whose relu/clip turn NaN into 0.
dnnl::primitive_attr ActAttr(Act act, float /*alpha*/, bool* after) {
  *after = act != Act::kNone;
  return UserAttr();
}

// Per-thread scratch (XLA:CPU may run custom calls on several threads at once).
float* Scratch(int slot, size_t n) {
  thread_local ScratchBuffer<float> buf[3];
  return buf[slot].get(n);
}

// dz = dy * act'(s); returns dy itself when there is no activation.
const float* ActGrad(const FusedDesc& f, int64_t n, const float* s, const float* dy) {
  if (f.act == Act::kNone) return dy;
  float* dz = Scratch(0, n);
  if (f.act == Act::kRelu && f.from_output) {
    // The common case inline, no OpenMP region for a memory-bound loop, up to 4 MiB; beyond, both
    // threads stream it (measured 5-15% of a large layer's backward pass, InceptionV3's 73x73+).
    if (n < (int64_t(1) << 20)) {
      ReluGradFromOutput(n, s, dy, dz);
      return dz;
    }
    const int64_t chunk = int64_t(1) << 16, nc = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nc; ++i) {
      const int64_t o = i * chunk;
      ReluGradFromOutput(std::min(chunk, n - o), s + o, dy + o, dz + o);
    }
    return dz;
  }
  ActBackward(f.act, f.alpha, n, s, dy, dz, f.from_output);
  return dz;
}

// w (KH, KW, I, O) -> spatially flipped copy: lax.conv_transpose (no kernel transpose) is a
// oneDNN deconvolution with the flipped kernel.
void Flip(const ConvDesc& c, const float* w, float* out) {
  const int64_t io = c.ic * c.oc;
  for (int64_t h = 0; h < c.kh; ++h)
    for (int64_t x = 0; x < c.kw; ++x)
      std::memcpy(out + ((c.kh - 1 - h) * c.kw + (c.kw - 1 - x)) * io, w + (h * c.kw + x) * io, io * sizeof(float));
}

struct ConvMds {
  memory::desc src, wei, bias, dst;  // wei: format any, the primitive picks the layout
  memory::desc wei_user;             // our HWIO (HWIGO) weights
  memory::dims strides, dilates, pl, pr;
};

ConvMds MakeMds(const ConvDesc& c, bool has_bias) {
  ConvMds m;
  m.src = memory::desc({c.n, c.ic, c.ih, c.iw}, dt::f32, tag::nhwc);
  m.dst = memory::desc({c.n, c.oc, c.oh, c.ow}, dt::f32, tag::nhwc);
  const memory::dims wdims = c.groups == 1 ? memory::dims{c.oc, c.ic, c.kh, c.kw}
                                           : memory::dims{c.groups, c.oc / c.groups, c.ic / c.groups, c.kh, c.kw};
  m.wei_user = memory::desc(wdims, dt::f32, c.groups == 1 ? tag::hwio : tag::hwigo);
  m.wei = memory::desc(wdims, dt::f32, tag::any);
  if (has_bias) m.bias = memory::desc({c.oc}, dt::f32, tag::a);
  m.strides = {c.sh, c.sw};
  m.dilates = {c.dh - 1, c.dw - 1};
  const int64_t ekh = (c.kh - 1) * c.dh + 1, ekw = (c.kw - 1) * c.dw + 1;
  if (c.transpose) {
    m.pl = {ekh - 1 - c.plh, ekw - 1 - c.plw};
    m.pr = {ekh - 1 - c.phh, ekw - 1 - c.phw};
  } else {
    // oneDNN wants dims consistent without flooring: trim the high padding lax floors away.
    m.pl = {c.plh, c.plw};
    m.pr = {(c.oh - 1) * c.sh + ekh - c.ih - c.plh, (c.ow - 1) * c.sw + ekw - c.iw - c.plw};
  }
  return m;
}

// The weights layout a convolution primitive chose. With plain HWIO weights oneDNN's brgemm and
// jit convolutions decline and gemm:jit runs, 2-5x slower (forward and both backward passes at
// 32+ channels); so primitives take format any and each call reorders our HWIO weights in
// (forward, backward data) or the diff weights out (backward weights). Weights are small.
struct WeiLayout {
  memory::desc user, prim;
  dnnl::primitive reorder;  // empty when the primitive takes HWIO itself

  WeiLayout() = default;
  WeiLayout(const memory::desc& user_md, const memory::desc& prim_md, bool into_prim) : user(user_md), prim(prim_md) {
    if (prim == user) return;
    reorder = into_prim ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), user, Engine(), prim, UserAttr()))
                        : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), prim, Engine(), user, UserAttr()));
  }
  float* Buffer(float* user_ptr) const {
    return reorder ? Scratch(2, (prim.get_size() + sizeof(float) - 1) / sizeof(float)) : user_ptr;
  }
  // HWIO weights w in the primitive's layout.
  const float* In(const float* w) const {
    if (!reorder) return w;
    float* buf = Buffer(nullptr);
    Exec(reorder, {{DNNL_ARG_FROM, Mem(user, w)}, {DNNL_ARG_TO, Mem(prim, buf)}});
    return buf;
  }
  // Diff weights written by the primitive to Buffer(dw) -> HWIO dw.
  void Out(const float* buf, float* dw) const {
    if (reorder) Exec(reorder, {{DNNL_ARG_FROM, Mem(prim, buf)}, {DNNL_ARG_TO, Mem(user, dw)}});
  }
};

// ---- dense: oneDNN matmul; transposed operands are strided views, never copies ----

struct MatmulPlan {
  dnnl::matmul prim;
  memory::desc a, b, bias, c;
  bool act_after = false;
};

// C (m, n) = A (m, k) @ B (k, n); a_t / b_t: the operand is stored transposed (row-major (k, m) / (n, k)).
std::shared_ptr<MatmulPlan> GetMatmul(int64_t m, int64_t k, int64_t n, bool a_t, bool b_t, bool bias, Act act, float alpha) {
  static PlanCache<MatmulPlan> cache;
  PlanKey key;
  key.add(m).add(k).add(n).add(int64_t(a_t)).add(int64_t(b_t)).add(int64_t(bias)).add(static_cast<int64_t>(act))
      .add(static_cast<double>(alpha)).add(int64_t(omp_get_max_threads()));
  return cache.Get(key, [&] {
    MatmulPlan p;
    p.a = a_t ? memory::desc({m, k}, dt::f32, memory::dims{1, m}) : memory::desc({m, k}, dt::f32, tag::ab);
    p.b = b_t ? memory::desc({k, n}, dt::f32, memory::dims{1, k}) : memory::desc({k, n}, dt::f32, tag::ab);
    p.c = memory::desc({m, n}, dt::f32, tag::ab);
    auto attr = ActAttr(act, alpha, &p.act_after);
    if (bias) {
      p.bias = memory::desc({1, n}, dt::f32, tag::ab);
      p.prim = dnnl::matmul(dnnl::matmul::primitive_desc(Engine(), p.a, p.b, p.bias, p.c, attr));
    } else {
      p.prim = dnnl::matmul(dnnl::matmul::primitive_desc(Engine(), p.a, p.b, p.c, attr));
    }
    return p;
  });
}

void RunMatmul(const std::shared_ptr<MatmulPlan>& p, const float* a, const float* b, const float* bias, float* c) {
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, Mem(p->a, a)},
                                       {DNNL_ARG_WEIGHTS, Mem(p->b, b)},
                                       {DNNL_ARG_DST, Mem(p->c, c)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, Mem(p->bias, bias));
  Exec(p->prim, std::move(args));
}


// ---- im2col + GEMM backward passes for small-channel groups == 1 convs ----
// oneDNN falls back to gemm:jit there (~10x off, e.g. 200 ms for LeNet's first layer's dw). We lower
// to GEMMs over row chunks of the im2col matrix (rows p = (n, oh, ow), columns (kh, kw, ci) =
// the HWIO weight rows), chunked so a chunk stays in cache, chunks spread over OpenMP threads,
// with the activation derivative applied per chunk (no full-size dz pass).
bool UseIm2Col(const ConvDesc& c) { return !c.transpose && c.groups == 1 && c.ic < 32; }

constexpr int64_t kChunkBytes = 256 << 10;

int64_t ChunkRows(const ConvDesc& c) {
  const int64_t kc = c.kh * c.kw * c.ic + 1;
  return std::max<int64_t>(16, kChunkBytes / (kc * int64_t(sizeof(float))));
}

// count rows of n floats: d[i * ds + j] = s[i * ss + j]. Window rows of small-channel convs are
// a handful of floats (LeNet's first layer: 5), so common n get a fixed-size, unrolled copy.
template <int N>
void CopyRowsFixed(const float* __restrict s, int64_t ss, float* __restrict d, int64_t ds, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    for (int j = 0; j < N; ++j) d[i * ds + j] = s[i * ss + j];
}
void CopyRows(const float* __restrict s, int64_t ss, float* __restrict d, int64_t ds, int64_t count, int64_t n) {
  switch (n) {
    case 1: return CopyRowsFixed<1>(s, ss, d, ds, count);
    case 2: return CopyRowsFixed<2>(s, ss, d, ds, count);
    case 3: return CopyRowsFixed<3>(s, ss, d, ds, count);
    case 4: return CopyRowsFixed<4>(s, ss, d, ds, count);
    case 5: return CopyRowsFixed<5>(s, ss, d, ds, count);
    case 6: return CopyRowsFixed<6>(s, ss, d, ds, count);
    case 7: return CopyRowsFixed<7>(s, ss, d, ds, count);
    case 9: return CopyRowsFixed<9>(s, ss, d, ds, count);
    case 15: return CopyRowsFixed<15>(s, ss, d, ds, count);
    default:
      for (int64_t i = 0; i < count; ++i)
        for (int64_t j = 0; j < n; ++j) d[i * ds + j] = s[i * ss + j];
  }
}

// [lo, hi): the output columns in [ow0, ow1) whose window row lies inside the input row and is one
// contiguous run of it (dw == 1): ow*sw - plw >= 0 and ow*sw - plw + kw <= iw.
void FullWindows(const ConvDesc& c, int64_t ow0, int64_t ow1, int64_t* lo, int64_t* hi) {
  *lo = (c.plw + c.sw - 1) / c.sw;
  *hi = c.iw + c.plw >= c.kw ? (c.iw + c.plw - c.kw) / c.sw + 1 : 0;
  if (c.dw != 1) *lo = *hi = ow1;
  *lo = std::clamp(*lo, ow0, ow1);
  *hi = std::clamp(*hi, *lo, ow1);
}

// im2col rows for output positions (n, oh, ow0..ow1) of one image row, row stride ld; zeros where
// the window hits padding. Positions whose window lies inside the row (and dw == 1) are copied a
// kernel row at a time for the whole run, the edges one window at a time.
void Im2ColSegment(const ConvDesc& c, const float* img, int64_t oh, int64_t ow0, int64_t ow1, float* cols,
                   int64_t ld) {
  const int64_t kwc = c.kw * c.ic;
  int64_t lo, hi;
  FullWindows(c, ow0, ow1, &lo, &hi);
  for (int64_t kh = 0; kh < c.kh; ++kh) {
    const int64_t ih = oh * c.sh + kh * c.dh - c.plh;
    float* dst = cols + kh * kwc;
    if (ih < 0 || ih >= c.ih) {
      for (int64_t ow = ow0; ow < ow1; ++ow) std::fill_n(dst + (ow - ow0) * ld, kwc, 0.f);
      continue;
    }
    const float* src = img + ih * c.iw * c.ic;  // indexed from base * ic (>= 0 from k0 on)
    if (hi > lo) CopyRows(src + (lo * c.sw - c.plw) * c.ic, c.sw * c.ic, dst + (lo - ow0) * ld, ld, hi - lo, kwc);
    auto edge = [&](int64_t ow) {
      float* d = dst + (ow - ow0) * ld;
      const int64_t base = ow * c.sw - c.plw;  // valid kw: 0 <= base + kw*dw < iw
      const int64_t k0 = base < 0 ? std::min(c.kw, (-base + c.dw - 1) / c.dw) : 0;
      const int64_t k1 = std::max(k0, base >= c.iw ? 0 : std::min(c.kw, (c.iw - base + c.dw - 1) / c.dw));
      std::fill(d, d + k0 * c.ic, 0.f);
      for (int64_t kw = k0; kw < k1; ++kw)
        for (int64_t j = 0; j < c.ic; ++j) d[kw * c.ic + j] = src[(base + kw * c.dw) * c.ic + j];
      std::fill(d + k1 * c.ic, d + kwc, 0.f);
    };
    for (int64_t ow = ow0; ow < lo; ++ow) edge(ow);
    for (int64_t ow = hi; ow < ow1; ++ow) edge(ow);
  }
}

// Rows p0..p1 of the im2col matrix (rows p = (n, oh, ow), columns (kh, kw, ci) = the HWIO weight
// rows; row stride ld, and with ld > kc column kc set to 1), one image row segment at a time.
void Im2Col(const ConvDesc& c, const float* x, int64_t p0, int64_t p1, float* cols, int64_t ld) {
  const int64_t ohw = c.oh * c.ow, kc = c.kh * c.kw * c.ic;
  for (int64_t p = p0; p < p1;) {
    const int64_t n = p / ohw, oh = p % ohw / c.ow, ow = p % c.ow, ow1 = std::min(c.ow, ow + (p1 - p));
    Im2ColSegment(c, x + n * c.ih * c.iw * c.ic, oh, ow, ow1, cols + (p - p0) * ld, ld);
    p += ow1 - ow;
  }
  if (ld > kc)
    for (int64_t p = 0; p < p1 - p0; ++p) cols[p * ld + kc] = 1.f;
}

// dz for rows [p0, p1) (a pointer into dy when there is no activation).
const float* ChunkDz(Act act, float alpha, bool from_output, const float* s, const float* dy, int64_t oc, int64_t p0,
                     int64_t p1, ScratchBuffer<float>& buf) {
  const int64_t m = (p1 - p0) * oc;
  const float* dz = dy + p0 * oc;
  if (act == Act::kNone) return dz;
  float* out = buf.get(m);
  if (act == Act::kRelu && from_output) {
    ReluGradFromOutput(m, s + p0 * oc, dz, out);
  } else {
    ActBackward(act, alpha, m, s + p0 * oc, dz, out, from_output);
  }
  return out;
}

// [dw; db] = [im2col(x) | 1]^T @ dz with dz = dy * act'(s) made per chunk (the column of ones
// makes the GEMM produce db too): per-thread partial sums, then one reduction.
void Im2ColBwdWeights(const ConvDesc& c, const float* x, const float* s, const float* dy, Act act, float alpha,
                      bool from_output, float* dw, float* db) {
  const int64_t kc = c.kh * c.kw * c.ic, kc1 = kc + 1, rows = c.n * c.oh * c.ow, ch = ChunkRows(c), oc = c.oc;
  const int64_t nchunks = (rows + ch - 1) / ch;
  const int nt = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), nchunks));
  float* part = Scratch(1, size_t(nt) * kc1 * oc);
  std::fill(part, part + size_t(nt) * kc1 * oc, 0.f);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    float* mine = part + size_t(t) * kc1 * oc;  // (oc, kc + 1): dw^T with db as the last column
    thread_local ScratchBuffer<float> cols_buf, tmp_buf, dzc;
    float* cols = cols_buf.get(ch * kc1);
    float* tmp = tmp_buf.get(kc1 * oc);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nchunks; ++i) {
      const int64_t p0 = i * ch, p1 = std::min(rows, p0 + ch);
      const float* dz = ChunkDz(act, alpha, from_output, s, dy, oc, p0, p1, dzc);
      Im2Col(c, x, p0, p1, cols, kc1);
      // (oc, kc + 1) = dz^T @ cols: the long reduction runs over B's rows, which brgemm does well.
      auto mp = GetMatmul(oc, p1 - p0, kc1, true, false, false, Act::kNone, 0.f);
      RunMatmul(mp, dz, cols, nullptr, tmp);
      for (int64_t j = 0; j < kc1 * oc; ++j) mine[j] += tmp[j];
    }
  }
  for (int64_t k = 0; k < kc1; ++k)
    for (int64_t o = 0; o < oc; ++o) {
      float acc = 0.f;
      for (int t = 0; t < nt; ++t) acc += part[size_t(t) * kc1 * oc + o * kc1 + k];
      if (k < kc)
        dw[k * oc + o] = acc;
      else if (db)
        db[o] = acc;
    }
}

// Adds one output row's im2col-gradient rows (n, oh, 0..ow) into the image dx: the inverse of
// Im2ColSegment, full windows a kernel row at a time.
void Col2ImRow(const ConvDesc& c, const float* rows, int64_t oh, float* dx) {
  const int64_t kwc = c.kw * c.ic, kc = c.kh * kwc;
  int64_t lo, hi;
  FullWindows(c, 0, c.ow, &lo, &hi);
  for (int64_t kh = 0; kh < c.kh; ++kh) {
    const int64_t ih = oh * c.sh + kh * c.dh - c.plh;
    if (ih < 0 || ih >= c.ih) continue;
    float* dst = dx + ih * c.iw * c.ic;
    const float* src = rows + kh * kwc;
    for (int64_t ow = lo; ow < hi; ++ow) {
      float* __restrict d = dst + (ow * c.sw - c.plw) * c.ic;
      const float* __restrict r = src + ow * kc;
#pragma omp simd
      for (int64_t j = 0; j < kwc; ++j) d[j] += r[j];
    }
    auto edge = [&](int64_t ow) {
      for (int64_t kw = 0; kw < c.kw; ++kw) {
        const int64_t iw = ow * c.sw + kw * c.dw - c.plw;
        if (iw < 0 || iw >= c.iw) continue;
        for (int64_t j = 0; j < c.ic; ++j) dst[iw * c.ic + j] += src[ow * kc + kw * c.ic + j];
      }
    };
    for (int64_t ow = 0; ow < lo; ++ow) edge(ow);
    for (int64_t ow = hi; ow < c.ow; ++ow) edge(ow);
  }
}

// dx = col2im(dz @ w^T), chunks of whole images so threads never add into the same dx rows.
void Im2ColBwdData(const ConvDesc& c, const float* s, const float* dy, const float* w, Act act, float alpha,
                   bool from_output, float* dx) {
  const int64_t kc = c.kh * c.kw * c.ic, ohw = c.oh * c.ow, oc = c.oc;
  const int64_t imgs = std::max<int64_t>(1, ChunkRows(c) / ohw), nchunks = (c.n + imgs - 1) / imgs;
  const int64_t xsz = c.ih * c.iw * c.ic;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nchunks; ++i) {
    const int64_t n0 = i * imgs, n1 = std::min(c.n, n0 + imgs), p0 = n0 * ohw, p1 = n1 * ohw;
    thread_local ScratchBuffer<float> dcols_buf, dzc;
    float* dcols = dcols_buf.get((p1 - p0) * kc);
    const float* dz = ChunkDz(act, alpha, from_output, s, dy, oc, p0, p1, dzc);
    RunMatmul(GetMatmul(p1 - p0, oc, kc, false, true, false, Act::kNone, 0.f), dz, w, nullptr, dcols);
    std::fill(dx + n0 * xsz, dx + n1 * xsz, 0.f);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t oh = 0; oh < c.oh; ++oh)
        Col2ImRow(c, dcols + ((n - n0) * ohw + oh * c.ow) * kc, oh, dx + n * xsz);
  }
}

struct ConvPlan {
  dnnl::primitive prim;
  ConvMds m;
  WeiLayout wei;
  bool act_after = false;  // forward: the activation runs as its own pass
};

// Forward primitive descriptors (also the hints for the backward ones).
// oneDNN's convolution and deconvolution (transposed conv) primitives take the same arguments;
// these traits let one set of builders serve both.
struct ConvPrims {
  using Fwd = dnnl::convolution_forward;
  using BwdData = dnnl::convolution_backward_data;
  using BwdWeights = dnnl::convolution_backward_weights;
  static constexpr algorithm kAlg = algorithm::convolution_direct;
};
struct DeconvPrims {
  using Fwd = dnnl::deconvolution_forward;
  using BwdData = dnnl::deconvolution_backward_data;
  using BwdWeights = dnnl::deconvolution_backward_weights;
  static constexpr algorithm kAlg = algorithm::deconvolution_direct;
};

template <typename P>
typename P::Fwd::primitive_desc FwdPd(const ConvMds& m, bool has_bias, const dnnl::primitive_attr& attr = UserAttr()) {
  if (has_bias)
    return {Engine(), prop_kind::forward_training, P::kAlg, m.src, m.wei, m.bias, m.dst, m.strides, m.dilates, m.pl,
            m.pr, attr};
  return {Engine(), prop_kind::forward_training, P::kAlg, m.src, m.wei, m.dst, m.strides, m.dilates, m.pl, m.pr,
          attr};
}

template <typename P>
void FwdPlan(ConvPlan& p, bool has_bias, const dnnl::primitive_attr& attr) {
  const auto pd = FwdPd<P>(p.m, has_bias, attr);
  p.prim = typename P::Fwd(pd);
  p.wei = WeiLayout(p.m.wei_user, pd.weights_desc(), true);
}

template <typename P>
void BwdDataPlan(ConvPlan& p) {
  const ConvMds& m = p.m;
  const typename P::BwdData::primitive_desc pd(Engine(), P::kAlg, m.src, m.wei, m.dst, m.strides, m.dilates, m.pl,
                                               m.pr, FwdPd<P>(m, false), UserAttr());
  p.prim = typename P::BwdData(pd);
  p.wei = WeiLayout(m.wei_user, pd.weights_desc(), true);
}

template <typename P>
void BwdWeightsPlan(ConvPlan& p, bool has_bias) {
  using Pd = typename P::BwdWeights::primitive_desc;
  const ConvMds& m = p.m;
  const auto hint = FwdPd<P>(m, has_bias);
  const Pd pd = has_bias
                    ? Pd(Engine(), P::kAlg, m.src, m.wei, m.bias, m.dst, m.strides, m.dilates, m.pl, m.pr, hint, UserAttr())
                    : Pd(Engine(), P::kAlg, m.src, m.wei, m.dst, m.strides, m.dilates, m.pl, m.pr, hint, UserAttr());
  p.prim = typename P::BwdWeights(pd);
  p.wei = WeiLayout(m.wei_user, pd.diff_weights_desc(), false);
}

PlanKey ConvKey(int64_t kind, const ConvDesc& c, bool has_bias, Act act = Act::kNone, float alpha = 0.f) {
  PlanKey key;
  key.add(kind);
  c.AddTo(key);
  key.add(int64_t(has_bias)).add(static_cast<int64_t>(act)).add(static_cast<double>(alpha));
  return key;
}

// Convolutions that are dense layers over a reshaped input, run as oneDNN's matmul:
// - windows tiling the input exactly (stride = kernel, no padding or dilation, one image row: conv1d
//   over whole chunks, the activity model's first layer): x (n, 1, ow * kw, ic) is (n * ow, kw * ic),
//   HWIO w is (kw * ic, oc); oneDNN's convolution runs it ~1.5x slower than its matmul;
// - 1x1 stride-1 unpadded convolutions over 512+ channels (InceptionV3's 17x17 and 8x8 ones) or
//   32k+ pixels (its 73x73 64->80 at batch 8: backward 15-23 -> 13-18 ms): (n * h * w, ic) @ (ic, oc),
//   10-25% faster there than oneDNN's 1x1 convolution (at 35x35 with 192-288 channels, mixed).
bool AsDense(const ConvDesc& c, DenseDesc* d) {
  if (c.transpose || c.groups != 1 || c.plh != 0 || c.plw != 0) return false;
  const bool tiling = c.ih == 1 && c.kh == 1 && c.oh == 1 && c.sw == c.kw && c.dw == 1 && c.ow * c.kw == c.iw;
  const bool pointwise = c.kh == 1 && c.kw == 1 && c.sh == 1 && c.sw == 1 && c.oh == c.ih && c.ow == c.iw &&
                         (c.ic >= 512 || c.n * c.oh * c.ow >= 32768);
  if (!tiling && !pointwise) return false;
  static_cast<FusedDesc&>(*d) = c;
  d->m = c.n * c.oh * c.ow;
  d->k = c.kh * c.kw * c.ic;
  d->n = c.oc;
  return true;
}

// db (n) = column sums of dz (rows, n).
void BiasGrad(const float* dz, int64_t rows, int64_t n, float* db) {
  std::fill(db, db + n, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = dz + r * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) db[j] += row[j];
  }
}

// The saved activation operand (ignored, and possibly any size, when there is no activation).
const float* SavedOrNull(const F32In& s, const FusedDesc& f) { return f.act == Act::kNone ? nullptr : s.get(); }

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

ffi::Error Cpu::ConvFwd(Ctx ctx, const ConvDesc& c, Buf x, Buf w, Buf b, Buf y) {
  const int64_t ny = static_cast<int64_t>(y.element_count());
  if (ny == 0) return ffi::Error::Success();
  if (x.element_count() == 0) {  // padding only (oneDNN rejects some empty operands): y = act(b)
    F32In bf(b);
    F32Out yf(y);
    float* yp = yf.get();
    for (int64_t i = 0; i < ny; ++i) yp[i] = c.has_bias ? bf.get()[i % c.oc] : 0.f;
    if (c.act != Act::kNone) ActForward(c.act, c.alpha, ny, yp, yp);
    return ffi::Error::Success();
  }
  if (DenseDesc d; AsDense(c, &d)) return DenseFwd(ctx, d, x, w, b, y);
  F32In xf(x), wf(w), bf(b);
  F32Out yf(y);
  if (UseWinograd(c) && WinogradFwd(c, xf.get(), wf.get(), c.has_bias ? bf.get() : nullptr, yf.get()))
    return ffi::Error::Success();
  static PlanCache<ConvPlan> cache;
  auto plan = cache.Get(ConvKey(0, c, c.has_bias, c.act, c.alpha), [&] {
    ConvPlan p;
    p.m = MakeMds(c, c.has_bias);
    auto attr = ActAttr(c.act, c.alpha, &p.act_after);
    if (c.transpose)
      FwdPlan<DeconvPrims>(p, c.has_bias, attr);
    else
      FwdPlan<ConvPrims>(p, c.has_bias, attr);
    return p;
  });
  const float* wp = wf.get();
  if (c.transpose) {
    float* f = Scratch(1, w.element_count());
    Flip(c, wp, f);
    wp = f;
  }
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, Mem(plan->m.src, xf.get())},
                                       {DNNL_ARG_WEIGHTS, Mem(plan->wei.prim, plan->wei.In(wp))},
                                       {DNNL_ARG_DST, Mem(plan->m.dst, yf.get())}};
  if (c.has_bias) args.emplace(DNNL_ARG_BIAS, Mem(plan->m.bias, bf.get()));
  Exec(plan->prim, std::move(args));
  if (plan->act_after) ActForward(c.act, c.alpha, ny, yf.get(), yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::ConvBwdData(Ctx ctx, const ConvDesc& c, Buf s, Buf dy, Buf w, Buf dx) {
  if (dx.element_count() == 0) return ffi::Error::Success();
  if (DenseDesc d; AsDense(c, &d)) return DenseBwdData(ctx, d, s, dy, w, dx);
  F32Out dxf(dx);
  if (dy.element_count() == 0) {
    std::memset(dxf.get(), 0, dx.element_count() * sizeof(float));
    return ffi::Error::Success();
  }
  F32In sf(s), dyf(dy), wf(w);
  const float* sp = SavedOrNull(sf, c);
  if (UseWinograd(c) && WinogradBwdData(c, ActGrad(c, dy.element_count(), sp, dyf.get()), wf.get(), dxf.get()))
    return ffi::Error::Success();
  if (UseIm2Col(c)) {
    Im2ColBwdData(c, sp, dyf.get(), wf.get(), c.act, c.alpha, c.from_output, dxf.get());
    return ffi::Error::Success();
  }
  static PlanCache<ConvPlan> cache;
  auto plan = cache.Get(ConvKey(1, c, false), [&] {
    ConvPlan p;
    p.m = MakeMds(c, false);
    if (c.transpose)
      BwdDataPlan<DeconvPrims>(p);
    else
      BwdDataPlan<ConvPrims>(p);
    return p;
  });
  const float* dz = ActGrad(c, dy.element_count(), sp, dyf.get());
  const float* wp = wf.get();
  if (c.transpose) {
    float* f = Scratch(1, w.element_count());
    Flip(c, wp, f);
    wp = f;
  }
  Exec(plan->prim, {{DNNL_ARG_DIFF_DST, Mem(plan->m.dst, dz)},
                    {DNNL_ARG_WEIGHTS, Mem(plan->wei.prim, plan->wei.In(wp))},
                    {DNNL_ARG_DIFF_SRC, Mem(plan->m.src, dxf.get())}});
  return ffi::Error::Success();
}

ffi::Error Cpu::ConvBwdWeights(Ctx ctx, const ConvDesc& c, Buf x, Buf s, Buf dy, Buf dw, Buf db) {
  if (DenseDesc d; AsDense(c, &d)) return DenseBwdWeights(ctx, d, x, s, dy, dw, db);
  F32Out dwf(dw), dbf(db);
  if (dy.element_count() == 0 || x.element_count() == 0) {
    std::memset(dwf.get(), 0, dw.element_count() * sizeof(float));
    if (c.has_bias) {  // no input (padding only): every output is act(b), so dy still reaches b
      F32In sf(s), dyf(dy);
      const int64_t n = dy.element_count();
      BiasGrad(n ? ActGrad(c, n, SavedOrNull(sf, c), dyf.get()) : nullptr, n / c.oc, c.oc, dbf.get());
    }
    return ffi::Error::Success();
  }
  F32In xf(x), sf(s), dyf(dy);
  const float* sp = SavedOrNull(sf, c);
  if (UseWinograd(c) && WinogradBwdWeights(c, xf.get(), ActGrad(c, dy.element_count(), sp, dyf.get()), dwf.get(),
                                           c.has_bias ? dbf.get() : nullptr))
    return ffi::Error::Success();
  if (UseIm2Col(c)) {
    Im2ColBwdWeights(c, xf.get(), sp, dyf.get(), c.act, c.alpha, c.from_output, dwf.get(),
                     c.has_bias ? dbf.get() : nullptr);
    return ffi::Error::Success();
  }
  static PlanCache<ConvPlan> cache;
  auto plan = cache.Get(ConvKey(2, c, c.has_bias), [&] {
    ConvPlan p;
    p.m = MakeMds(c, c.has_bias);
    if (c.transpose)
      BwdWeightsPlan<DeconvPrims>(p, c.has_bias);
    else
      BwdWeightsPlan<ConvPrims>(p, c.has_bias);
    return p;
  });
  const float* dz = ActGrad(c, dy.element_count(), sp, dyf.get());
  float* dwp = c.transpose ? Scratch(1, dw.element_count()) : dwf.get();
  float* dwl = plan->wei.Buffer(dwp);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, Mem(plan->m.src, xf.get())},
                                       {DNNL_ARG_DIFF_DST, Mem(plan->m.dst, dz)},
                                       {DNNL_ARG_DIFF_WEIGHTS, Mem(plan->wei.prim, dwl)}};
  if (c.has_bias) args.emplace(DNNL_ARG_DIFF_BIAS, Mem(plan->m.bias, dbf.get()));
  Exec(plan->prim, std::move(args));
  plan->wei.Out(dwl, dwp);
  if (c.transpose) Flip(c, dwp, dwf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::DenseFwd(Ctx, const DenseDesc& d, Buf x, Buf w, Buf b, Buf y) {
  if (d.m == 0 || d.n == 0) return ffi::Error::Success();
  F32In xf(x), wf(w), bf(b);
  F32Out yf(y);
  ThreadLimit one(d.m * d.n * d.k < kSmallGemm);
  auto p = GetMatmul(d.m, d.k, d.n, false, false, d.has_bias, d.act, d.alpha);
  RunMatmul(p, xf.get(), wf.get(), d.has_bias ? bf.get() : nullptr, yf.get());
  if (p->act_after) ActForward(d.act, d.alpha, y.element_count(), yf.get(), yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::DenseBwdData(Ctx, const DenseDesc& d, Buf s, Buf dy, Buf w, Buf dx) {
  if (d.m == 0 || d.k == 0) return ffi::Error::Success();
  F32Out dxf(dx);
  if (d.n == 0) {
    std::memset(dxf.get(), 0, dx.element_count() * sizeof(float));
    return ffi::Error::Success();
  }
  F32In sf(s), dyf(dy), wf(w);
  ThreadLimit one(d.m * d.n * d.k < kSmallGemm);
  const float* dz = ActGrad(d, dy.element_count(), SavedOrNull(sf, d), dyf.get());
  auto p = GetMatmul(d.m, d.n, d.k, false, true, false, Act::kNone, 0.f);  // dz @ w^T
  RunMatmul(p, dz, wf.get(), nullptr, dxf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::DenseBwdWeights(Ctx, const DenseDesc& d, Buf x, Buf s, Buf dy, Buf dw, Buf db) {
  F32Out dwf(dw), dbf(db);
  if (d.m == 0) {
    std::memset(dwf.get(), 0, dw.element_count() * sizeof(float));
    if (d.has_bias) std::memset(dbf.get(), 0, db.element_count() * sizeof(float));
    return ffi::Error::Success();
  }
  if (d.k == 0 || d.n == 0) return ffi::Error::Success();
  F32In xf(x), sf(s), dyf(dy);
  ThreadLimit one(d.m * d.n * d.k < kSmallGemm);
  const float* dz = ActGrad(d, dy.element_count(), SavedOrNull(sf, d), dyf.get());
  auto p = GetMatmul(d.k, d.m, d.n, true, false, false, Act::kNone, 0.f);  // x^T @ dz
  RunMatmul(p, xf.get(), dz, nullptr, dwf.get());
  if (d.has_bias) BiasGrad(dz, d.m, d.n, dbf.get());
  return ffi::Error::Success();
}

}  // namespace jax_mps
