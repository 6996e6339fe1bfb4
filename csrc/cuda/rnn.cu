// LSTM / GRU / RNN (multi-layer, bidirectional, packed-sequence lengths) on CUDA.
//
// The CPU backend's algorithm (csrc/cpu/rnn.cc) and workspace layout (runtime/rnn.h), so the
// residual is the same on both. Per layer-direction: one cuBLAS GEMM projects the inputs of every
// time step (rows in x's own layout: batch- and time-major need no copy), then per step one
// recurrent GEMM (B x H x GH) and one fused element-wise cell kernel that adds the biases, applies
// the gates, updates h / c and masks rows past their length (read on the device from seq_lengths).
// The backward runs the per-step cell-gradient kernel + recurrent GEMM chain in reverse, then
// dx, dW_ih and dW_hh as one GEMM each over all time steps and the bias gradients as column sums.
// Math is float32 throughout; the GEMMs may use TF32 tensor cores unless the `precision`
// attribute asks for full float32 (jax.default_matmul_precision "highest", as the CPU always
// computes). float16 / bfloat16 operands are converted into the handler's workspace (XLA scratch)
// and results converted back.
#include <cublas_v2.h>

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda/backend.h"
#include "cuda/libs.cuh"
#include "cuda/reduce.cuh"

namespace jax_mps::cuda {
namespace {

ffi::Error CublasV2Error(const char* op, cublasStatus_t s) {
  return ffi::Error::Internal(std::string(op) + ": cuBLAS error: " + cublasGetStatusString(s));
}
#define JAX_MPS_CUBLAS_V2(op, expr)                                  \
  do {                                                               \
    cublasStatus_t s_ = (expr);                                      \
    if (s_ != CUBLAS_STATUS_SUCCESS) return CublasV2Error(op, s_);   \
  } while (0)

// cuBLAS's own workspace, taken from ours so it never allocates behind the stream's back (its
// recommended size on Hopper).
constexpr size_t kCublasWorkspace = size_t(32) << 20;

// The calling thread's cuBLAS handle for the stream's device (a handle may not be shared by
// concurrent callers), bound to the stream and to `ws`, with the math mode of precision `p`.
ffi::Error Cublas(const char* op, cudaStream_t stream, void* ws, Precision p, cublasHandle_t* h) {
  thread_local std::unordered_map<int, cublasHandle_t> handles;
  const int dev = StreamDevice(stream);
  auto it = handles.find(dev);
  if (it == handles.end()) {
    JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaSetDevice(dev));
    cublasHandle_t nh;
    JAX_MPS_CUBLAS_V2(op, cublasCreate(&nh));
    it = handles.emplace(dev, nh).first;
  }
  JAX_MPS_CUBLAS_V2(op, cublasSetStream(it->second, stream));  // (resets the workspace: set it after)
  JAX_MPS_CUBLAS_V2(op, cublasSetWorkspace(it->second, ws, kCublasWorkspace));
  JAX_MPS_CUBLAS_V2(op, cublasSetMathMode(it->second, p == Precision::kHighest ? CUBLAS_DEFAULT_MATH
                                                                               : CUBLAS_TF32_TENSOR_OP_MATH));
  *h = it->second;
  return ffi::Error::Success();
}

// Row-major C (m x n, ldc) = op(A) (m x k) @ op(B) (k x n) + beta C, ta/tb 'N' or 'T' (the CPU's
// Gemm calls, one for one): cuBLAS computes the column-major C^T = op(B)^T op(A)^T.
ffi::Error Gemm(const char* op, cublasHandle_t h, char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a,
                int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const float one = 1.f;
  const cublasOperation_t oa = ta == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N;
  JAX_MPS_CUBLAS_V2(op, cublasSgemm_64(h, ob, oa, n, m, k, &one, b, ldb, a, lda, &beta, c, ldc));
  return ffi::Error::Success();
}

// ---- dtype conversion ----

template <typename T>
__global__ void ToF32K(int64_t n, const T* src, float* dst) {
  JAX_MPS_GRID_STRIDE(i, n) dst[i] = Ld(src[i]);
}
template <typename T>
__global__ void FromF32K(int64_t n, const float* src, T* dst) {
  JAX_MPS_GRID_STRIDE(i, n) dst[i] = St<T>(src[i]);
}

// Float32 views of a call's operands: a float32 buffer is used in place; any other is converted
// into the workspace (inputs, in Bind) or computed there and converted back (results, in Finish).
class Views {
 public:
  explicit Views(Carve& cv) : cv_(cv) {}
  int Add(ffi::AnyBuffer b, bool out) {
    const bool f32 = b.element_type() == ffi::F32;
    items_.push_back({b, out, f32 ? 0 : cv_.Add(b.element_count() * sizeof(float)), nullptr});
    return int(items_.size()) - 1;
  }
  ffi::Error Bind(const char* op, cudaStream_t s, char* ws) {
    for (Item& it : items_) {
      const int64_t n = it.buf.element_count();
      if (it.buf.element_type() == ffi::F32) {
        it.p = static_cast<float*>(it.buf.untyped_data());
        continue;
      }
      it.p = reinterpret_cast<float*>(ws + it.off);
      if (it.out || n == 0) continue;
      JAX_MPS_RETURN_IF_ERROR(DispatchFloat(op, it.buf.element_type(), [&](auto tag) -> ffi::Error {
        using T = decltype(tag);
        ToF32K<T><<<Blocks(n), 256, 0, s>>>(n, Ptr<const T>(it.buf), it.p);
        return ffi::Error::Success();
      }));
    }
    return ffi::Error::Success();
  }
  ffi::Error Finish(const char* op, cudaStream_t s) {
    for (Item& it : items_) {
      const int64_t n = it.buf.element_count();
      if (!it.out || it.buf.element_type() == ffi::F32 || n == 0) continue;
      JAX_MPS_RETURN_IF_ERROR(DispatchFloat(op, it.buf.element_type(), [&](auto tag) -> ffi::Error {
        using T = decltype(tag);
        FromF32K<T><<<Blocks(n), 256, 0, s>>>(n, it.p, Ptr<T>(it.buf));
        return ffi::Error::Success();
      }));
    }
    return ffi::Error::Success();
  }
  float* operator[](int i) const { return items_[i].p; }

 private:
  struct Item {
    ffi::AnyBuffer buf;
    bool out;
    size_t off;
    float* p;
  };
  Carve& cv_;
  std::vector<Item> items_;
};

// ---- cell kernels: one thread per (batch row b, hidden unit j) of one time step t ----

__device__ __forceinline__ float Sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// A length outside [0, T] (the CPU reports it; here lengths are device data and the host never
// reads them) makes everything its row writes NaN, so its outputs and every gradient it feeds show it.
__device__ __forceinline__ bool BadLength(int32_t n, int64_t T) { return n < 0 || n > T; }

// Forward step. g: this step's workspace rows (row b at g + b * gs) holding x W_ih in the gate
// columns on entry; a: h_{t-1} W_hh (B x GH); h / c: carried state (B x H); y: output rows (row
// stride ys). Rows past their length keep the state, write y = 0 and a finite h_{t-1} (the dW_hh
// GEMM reads every row), as the CPU.
template <Cell kCell>
__global__ void FwdStepK(int64_t B, int64_t H, int64_t T, int64_t t, const int32_t* __restrict__ len,
                         float* __restrict__ g, int64_t gs, const float* __restrict__ a,
                         const float* __restrict__ bih, const float* __restrict__ bhh, float* __restrict__ h,
                         float* __restrict__ c, float* __restrict__ y, int64_t ys) {
  constexpr int G = kCell == Cell::kLstm ? 4 : kCell == Cell::kGru ? 3 : 1;
  constexpr int Wq = kCell == Cell::kLstm ? 7 : kCell == Cell::kGru ? 5 : 2;  // W() / H
  JAX_MPS_GRID_STRIDE(e, B * H) {
    const int64_t b = e / H, j = e % H;
    float* gr = g + b * gs;
    float* yo = y + b * ys;
    const float* ar = a + b * G * H;
    const int32_t n = len[b];
    if (BadLength(n, T)) {
      for (int q = 0; q < Wq; ++q) gr[q * H + j] = NAN;
      yo[j] = h[e] = NAN;
      if (kCell == Cell::kLstm) c[e] = NAN;
      continue;
    }
    if (t >= n) {
      yo[j] = 0.f;
      gr[(Wq - 1) * H + j] = h[e];
      continue;
    }
    // pre(q): gate q's input projection + recurrent product + both biases.
    auto pre = [&](int q) { return gr[q * H + j] + (ar[q * H + j] + (bih[q * H + j] + bhh[q * H + j])); };
    const float hp = h[e];
    float out;
    if constexpr (kCell == Cell::kLstm) {
      const float i = Sigmoid(pre(0)), f = Sigmoid(pre(1)), gv = tanhf(pre(2)), o = Sigmoid(pre(3));
      const float cp = c[e], cn = f * cp + i * gv, tc = tanhf(cn);
      out = o * tc;
      gr[j] = i;
      gr[H + j] = f;
      gr[2 * H + j] = gv;
      gr[3 * H + j] = o;
      gr[4 * H + j] = tc;
      gr[5 * H + j] = cp;
      c[e] = cn;
    } else if constexpr (kCell == Cell::kGru) {
      // n = tanh(x W_in + b_in + r * (h W_hn + b_hn)): b_in stays outside the reset product.
      const float r = Sigmoid(pre(0)), z = Sigmoid(pre(1));
      const float hn = ar[2 * H + j] + bhh[2 * H + j];
      const float nv = tanhf(gr[2 * H + j] + bih[2 * H + j] + r * hn);
      out = nv + z * (hp - nv);
      gr[j] = r;
      gr[H + j] = z;
      gr[2 * H + j] = nv;
      gr[3 * H + j] = hn;
    } else {
      const float v = pre(0);
      out = kCell == Cell::kRnnRelu ? (v < 0.f ? 0.f : v) : tanhf(v);  // NaN stays NaN, as the CPU's std::max
      gr[j] = out;
    }
    gr[(Wq - 1) * H + j] = hp;
    h[e] = out;
    yo[j] = out;
  }
}

// Backward step. g: the step's workspace rows (stride gs); dy: output-gradient rows (stride dys);
// dgx / dgh: gate-gradient rows (stride dgs) w.r.t. the input and recurrent pre-activations (one
// buffer unless GRU); dh / dc: carried gradients w.r.t. h_t / c_t; dn receives the direct part of
// dL/dh_{t-1} (the recurrent GEMM adds dgh W_hh^T after). Rows past their length pass dh through.
template <Cell kCell>
__global__ void BwdStepK(int64_t B, int64_t H, int64_t T, int64_t t, const int32_t* __restrict__ len,
                         const float* __restrict__ g, int64_t gs, const float* __restrict__ dy, int64_t dys,
                         float* __restrict__ dgx, float* __restrict__ dgh, int64_t dgs,
                         const float* __restrict__ dh, float* __restrict__ dc, float* __restrict__ dn) {
  constexpr int G = kCell == Cell::kLstm ? 4 : kCell == Cell::kGru ? 3 : 1;
  JAX_MPS_GRID_STRIDE(e, B * H) {
    const int64_t b = e / H, j = e % H;
    const float* gr = g + b * gs;
    float* dx = dgx + b * dgs;
    float* dr = dgh + b * dgs;
    const int32_t n = len[b];
    if (BadLength(n, T) || t >= n) {
      const float v = BadLength(n, T) ? NAN : 0.f;
      for (int q = 0; q < G; ++q) dx[q * H + j] = v;
      if (kCell == Cell::kGru)
        for (int q = 0; q < G; ++q) dr[q * H + j] = v;
      dn[e] = BadLength(n, T) ? NAN : dh[e];
      if (kCell == Cell::kLstm && BadLength(n, T)) dc[e] = NAN;
      continue;
    }
    const float dht = dh[e] + dy[b * dys + j];
    if constexpr (kCell == Cell::kLstm) {
      const float i = gr[j], f = gr[H + j], gv = gr[2 * H + j], o = gr[3 * H + j], tc = gr[4 * H + j],
                  cp = gr[5 * H + j];
      const float dct = dc[e] + dht * o * (1.f - tc * tc);
      dx[j] = dct * gv * i * (1.f - i);
      dx[H + j] = dct * cp * f * (1.f - f);
      dx[2 * H + j] = dct * i * (1.f - gv * gv);
      dx[3 * H + j] = dht * tc * o * (1.f - o);
      dc[e] = dct * f;
      dn[e] = 0.f;
    } else if constexpr (kCell == Cell::kGru) {
      const float r = gr[j], z = gr[H + j], nv = gr[2 * H + j], hn = gr[3 * H + j], hp = gr[4 * H + j];
      const float dnp = dht * (1.f - z) * (1.f - nv * nv);
      const float drp = dnp * hn * r * (1.f - r);
      const float dzp = dht * (hp - nv) * z * (1.f - z);
      dx[j] = drp;
      dx[H + j] = dzp;
      dx[2 * H + j] = dnp;
      dr[j] = drp;
      dr[H + j] = dzp;
      dr[2 * H + j] = dnp * r;
      dn[e] = dht * z;
    } else {
      const float out = gr[j];
      dx[j] = kCell == Cell::kRnnRelu ? (out <= 0.f ? 0.f : dht) : dht * (1.f - out * out);  // NaN: dht (torch)
      dn[e] = 0.f;
    }
  }
}

// acc[j] += sum over rows of v[r * c + j] (acc zeroed by the caller), then out = float(acc).
__global__ void ColSumK(int64_t rows, int64_t c, const float* v, double* acc) {
  const int64_t j = int64_t(blockIdx.x) * kColX + threadIdx.x;
  double s = 0.0;
  if (j < c)
    for (int64_t r = int64_t(blockIdx.y) * kColY + threadIdx.y; r < rows; r += int64_t(gridDim.y) * kColY)
      s += v[r * c + j];
  ColFlush(s, acc, j, c);
}
__global__ void CastK(int64_t n, const double* s, float* out) {
  JAX_MPS_GRID_STRIDE(i, n) out[i] = float(s[i]);
}

ffi::Error ColSum(const char* op, cudaStream_t s, int64_t rows, int64_t c, const float* v, double* acc, float* out) {
  JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(acc, 0, c * sizeof(double), s));
  ColSumK<<<ColGrid(rows, c), dim3(kColX, kColY), 0, s>>>(rows, c, v, acc);
  CastK<<<Blocks(c), 256, 0, s>>>(c, acc, out);
  return ffi::Error::Success();
}

template <typename F>
ffi::Error ByCell(Cell c, F&& f) {
  switch (c) {
    case Cell::kLstm: return f(std::integral_constant<Cell, Cell::kLstm>{});
    case Cell::kGru: return f(std::integral_constant<Cell, Cell::kGru>{});
    case Cell::kRnnTanh: return f(std::integral_constant<Cell, Cell::kRnnTanh>{});
    default: return f(std::integral_constant<Cell, Cell::kRnnRelu>{});
  }
}

// Allocates a pass's scratch as carved in cv (cuBLAS's workspace at o_cublas, the views' float32
// copies, the pass's own buffers), converts the inputs into it and binds the cuBLAS handle.
ffi::Error BindScratch(const char* op, const Ctx& s, Precision p, const Carve& cv, size_t o_cublas, Views& v,
                       char** scratch, cublasHandle_t* hb) {
  ffi::Error err;
  *scratch = static_cast<char*>(Workspace(s, cv.total, op, &err));
  if (!*scratch) return err;
  JAX_MPS_RETURN_IF_ERROR(v.Bind(op, s, *scratch));
  return Cublas(op, s, *scratch + o_cublas, p, hb);
}

template <typename T>
T* At(char* base, size_t off) {
  return reinterpret_cast<T*>(base + off);
}

ffi::Error Forward(const Ctx& s, const RnnDesc& d, ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                   ffi::AnyBuffer lens, const Buffers& w, ffi::AnyBuffer y, ffi::AnyBuffer hn, ffi::AnyBuffer cn,
                   ffi::AnyBuffer wsb) {
  const char* op = "rnn_fwd";
  const int64_t B = d.B, H = d.H, T = d.T, D = d.D, GH = d.G() * H, W = d.W(), rows = d.Rows(), DH = D * H,
                BH = B * H, sT = d.sT(), sB = d.sB();
  const bool lstm = d.cell == Cell::kLstm;
  Carve cv;
  const size_t o_cublas = cv.Add(kCublasWorkspace), o_tmp = cv.Add(B * GH * sizeof(float));
  Views v(cv);
  const int ix = v.Add(x, false), ih0 = v.Add(h0, false), ic0 = v.Add(c0, false);
  const int iy = v.Add(y, true), ihn = v.Add(hn, true), icn = v.Add(cn, true);
  std::vector<int> iw;
  for (const ffi::AnyBuffer& b : w) iw.push_back(v.Add(b, false));
  char* scratch = nullptr;
  cublasHandle_t hb;
  JAX_MPS_RETURN_IF_ERROR(BindScratch(op, s, d.precision, cv, o_cublas, v, &scratch, &hb));
  float* tmp = At<float>(scratch, o_tmp);
  const int32_t* len = Ptr<const int32_t>(lens);
  float* wsp = Ptr<float>(wsb);
  float* louts = wsp + d.L * D * rows * W;
  for (int64_t l = 0; l < d.L; ++l) {
    const float* X = l == 0 ? v[ix] : louts + (l - 1) * rows * DH;
    const int64_t Il = d.InputSize(l);
    float* Y = l == d.L - 1 ? v[iy] : louts + l * rows * DH;
    for (int64_t k = 0; k < D; ++k) {
      const int64_t ld = l * D + k;
      const float *w_ih = v[iw[4 * ld]], *w_hh = v[iw[4 * ld + 1]], *b_ih = v[iw[4 * ld + 2]],
                  *b_hh = v[iw[4 * ld + 3]];
      float* ws = wsp + ld * rows * W;
      float* h = v[ihn] + ld * BH;  // the carried state lives in h_n / c_n
      float* c = lstm ? v[icn] + ld * BH : nullptr;
      JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemcpyAsync(h, v[ih0] + ld * BH, BH * sizeof(float),
                                                       cudaMemcpyDeviceToDevice, s));
      if (lstm)
        JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemcpyAsync(c, v[ic0] + ld * BH, BH * sizeof(float),
                                                         cudaMemcpyDeviceToDevice, s));
      // Gate columns <- x W_ih for every time step.
      JAX_MPS_RETURN_IF_ERROR(Gemm(op, hb, 'N', 'N', rows, GH, Il, X, Il, w_ih, GH, 0.f, ws, W));
      for (int64_t st = 0; st < T; ++st) {
        const int64_t t = k == 0 ? st : T - 1 - st;
        JAX_MPS_RETURN_IF_ERROR(Gemm(op, hb, 'N', 'N', B, GH, H, h, H, w_hh, GH, 0.f, tmp, GH));
        JAX_MPS_RETURN_IF_ERROR(ByCell(d.cell, [&](auto cell) {
          FwdStepK<decltype(cell)::value><<<Blocks(BH), 256, 0, s>>>(B, H, T, t, len, ws + t * sT * W, sB * W, tmp,
                                                                     b_ih, b_hh, h, c, Y + t * sT * DH + k * H,
                                                                     sB * DH);
          return ffi::Error::Success();
        }));
      }
      JAX_MPS_RETURN_IF_ERROR(LaunchStatus(op));
    }
  }
  JAX_MPS_RETURN_IF_ERROR(v.Finish(op, s));
  return LaunchStatus(op);
}

// h0 / c0 are not read: the workspace holds every h_{t-1} / c_{t-1} the backward needs.
ffi::Error Backward(const Ctx& s, const RnnDesc& d, ffi::AnyBuffer x, ffi::AnyBuffer lens, ffi::AnyBuffer wsb,
                    ffi::AnyBuffer dy, ffi::AnyBuffer dhn, ffi::AnyBuffer dcn, const Buffers& w, ffi::AnyBuffer dx,
                    ffi::AnyBuffer dh0, ffi::AnyBuffer dc0, const Buffers& dw) {
  const char* op = "rnn_bwd";
  const int64_t B = d.B, H = d.H, T = d.T, D = d.D, GH = d.G() * H, W = d.W(), rows = d.Rows(), DH = D * H,
                BH = B * H, sT = d.sT(), sB = d.sB();
  const bool lstm = d.cell == Cell::kLstm, gru = d.cell == Cell::kGru;
  Carve cv;
  const size_t o_cublas = cv.Add(kCublasWorkspace), o_dgx = cv.Add(rows * GH * sizeof(float)),
               o_dgh = cv.Add(gru ? rows * GH * sizeof(float) : 0),
               o_dy0 = cv.Add(d.L > 2 ? rows * DH * sizeof(float) : 0),
               o_dy1 = cv.Add(d.L > 1 ? rows * DH * sizeof(float) : 0), o_dh = cv.Add(BH * sizeof(float)),
               o_dhp = cv.Add(BH * sizeof(float)), o_acc = cv.Add(GH * sizeof(double));
  Views v(cv);
  const int ix = v.Add(x, false), idy = v.Add(dy, false), idhn = v.Add(dhn, false), idcn = v.Add(dcn, false);
  const int idx = v.Add(dx, true), idh0 = v.Add(dh0, true), idc0 = v.Add(dc0, true);
  std::vector<int> iw, idw;
  for (const ffi::AnyBuffer& b : w) iw.push_back(v.Add(b, false));
  for (const ffi::AnyBuffer& b : dw) idw.push_back(v.Add(b, true));
  char* scratch = nullptr;
  cublasHandle_t hb;
  JAX_MPS_RETURN_IF_ERROR(BindScratch(op, s, d.precision, cv, o_cublas, v, &scratch, &hb));
  float* dgx = At<float>(scratch, o_dgx);
  float* dgh = gru ? At<float>(scratch, o_dgh) : dgx;
  float* dyb[2] = {At<float>(scratch, o_dy0), At<float>(scratch, o_dy1)};  // dX of layer l > 0: dyb[l % 2]
  float* dh_a = At<float>(scratch, o_dh);
  float* dh_b = At<float>(scratch, o_dhp);
  double* acc = At<double>(scratch, o_acc);
  const int32_t* len = Ptr<const int32_t>(lens);
  const float* wsp = Ptr<const float>(wsb);
  const float* louts = wsp + d.L * D * rows * W;
  const float* dY = v[idy];
  for (int64_t l = d.L - 1; l >= 0; --l) {
    const float* X = l == 0 ? v[ix] : louts + (l - 1) * rows * DH;
    const int64_t Il = d.InputSize(l);
    float* dX = l == 0 ? v[idx] : dyb[l % 2];
    for (int64_t k = 0; k < D; ++k) {
      const int64_t ld = l * D + k;
      const float *w_ih = v[iw[4 * ld]], *w_hh = v[iw[4 * ld + 1]];
      float *dw_ih = v[idw[4 * ld]], *dw_hh = v[idw[4 * ld + 1]], *db_ih = v[idw[4 * ld + 2]],
            *db_hh = v[idw[4 * ld + 3]];
      const float* ws = wsp + ld * rows * W;
      float *dht = dh_a, *dhp = dh_b;
      float* dc = lstm ? v[idc0] + ld * BH : nullptr;  // the carried dc lives in dc0
      JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemcpyAsync(dht, v[idhn] + ld * BH, BH * sizeof(float),
                                                       cudaMemcpyDeviceToDevice, s));
      if (lstm)
        JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemcpyAsync(dc, v[idcn] + ld * BH, BH * sizeof(float),
                                                         cudaMemcpyDeviceToDevice, s));
      for (int64_t st = T - 1; st >= 0; --st) {
        const int64_t t = k == 0 ? st : T - 1 - st;
        JAX_MPS_RETURN_IF_ERROR(ByCell(d.cell, [&](auto cell) {
          BwdStepK<decltype(cell)::value><<<Blocks(BH), 256, 0, s>>>(B, H, T, t, len, ws + t * sT * W, sB * W,
                                                                     dY + t * sT * DH + k * H, sB * DH,
                                                                     dgx + t * sT * GH, dgh + t * sT * GH, sB * GH,
                                                                     dht, dc, dhp);
          return ffi::Error::Success();
        }));
        if (st == 0 && !d.state_grads) break;  // dh_{-1}: unread
        JAX_MPS_RETURN_IF_ERROR(Gemm(op, hb, 'N', 'T', B, H, GH, dgh + t * sT * GH, sB * GH, w_hh, GH, 1.f, dhp, H));
        std::swap(dht, dhp);
      }
      if (d.state_grads) {
        JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemcpyAsync(v[idh0] + ld * BH, dht, BH * sizeof(float),
                                                         cudaMemcpyDeviceToDevice, s));
      } else {
        JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(v[idh0] + ld * BH, 0, BH * sizeof(float), s));
        if (lstm) JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(dc, 0, BH * sizeof(float), s));
      }
      // The second direction adds its dx; the weight gradients are written, never accumulated.
      JAX_MPS_RETURN_IF_ERROR(Gemm(op, hb, 'N', 'T', rows, Il, GH, dgx, GH, w_ih, GH, k == 0 ? 0.f : 1.f, dX, Il));
      JAX_MPS_RETURN_IF_ERROR(Gemm(op, hb, 'T', 'N', Il, GH, rows, X, Il, dgx, GH, 0.f, dw_ih, GH));
      JAX_MPS_RETURN_IF_ERROR(Gemm(op, hb, 'T', 'N', H, GH, rows, ws + d.HprevCol(), W, dgh, GH, 0.f, dw_hh, GH));
      JAX_MPS_RETURN_IF_ERROR(ColSum(op, s, rows, GH, dgx, acc, db_ih));
      if (gru)
        JAX_MPS_RETURN_IF_ERROR(ColSum(op, s, rows, GH, dgh, acc, db_hh));
      else
        JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemcpyAsync(db_hh, db_ih, GH * sizeof(float),
                                                         cudaMemcpyDeviceToDevice, s));
      JAX_MPS_RETURN_IF_ERROR(LaunchStatus(op));
    }
    dY = dX;
  }
  JAX_MPS_RETURN_IF_ERROR(v.Finish(op, s));
  return LaunchStatus(op);
}

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {

ffi::Error Cuda::RnnFwd(Ctx s, const RnnDesc& d, Buf x, Buf h0, Buf c0, Buf lens, const Buffers& w, Buf y, Buf hn,
                        Buf cn, Buf ws) {
  return cuda::Forward(s, d, x, h0, c0, lens, w, y, hn, cn, ws);
}
ffi::Error Cuda::RnnBwd(Ctx s, const RnnDesc& d, Buf x, Buf /*h0*/, Buf /*c0*/, Buf lens, Buf ws, Buf dy, Buf dhn,
                        Buf dcn, const Buffers& w, Buf dx, Buf dh0, Buf dc0, const Buffers& dw) {
  return cuda::Backward(s, d, x, lens, ws, dy, dhn, dcn, w, dx, dh0, dc0, dw);
}

}  // namespace jax_mps
