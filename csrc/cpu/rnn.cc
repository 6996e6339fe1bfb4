// LSTM / GRU / RNN (multi-layer, bidirectional, packed-sequence lengths) on the CPU.
//
// Own kernels rather than oneDNN's RNN primitives: those have no sequence-length support (packed
// semantics need per-row state freezing and zero outputs). Per layer-direction: one GEMM projects the inputs of every
// time step (rows in x's own layout, so batch- and time-major need no copy), then one recurrent
// GEMM (B x H x GH, biases fused) and a fused element-wise cell per step. The backward runs the
// per-step element-wise + recurrent GEMM chain and then does dW_ih, dW_hh and dx as one GEMM each
// over all time steps. Whole-sequence GEMMs are oneDNN's dnnl_sgemm; the per-step recurrent GEMMs
// are oneDNN matmuls on W_hh packed once per call (measured faster than sgemm re-packing each step).
// Threads split the batch: each runs its slice's projection, chain and dx with no per-step
// synchronisation (see Forward).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <exception>
#include <string>
#include <vector>

#include "cpu/backend.h"
#include "cpu/dnnl_common.h"
#include "cpu/f32.h"
#include "cpu/kernel_util.h"
#include "cpu/vec512.h"

namespace jax_mps::cpu {
namespace {

#define JAX_MPS_INLINE inline __attribute__((always_inline))

JAX_MPS_INLINE float Sigmoid(float x) { return 1.f / (1.f + FastExp(-x)); }
JAX_MPS_INLINE float Tanh(float x) { return 1.f - 2.f / (FastExp(2.f * x) + 1.f); }

// Per-row cell kernels: every column block is its own restrict parameter so GCC vectorises them.
JAX_MPS_INLINE void LstmFwdRow(int64_t H, float* __restrict gi, float* __restrict gf, float* __restrict gg,
                               float* __restrict go, float* __restrict gtc, float* __restrict gcp,
                               float* __restrict ghp, const float* __restrict ai, const float* __restrict af,
                               const float* __restrict ag, const float* __restrict ao, float* __restrict h,
                               float* __restrict c, float* __restrict yo) {
  for (int64_t j = 0; j < H; ++j) {
    float i = Sigmoid(gi[j] + ai[j]);
    float f = Sigmoid(gf[j] + af[j]);
    float gv = Tanh(gg[j] + ag[j]);
    float o = Sigmoid(go[j] + ao[j]);
    float cp = c[j];
    float cn = f * cp + i * gv;
    float tc = Tanh(cn);
    float hn = o * tc;
    gi[j] = i;
    gf[j] = f;
    gg[j] = gv;
    go[j] = o;
    gtc[j] = tc;
    gcp[j] = cp;
    ghp[j] = h[j];
    c[j] = cn;
    h[j] = hn;
    yo[j] = hn;
  }
}

JAX_MPS_INLINE void GruFwdRow(int64_t H, float* __restrict gr, float* __restrict gz, float* __restrict gn,
                              float* __restrict ghn, float* __restrict ghp, const float* __restrict ar,
                              const float* __restrict az, const float* __restrict an, const float* __restrict bin,
                              float* __restrict h, float* __restrict yo) {
  for (int64_t j = 0; j < H; ++j) {
    float r = Sigmoid(gr[j] + ar[j]);
    float z = Sigmoid(gz[j] + az[j]);
    float hn = an[j];
    float n = Tanh(gn[j] + bin[j] + r * hn);
    float hp = h[j];
    float out = n + z * (hp - n);
    gr[j] = r;
    gz[j] = z;
    gn[j] = n;
    ghn[j] = hn;
    ghp[j] = hp;
    h[j] = out;
    yo[j] = out;
  }
}

JAX_MPS_INLINE void LstmBwdRow(int64_t H, const float* __restrict gi, const float* __restrict gf,
                               const float* __restrict gg, const float* __restrict go, const float* __restrict gtc,
                               const float* __restrict gcp, const float* __restrict dyo, float* __restrict di,
                               float* __restrict df, float* __restrict dg, float* __restrict dO,
                               float* __restrict dh, float* __restrict dc, float* __restrict dn) {
  for (int64_t j = 0; j < H; ++j) {
    float i = gi[j], f = gf[j], gv = gg[j], o = go[j], tc = gtc[j], cp = gcp[j];
    float dht = dh[j] + dyo[j];
    float dct = dc[j] + dht * o * (1.f - tc * tc);
    di[j] = dct * gv * i * (1.f - i);
    df[j] = dct * cp * f * (1.f - f);
    dg[j] = dct * i * (1.f - gv * gv);
    dO[j] = dht * tc * o * (1.f - o);
    dc[j] = dct * f;
    dn[j] = 0.f;
  }
}

JAX_MPS_INLINE void GruBwdRow(int64_t H, const float* __restrict gr, const float* __restrict gz,
                              const float* __restrict gn, const float* __restrict ghn, const float* __restrict ghp,
                              const float* __restrict dyo, float* __restrict xr, float* __restrict xz,
                              float* __restrict xn, float* __restrict hr, float* __restrict hz,
                              float* __restrict hnn, const float* __restrict dh, float* __restrict dn) {
  for (int64_t j = 0; j < H; ++j) {
    float r = gr[j], z = gz[j], n = gn[j], hn = ghn[j], hp = ghp[j];
    float dht = dh[j] + dyo[j];
    float dnp = dht * (1.f - z) * (1.f - n * n);
    float drp = dnp * hn * r * (1.f - r);
    float dzp = dht * (hp - n) * z * (1.f - z);
    xr[j] = drp;
    xz[j] = dzp;
    xn[j] = dnp;
    hr[j] = drp;
    hz[j] = dzp;
    hnn[j] = dnp * r;
    dn[j] = dht * z;
  }
}

void Gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (dnnl_sgemm(ta, tb, m, n, k, 1.f, a, lda, b, ldb, beta, c, ldc) != dnnl_success)
    throw std::runtime_error("dnnl_sgemm failed: " + std::string(1, ta) + std::string(1, tb) + " m=" +
                             std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) + " lda=" +
                             std::to_string(lda) + " ldb=" + std::to_string(ldb) + " ldc=" + std::to_string(ldc));
}

// Reused per-thread scratch (XLA may call from several threads).
float* Scratch(ScratchBuffer<float>& v, int64_t n) { return v.get(static_cast<size_t>(n)); }

// Per-step recurrent GEMM with W_hh packed once per call into oneDNN's blocked layout (brgemm),
// instead of dnnl_sgemm re-packing it every step. dst (m x n, contiguous) [+]= src (m x k, row
// stride lda) * W [+ bias], where W is W_hh (k x n) or, transposed, W_hh^T read from the (n x k) array.
struct StepPlan {
  dnnl::matmul mm;
  dnnl::matmul::primitive_desc pd;
  dnnl::reorder pack;
  dnnl::memory::desc w_user;
};

class StepGemm {
 public:
  StepGemm(int64_t m, int64_t n, int64_t k, int64_t lda, bool transposed, bool accumulate, const float* w,
           const float* bias = nullptr) {
    static PlanCache<StepPlan> cache;
    PlanKey key;
    // Inside a parallel region oneDNN plans for one thread; outside it splits the work itself.
    key.add(m).add(n).add(k).add(lda).add(int64_t(transposed)).add(int64_t(accumulate)).add(int64_t(bias != nullptr));
    key.add(int64_t(omp_in_parallel()));
    plan_ = cache.Get(key, [&] {
      dnnl::memory::desc src({m, k}, dt::f32, dnnl::memory::dims{lda, 1});
      dnnl::memory::desc wany({k, n}, dt::f32, tag::any);
      dnnl::memory::desc dst({m, n}, dt::f32, tag::ab);
      dnnl::primitive_attr attr = UserAttr();
      if (accumulate) {
        dnnl::post_ops po;
        po.append_sum(1.f);
        attr.set_post_ops(po);
      }
      dnnl::matmul::primitive_desc pd =
          bias ? dnnl::matmul::primitive_desc(Engine(), src, wany, dnnl::memory::desc({1, n}, dt::f32, tag::ab), dst, attr)
               : dnnl::matmul::primitive_desc(Engine(), src, wany, dst, attr);
      dnnl::memory::desc w_user({k, n}, dt::f32, transposed ? dnnl::memory::dims{1, k} : dnnl::memory::dims{n, 1});
      dnnl::reorder::primitive_desc rpd(Engine(), w_user, Engine(), pd.weights_desc(), UserAttr());
      return StepPlan{dnnl::matmul(pd), pd, dnnl::reorder(rpd), w_user};
    });
    // One StepGemm alive per thread at a time: the packed weights and scratchpad are per thread.
    thread_local ScratchBuffer<float> packed, pad;
    float* packed_p = Scratch(packed, static_cast<int64_t>(plan_->pd.weights_desc().get_size() / sizeof(float)) + 1);
    auto wmem = dnnl::memory(plan_->pd.weights_desc(), Engine(), packed_p);
    Exec(plan_->pack, {{DNNL_ARG_FROM, Mem(plan_->w_user, w)}, {DNNL_ARG_TO, wmem}});
    src_ = dnnl::memory(plan_->pd.src_desc(), Engine(), DNNL_MEMORY_NONE);
    dst_ = dnnl::memory(plan_->pd.dst_desc(), Engine(), DNNL_MEMORY_NONE);
    args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_WEIGHTS, wmem}, {DNNL_ARG_DST, dst_}};
    if (bias) args_.emplace(DNNL_ARG_BIAS, Mem(plan_->pd.bias_desc(), bias));
    const dnnl::memory::desc pad_md = plan_->pd.scratchpad_desc();
    if (pad_md.get_size()) {
      float* pad_p = Scratch(pad, static_cast<int64_t>(pad_md.get_size() / sizeof(float)) + 1);
      args_.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(pad_md, Engine(), pad_p));
    }
  }
  // Argument map built once: the per-step call is only the kernel (cf. Exec's per-call setup).
  void operator()(const float* src, float* dst) {
    src_.set_data_handle(const_cast<float*>(src));
    dst_.set_data_handle(dst);
    plan_->mm.execute(Stream(), args_);
    Stream().wait();
  }

 private:
  std::shared_ptr<StepPlan> plan_;
  dnnl::memory src_, dst_;
  std::unordered_map<int, dnnl::memory> args_;
};

// Threads for the per-step chains. Batch rows are independent recurrences, so each thread runs the
// whole chain of its own slice of rows with no per-step synchronisation; at least 8 rows a slice
// keeps the per-step GEMMs efficient. With one slice oneDNN parallelises each GEMM instead.
int ChainThreads(int64_t B) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), B / 8)));
}

// Runs f(i, n) on n = nt threads (inline when nt == 1: oneDNN calls in f then use every thread,
// while inside a parallel region they run on the calling thread). Rethrows the first exception.
template <typename F>
void Parallel(int nt, F&& f) {
  if (nt == 1) return f(int64_t(0), int64_t(1));
  std::exception_ptr err;
#pragma omp parallel num_threads(nt)
  {
    try {
      f(int64_t(omp_get_thread_num()), int64_t(omp_get_num_threads()));
    } catch (...) {
#pragma omp critical(jax_mps_rnn_err)
      err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

// Part i of n of [0, N), boundaries at multiples of `align` (one 64-byte line of floats).
void Split(int64_t N, int64_t i, int64_t n, int64_t* lo, int64_t* hi, int64_t align = 16) {
  const int64_t blocks = (N + align - 1) / align;
  *lo = std::min(N, blocks * i / n * align);
  *hi = std::min(N, blocks * (i + 1) / n * align);
}

// ---- Forward steps. g: this step's workspace rows (stride rs) holding the input projection
// in the gate columns on entry; a: h_{t-1} W_hh + biases (B x GH; GRU: b_in is separate, as it
// stays outside the reset product); h/c: carried state (B x H);
// y: output rows (stride ys). Rows past their length keep the state, write y = 0 and a finite
// h_{t-1} (the dW_hh GEMM reads every row).

#if defined(__x86_64__)
// LstmFwdRow in AVX-512 intrinsics (vec512.h): GCC's vectorisation of the generic row spent ~12
// cycles an element on its five exps and divisions; this ~7 (the cell was ~20% of the forward).
JAX_MPS_AVX512_INLINE __m512 Add512(const float* p, const float* q, __mmask16 k) {
  return _mm512_add_ps(_mm512_maskz_loadu_ps(k, p), _mm512_maskz_loadu_ps(k, q));
}

JAX_MPS_AVX512 void LstmFwdRow512(int64_t H, float* g, const float* a, float* h, float* c, float* yo) {
  for (int64_t j = 0; j < H; j += 16) {
    const __mmask16 k = H - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (H - j)) - 1);
    const __m512 i = Sigmoid512(Add512(g + j, a + j, k)), f = Sigmoid512(Add512(g + H + j, a + H + j, k));
    const __m512 gv = Tanh512(Add512(g + 2 * H + j, a + 2 * H + j, k)), o = Sigmoid512(Add512(g + 3 * H + j, a + 3 * H + j, k));
    const __m512 cp = _mm512_maskz_loadu_ps(k, c + j), hp = _mm512_maskz_loadu_ps(k, h + j);
    const __m512 cn = _mm512_fmadd_ps(f, cp, _mm512_mul_ps(i, gv));
    const __m512 tc = Tanh512(cn);
    const __m512 hn = _mm512_mul_ps(o, tc);
    const __m512 out[7] = {i, f, gv, o, tc, cp, hp};
    for (int q = 0; q < 7; ++q) _mm512_mask_storeu_ps(g + q * H + j, k, out[q]);
    _mm512_mask_storeu_ps(c + j, k, cn);
    _mm512_mask_storeu_ps(h + j, k, hn);
    _mm512_mask_storeu_ps(yo + j, k, hn);
  }
}
#endif

JAX_MPS_CLONES
void LstmFwdStep(int64_t B, int64_t H, int64_t t, const int32_t* len, float* ws, int64_t rs, const float* tmp,
                 float* hc, float* cc, float* y, int64_t ys) {
#if defined(__x86_64__)
  const bool v512 = HasAvx512();
#endif
  for (int64_t b = 0; b < B; ++b) {
    float* __restrict g = ws + b * rs;
    const float* __restrict a = tmp + b * 4 * H;
    float* __restrict h = hc + b * H;
    float* __restrict c = cc + b * H;
    float* __restrict yo = y + b * ys;
    if (t >= len[b]) {
      for (int64_t j = 0; j < H; ++j) {
        yo[j] = 0.f;
        g[6 * H + j] = h[j];
      }
      continue;
    }
#if defined(__x86_64__)
    if (v512) {
      LstmFwdRow512(H, g, a, h, c, yo);
      continue;
    }
#endif
    LstmFwdRow(H, g, g + H, g + 2 * H, g + 3 * H, g + 4 * H, g + 5 * H, g + 6 * H, a, a + H, a + 2 * H, a + 3 * H, h, c, yo);
  }
}

JAX_MPS_CLONES
void GruFwdStep(int64_t B, int64_t H, int64_t t, const int32_t* len, float* ws, int64_t rs, const float* tmp,
                const float* bin, float* hc, float* y, int64_t ys) {
  for (int64_t b = 0; b < B; ++b) {
    float* __restrict g = ws + b * rs;
    const float* __restrict a = tmp + b * 3 * H;
    float* __restrict h = hc + b * H;
    float* __restrict yo = y + b * ys;
    if (t >= len[b]) {
      for (int64_t j = 0; j < H; ++j) {
        yo[j] = 0.f;
        g[4 * H + j] = h[j];
      }
      continue;
    }
    GruFwdRow(H, g, g + H, g + 2 * H, g + 3 * H, g + 4 * H, a, a + H, a + 2 * H, bin, h, yo);
  }
}

JAX_MPS_CLONES
void RnnFwdStep(int64_t B, int64_t H, int64_t t, const int32_t* len, float* ws, int64_t rs, const float* tmp,
                bool relu, float* hc, float* y, int64_t ys) {
  for (int64_t b = 0; b < B; ++b) {
    float* __restrict g = ws + b * rs;
    const float* __restrict a = tmp + b * H;
    float* __restrict h = hc + b * H;
    float* __restrict yo = y + b * ys;
    if (t >= len[b]) {
      for (int64_t j = 0; j < H; ++j) {
        yo[j] = 0.f;
        g[H + j] = h[j];
      }
      continue;
    }
    float* __restrict gp = g + H;
    if (relu) {
      for (int64_t j = 0; j < H; ++j) {
        float out = std::max(g[j] + a[j], 0.f);
        g[j] = out;
        gp[j] = h[j];
        h[j] = out;
        yo[j] = out;
      }
    } else {
      for (int64_t j = 0; j < H; ++j) {
        float out = Tanh(g[j] + a[j]);
        g[j] = out;
        gp[j] = h[j];
        h[j] = out;
        yo[j] = out;
      }
    }
  }
}

// ---- Backward steps. dh/dc: carried gradient w.r.t. this step's h_t / c_t (from later steps);
// dy: output-gradient rows (stride dys); dgx/dgh: gate-gradient rows (stride dgs) w.r.t. the input
// and recurrent pre-activations; dhn receives the direct part of dL/dh_{t-1} (the recurrent GEMM
// adds dgh W_hh^T afterwards). Rows past their length pass the carried gradient through.

JAX_MPS_CLONES
void LstmBwdStep(int64_t B, int64_t H, int64_t t, const int32_t* len, const float* ws, int64_t rs,
                 const float* dy, int64_t dys, float* dg, int64_t dgs, float* dhc, float* dcc, float* dhn) {
  for (int64_t b = 0; b < B; ++b) {
    const float* __restrict g = ws + b * rs;
    const float* __restrict dyo = dy + b * dys;
    float* __restrict d = dg + b * dgs;
    float* __restrict dh = dhc + b * H;
    float* __restrict dc = dcc + b * H;
    float* __restrict dn = dhn + b * H;
    if (t >= len[b]) {
      std::memset(d, 0, 4 * H * sizeof(float));
      std::memcpy(dn, dh, H * sizeof(float));
      continue;
    }
    LstmBwdRow(H, g, g + H, g + 2 * H, g + 3 * H, g + 4 * H, g + 5 * H, dyo, d, d + H, d + 2 * H, d + 3 * H, dh, dc, dn);
  }
}

JAX_MPS_CLONES
void GruBwdStep(int64_t B, int64_t H, int64_t t, const int32_t* len, const float* ws, int64_t rs,
                const float* dy, int64_t dys, float* dgx, float* dgh, int64_t dgs, float* dhc, float* dhn) {
  for (int64_t b = 0; b < B; ++b) {
    const float* __restrict g = ws + b * rs;
    const float* __restrict dyo = dy + b * dys;
    float* __restrict dx = dgx + b * dgs;
    float* __restrict dr = dgh + b * dgs;
    float* __restrict dh = dhc + b * H;
    float* __restrict dn = dhn + b * H;
    if (t >= len[b]) {
      std::memset(dx, 0, 3 * H * sizeof(float));
      std::memset(dr, 0, 3 * H * sizeof(float));
      std::memcpy(dn, dh, H * sizeof(float));
      continue;
    }
    GruBwdRow(H, g, g + H, g + 2 * H, g + 3 * H, g + 4 * H, dyo, dx, dx + H, dx + 2 * H, dr, dr + H, dr + 2 * H, dh, dn);
  }
}

JAX_MPS_CLONES
void RnnBwdStep(int64_t B, int64_t H, int64_t t, const int32_t* len, const float* ws, int64_t rs, bool relu,
                const float* dy, int64_t dys, float* dg, int64_t dgs, float* dhc, float* dhn) {
  for (int64_t b = 0; b < B; ++b) {
    const float* __restrict g = ws + b * rs;
    const float* __restrict dyo = dy + b * dys;
    float* __restrict d = dg + b * dgs;
    float* __restrict dh = dhc + b * H;
    float* __restrict dn = dhn + b * H;
    if (t >= len[b]) {
      std::memset(d, 0, H * sizeof(float));
      std::memcpy(dn, dh, H * sizeof(float));
      continue;
    }
    for (int64_t j = 0; j < H; ++j) {
      float out = g[j];
      float dht = dh[j] + dyo[j];
      d[j] = relu ? (out <= 0.f ? 0.f : dht) : dht * (1.f - out * out);  // relu: a NaN passes dht (torch)
      dn[j] = 0.f;
    }
  }
}

struct Weights {
  const float *w_ih, *w_hh, *b_ih, *b_hh;
};

// Lengths in [0, T]: values, so checked here where they are read (the runtime checks shapes).
ffi::Error CheckLengths(const RnnDesc& d, const int32_t* lp) {
  for (int64_t b = 0; b < d.B; ++b)
    JAX_MPS_CHECK(lp[b] >= 0 && lp[b] <= d.T, "rnn: seq_lengths[", b, "] = ", lp[b], " is outside [0, ", d.T, "]");
  return ffi::Error::Success();
}

// Float32 views of the weight arrays (w_ih, w_hh, b_ih, b_hh per layer-direction).
std::vector<Weights> WeightViews(const Buffers& w, std::deque<F32In>& keep) {
  std::vector<Weights> ws;
  for (size_t i = 0; i + 3 < w.size(); i += 4) {
    const float* p[4];
    for (int q = 0; q < 4; ++q) p[q] = keep.emplace_back(w[i + q]).get();
    ws.push_back({p[0], p[1], p[2], p[3]});
  }
  return ws;
}

// Layer-direction passes run batch slices in parallel (ChainThreads): each thread projects its
// own rows' inputs, runs their recurrence and, in the backward, their dx; only the weight
// gradients (sums over every row) are split by columns after the chains. Rows are in x's layout;
// a slice's rows are contiguous when batch-major, so time-major projects / back-projects every
// row at once instead (oneDNN then uses all threads).
void Forward(const RnnDesc& d, const float* x, const float* h0, const float* c0, const int32_t* len,
             const std::vector<Weights>& w, float* y, float* hn, float* cn, float* wsp) {
  const int64_t B = d.B, H = d.H, T = d.T, D = d.D, GH = d.G() * H, W = d.W(), rows = d.Rows(), DH = D * H;
  const int64_t sT = d.sT(), sB = d.sB();
  const int nt = ChainThreads(B);
  const bool local = nt == 1 || !d.time_major;
  thread_local ScratchBuffer<float> s_tmp, s_h, s_c, s_bias, s_bias0;
  float* tmp = Scratch(s_tmp, B * GH);
  float* hc = Scratch(s_h, B * H);
  float* cc = Scratch(s_c, B * H);
  float* bias = Scratch(s_bias, GH);
  float* bias0 = Scratch(s_bias0, GH);
  float* louts = wsp + d.L * D * rows * W;
  for (int64_t l = 0; l < d.L; ++l) {
    const float* X = l == 0 ? x : louts + (l - 1) * rows * DH;
    const int64_t Il = d.InputSize(l);
    float* Y = l == d.L - 1 ? y : louts + l * rows * DH;
    for (int64_t k = 0; k < D; ++k) {
      const int64_t ld = l * D + k;
      const Weights& p = w[ld];
      float* ws = wsp + ld * rows * W;
      // Biases go into the recurrent GEMM: b_ih + b_hh (GRU's n gate: b_hn, b_in joins in the cell).
      const bool gru = d.cell == Cell::kGru;
      for (int64_t j = 0; j < GH; ++j) bias[j] = gru && j >= 2 * H ? p.b_hh[j] : p.b_ih[j] + p.b_hh[j];
      std::memcpy(hc, h0 + ld * B * H, B * H * sizeof(float));
      if (d.cell == Cell::kLstm) std::memcpy(cc, c0 + ld * B * H, B * H * sizeof(float));
      // A zero initial state (the default) makes the first step's GEMM the biases plus 0 * W_hh:
      // zeros, but NaN in a column holding a NaN or inf, as the GEMM (and torch, and lax) gives.
      const bool zero_h0 = std::all_of(hc, hc + B * H, [](float v) { return v == 0.f; });
      if (zero_h0) {
        std::memcpy(bias0, bias, GH * sizeof(float));
        for (int64_t i = 0; i < H; ++i)
          for (int64_t j = 0; j < GH; ++j) bias0[j] += 0.f * p.w_hh[i * GH + j];
      }
      // Gate columns <- x W_ih.
      if (!local) Gemm('N', 'N', rows, GH, Il, X, Il, p.w_ih, GH, 0.f, ws, W);
      Parallel(nt, [&](int64_t i, int64_t n) {
        const int64_t b0 = B * i / n, b1 = B * (i + 1) / n, m = b1 - b0;
        if (local) Gemm('N', 'N', m * T, GH, Il, X + b0 * sB * Il, Il, p.w_ih, GH, 0.f, ws + b0 * sB * W, W);
        float *h = hc + b0 * H, *c = cc + b0 * H, *a = tmp + b0 * GH;
        StepGemm rec(m, GH, H, H, false, false, p.w_hh, bias);
        for (int64_t s = 0; s < T; ++s) {
          const int64_t t = k == 0 ? s : T - 1 - s;
          const int64_t r = t * sT + b0 * sB;
          float* g = ws + r * W;
          float* yo = Y + r * DH + k * H;
          if (s == 0 && zero_h0)
            for (int64_t b = 0; b < m; ++b) std::memcpy(a + b * GH, bias0, GH * sizeof(float));
          else
            rec(h, a);
          switch (d.cell) {
            case Cell::kLstm: LstmFwdStep(m, H, t, len + b0, g, sB * W, a, h, c, yo, sB * DH); break;
            case Cell::kGru: GruFwdStep(m, H, t, len + b0, g, sB * W, a, p.b_ih + 2 * H, h, yo, sB * DH); break;
            default: RnnFwdStep(m, H, t, len + b0, g, sB * W, a, d.cell == Cell::kRnnRelu, h, yo, sB * DH);
          }
        }
      });
      std::memcpy(hn + ld * B * H, hc, B * H * sizeof(float));
      if (d.cell == Cell::kLstm) std::memcpy(cn + ld * B * H, cc, B * H * sizeof(float));
    }
  }
}

// out[j] = sum over rows of a[r * lda + j], j < n.
JAX_MPS_CLONES
void ColSum(const float* a, int64_t rows, int64_t n, int64_t lda, float* __restrict out) {
  std::fill(out, out + n, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict ar = a + r * lda;
    for (int64_t j = 0; j < n; ++j) out[j] += ar[j];
  }
}

struct Grads {
  float *w_ih, *w_hh, *b_ih, *b_hh;
};

void Backward(const RnnDesc& d, const float* x, const int32_t* len, const std::vector<Weights>& w,
              const float* wsp, const float* dy, const float* dhn_in, const float* dcn_in, float* dx, float* dh0,
              float* dc0, const std::vector<Grads>& gw) {
  const int64_t B = d.B, H = d.H, T = d.T, D = d.D, GH = d.G() * H, W = d.W(), rows = d.Rows(), DH = D * H;
  const int64_t sT = d.sT(), sB = d.sB();
  const int nt = ChainThreads(B);
  const bool local = nt == 1 || !d.time_major;
  // Weight gradients: column blocks of 16 on up to every thread (one block: oneDNN splits it).
  const int nw = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), (GH + 15) / 16));
  const bool gru = d.cell == Cell::kGru;
  thread_local ScratchBuffer<float> s_dgx, s_dgh, s_dy0, s_dy1, s_dh, s_dhn, s_dc;
  float* dgx = Scratch(s_dgx, rows * GH);
  float* dgh = gru ? Scratch(s_dgh, rows * GH) : dgx;
  float* dyb[2] = {nullptr, nullptr};
  if (d.L > 1) dyb[1] = Scratch(s_dy1, rows * DH);  // dX of layer l > 0 goes to dyb[l % 2]
  if (d.L > 2) dyb[0] = Scratch(s_dy0, rows * DH);
  float* dh = Scratch(s_dh, B * H);
  float* dhn = Scratch(s_dhn, B * H);
  float* dc = Scratch(s_dc, B * H);
  const float* louts = wsp + d.L * D * rows * W;
  const float* dY = dy;
  for (int64_t l = d.L - 1; l >= 0; --l) {
    const float* X = l == 0 ? x : louts + (l - 1) * rows * DH;
    const int64_t Il = d.InputSize(l);
    float* dX = l == 0 ? dx : dyb[l % 2];
    for (int64_t k = 0; k < D; ++k) {
      const int64_t ld = l * D + k;
      const Weights& p = w[ld];
      const Grads& q = gw[ld];
      const float* ws = wsp + ld * rows * W;
      const float beta = k == 0 ? 0.f : 1.f;  // the second direction adds its dx
      std::memcpy(dh, dhn_in + ld * B * H, B * H * sizeof(float));
      if (d.cell == Cell::kLstm) std::memcpy(dc, dcn_in + ld * B * H, B * H * sizeof(float));
      Parallel(nt, [&](int64_t i, int64_t n) {
        const int64_t b0 = B * i / n, b1 = B * (i + 1) / n, m = b1 - b0;
        float *dht = dh + b0 * H, *dhp = dhn + b0 * H, *dct = dc + b0 * H;
        StepGemm rec(m, H, GH, sB * GH, true, true, p.w_hh);
        for (int64_t s = T - 1; s >= 0; --s) {
          const int64_t t = k == 0 ? s : T - 1 - s;
          const int64_t r = t * sT + b0 * sB;
          const float* g = ws + r * W;
          const float* dyo = dY + r * DH + k * H;
          float* gx = dgx + r * GH;
          float* gh = dgh + r * GH;
          switch (d.cell) {
            case Cell::kLstm:
              LstmBwdStep(m, H, t, len + b0, g, sB * W, dyo, sB * DH, gx, sB * GH, dht, dct, dhp);
              break;
            case Cell::kGru: GruBwdStep(m, H, t, len + b0, g, sB * W, dyo, sB * DH, gx, gh, sB * GH, dht, dhp); break;
            default:
              RnnBwdStep(m, H, t, len + b0, g, sB * W, d.cell == Cell::kRnnRelu, dyo, sB * DH, gx, sB * GH, dht, dhp);
          }
          if (s == 0 && !d.state_grads) break;  // dh_{-1}: unread
          rec(gh, dhp);
          std::swap(dht, dhp);
        }
        if (d.state_grads)
          std::memcpy(dh0 + ld * B * H + b0 * H, dht, m * H * sizeof(float));
        else
          std::memset(dh0 + ld * B * H + b0 * H, 0, m * H * sizeof(float));
        if (local) Gemm('N', 'T', m * T, Il, GH, dgx + b0 * sB * GH, GH, p.w_ih, GH, beta, dX + b0 * sB * Il, Il);
      });
      if (d.cell == Cell::kLstm) {
        if (d.state_grads)
          std::memcpy(dc0 + ld * B * H, dc, B * H * sizeof(float));
        else
          std::memset(dc0 + ld * B * H, 0, B * H * sizeof(float));
      }
      if (!local) Gemm('N', 'T', rows, Il, GH, dgx, GH, p.w_ih, GH, beta, dX, Il);
      // Sums over every row; each result is written (beta = 0), never accumulated across calls.
      Parallel(nw, [&](int64_t i, int64_t n) {
        int64_t c0, c1;
        Split(GH, i, n, &c0, &c1);
        if (c0 == c1) return;
        Gemm('T', 'N', Il, c1 - c0, rows, X, Il, dgx + c0, GH, 0.f, q.w_ih + c0, GH);
        Gemm('T', 'N', H, c1 - c0, rows, ws + d.HprevCol(), W, dgh + c0, GH, 0.f, q.w_hh + c0, GH);
        ColSum(dgx + c0, rows, c1 - c0, GH, q.b_ih + c0);
        if (gru)
          ColSum(dgh + c0, rows, c1 - c0, GH, q.b_hh + c0);
        else
          std::memcpy(q.b_hh + c0, q.b_ih + c0, (c1 - c0) * sizeof(float));
      });
    }
    dY = dX;
  }
}

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

ffi::Error Cpu::RnnFwd(Ctx, const RnnDesc& d, Buf x, Buf h0, Buf c0, Buf lens, const Buffers& w, Buf y, Buf hn,
                       Buf cn, Buf ws) {
  const int32_t* lp = static_cast<const int32_t*>(lens.untyped_data());
  JAX_MPS_RETURN_IF_ERROR(CheckLengths(d, lp));
  std::deque<F32In> keep;
  const std::vector<Weights> wp = WeightViews(w, keep);
  F32In xf(x), h0f(h0), c0f(c0);
  F32Out yf(y), hnf(hn), cnf(cn);
  float* wsp = static_cast<float*>(ws.untyped_data());
  AdviseHugePages(wsp, ws.size_bytes());
  AdviseHugePages(yf.get(), y.element_count() * sizeof(float));
  Forward(d, xf.get(), h0f.get(), c0f.get(), lp, wp, yf.get(), hnf.get(), cnf.get(), wsp);
  return ffi::Error::Success();
}

// h0 / c0 are not read: the workspace holds every h_{t-1} / c_{t-1} the backward needs.
ffi::Error Cpu::RnnBwd(Ctx, const RnnDesc& d, Buf x, Buf /*h0*/, Buf /*c0*/, Buf lens, Buf ws, Buf dy, Buf dhn,
                       Buf dcn, const Buffers& w, Buf dx, Buf dh0, Buf dc0, const Buffers& dw) {
  const int32_t* lp = static_cast<const int32_t*>(lens.untyped_data());
  JAX_MPS_RETURN_IF_ERROR(CheckLengths(d, lp));
  std::deque<F32In> keep;
  const std::vector<Weights> wp = WeightViews(w, keep);
  std::deque<F32Out> grads;
  std::vector<Grads> gp;
  for (size_t i = 0; i + 3 < dw.size(); i += 4) {
    float* p[4];
    for (int q = 0; q < 4; ++q) p[q] = grads.emplace_back(dw[i + q]).get();
    gp.push_back({p[0], p[1], p[2], p[3]});
  }
  F32In xf(x), dyf(dy), dhnf(dhn), dcnf(dcn);
  F32Out dxf(dx), dh0f(dh0), dc0f(dc0);
  AdviseHugePages(dxf.get(), dx.element_count() * sizeof(float));
  Backward(d, xf.get(), lp, wp, static_cast<const float*>(ws.untyped_data()), dyf.get(), dhnf.get(), dcnf.get(),
           dxf.get(), dh0f.get(), dc0f.get(), gp);
  return ffi::Error::Success();
}

}  // namespace jax_mps
