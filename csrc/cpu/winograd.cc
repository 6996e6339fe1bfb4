// Winograd F(2x2, 3x3) convolutions (see winograd.h). Output tiles of 2x2 read 4x4 input patches;
// per block of Tb tiles (sized to stay in L2) one thread transforms the patches into V[16][Tb][Ci],
// multiplies each of the 16 transform points by the transformed kernel (one batched oneDNN matmul:
// M[16][Tb][Co] = V x U[16][Ci][Co]) and transforms M back into the output tiles. The transforms
// are vectorised across channels (NHWC keeps them innermost). Any non-finite value in a result makes
// the caller recompute it with the direct convolution: Winograd's sums would turn one Inf or NaN
// into NaN across a whole tile, where jax's convolution keeps it to the windows that hold it.
#include "cpu/winograd.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include <omp.h>

#include "cpu/dnnl_common.h"
#include "cpu/eltwise.h"
#include "cpu/kernel_util.h"

namespace jax_mps::cpu {
namespace {

using dnnl::memory;

// x (n, ih, iw, ci) -> y (n, oh, ow, co): y[p][q] = sum x[p + r - pt][q + s - pl] g[r][s].
struct Geom {
  int64_t n, ih, iw, ci, oh, ow, co, pt, pl;
  int64_t th() const { return (oh + 1) / 2; }
  int64_t tw() const { return (ow + 1) / 2; }
  int64_t tiles() const { return n * th() * tw(); }
};

// Tiles per block: V and M (16 x Tb x (Ci + Co) floats) within ~1 MiB, and every thread a block.
int64_t BlockTiles(const Geom& g, int nt) {
  const int64_t fit = (int64_t(1) << 20) / (64 * (g.ci + g.co));
  const int64_t share = (g.tiles() + nt - 1) / nt;
  return std::max<int64_t>(4, std::min({fit, share, int64_t(256)}));
}

// A batch of 16 GEMMs: C[i] (m, n) (+)= A[i] (m, k) @ B[i] (k, n); a_t: A stored (k, m) per batch.
struct BatchPlan {
  dnnl::matmul prim;
  memory::desc a, b, c;
};

std::shared_ptr<BatchPlan> GetBatch(int64_t m, int64_t k, int64_t n, bool a_t, bool accumulate) {
  static PlanCache<BatchPlan> cache;
  PlanKey key;
  key.add(m).add(k).add(n).add(int64_t(a_t)).add(int64_t(accumulate)).add(int64_t(omp_get_max_threads()));
  return cache.Get(key, [&] {
    BatchPlan p;
    p.a = a_t ? memory::desc({16, m, k}, dt::f32, memory::dims{m * k, 1, m}) : memory::desc({16, m, k}, dt::f32, tag::abc);
    p.b = memory::desc({16, k, n}, dt::f32, tag::abc);
    p.c = memory::desc({16, m, n}, dt::f32, tag::abc);
    auto attr = UserAttr();
    if (accumulate) {
      dnnl::post_ops po;
      po.append_sum(1.f);
      attr.set_post_ops(po);
    }
    p.prim = dnnl::matmul(dnnl::matmul::primitive_desc(Engine(), p.a, p.b, p.c, attr));
    return p;
  });
}

void RunBatch(const BatchPlan& p, const float* a, const float* b, float* c) {
  Exec(p.prim, {{DNNL_ARG_SRC, Mem(p.a, a)}, {DNNL_ARG_WEIGHTS, Mem(p.b, b)}, {DNNL_ARG_DST, Mem(p.c, c)}});
}

// A buffer of zeros standing in for patch rows outside the image (and a sink for outputs outside it).
const float* Zeros(int64_t n) {
  thread_local std::vector<float> z;
  if (int64_t(z.size()) < n) z.assign(n, 0.f);
  return z.data();
}
float* Sink(int64_t n) {
  thread_local ScratchBuffer<float> s;
  return s.get(n);
}

// The tile kernels below are vectorised across channels; their row pointers are copied into
// restrict locals first, or the compiler reloads them per element and gathers/scatters.

// V[i][j] = (B^T d B)[i][j], B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]; d[u * 4 + v] points at
// the c channels of patch position (u, v). V planes are vs floats apart.
JAX_MPS_CLONES void InputTile(const float* const* d, int64_t c, float* __restrict v, int64_t vs) {
  const float *__restrict d00 = d[0], *__restrict d01 = d[1], *__restrict d02 = d[2], *__restrict d03 = d[3];
  const float *__restrict d10 = d[4], *__restrict d11 = d[5], *__restrict d12 = d[6], *__restrict d13 = d[7];
  const float *__restrict d20 = d[8], *__restrict d21 = d[9], *__restrict d22 = d[10], *__restrict d23 = d[11];
  const float *__restrict d30 = d[12], *__restrict d31 = d[13], *__restrict d32 = d[14], *__restrict d33 = d[15];
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    // rows: e_ij = (B^T d)_ij
    const float e00 = d00[k] - d20[k], e01 = d01[k] - d21[k], e02 = d02[k] - d22[k], e03 = d03[k] - d23[k];
    const float e10 = d10[k] + d20[k], e11 = d11[k] + d21[k], e12 = d12[k] + d22[k], e13 = d13[k] + d23[k];
    const float e20 = d20[k] - d10[k], e21 = d21[k] - d11[k], e22 = d22[k] - d12[k], e23 = d23[k] - d13[k];
    const float e30 = d10[k] - d30[k], e31 = d11[k] - d31[k], e32 = d12[k] - d32[k], e33 = d13[k] - d33[k];
    v[0 * vs + k] = e00 - e02, v[1 * vs + k] = e01 + e02, v[2 * vs + k] = e02 - e01, v[3 * vs + k] = e01 - e03;
    v[4 * vs + k] = e10 - e12, v[5 * vs + k] = e11 + e12, v[6 * vs + k] = e12 - e11, v[7 * vs + k] = e11 - e13;
    v[8 * vs + k] = e20 - e22, v[9 * vs + k] = e21 + e22, v[10 * vs + k] = e22 - e21, v[11 * vs + k] = e21 - e23;
    v[12 * vs + k] = e30 - e32, v[13 * vs + k] = e31 + e32, v[14 * vs + k] = e32 - e31, v[15 * vs + k] = e31 - e33;
  }
}

// Z = A z A^T for a 2x2 tile of dz (z[u * 2 + v]), A^T = [1 1 1 0; 0 1 -1 -1]: the dz side of F(3x3, 2x2).
JAX_MPS_CLONES void DzTile(const float* const* z, int64_t c, float* __restrict out, int64_t vs) {
  const float *__restrict p00 = z[0], *__restrict p01 = z[1], *__restrict p10 = z[2], *__restrict p11 = z[3];
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    const float z00 = p00[k], z01 = p01[k], z10 = p10[k], z11 = p11[k];
    const float e10 = z00 + z10, e11 = z01 + z11, e20 = z00 - z10, e21 = z01 - z11;
    out[0 * vs + k] = z00, out[1 * vs + k] = z00 + z01, out[2 * vs + k] = z00 - z01, out[3 * vs + k] = -z01;
    out[4 * vs + k] = e10, out[5 * vs + k] = e10 + e11, out[6 * vs + k] = e10 - e11, out[7 * vs + k] = -e11;
    out[8 * vs + k] = e20, out[9 * vs + k] = e20 + e21, out[10 * vs + k] = e20 - e21, out[11 * vs + k] = -e21;
    out[12 * vs + k] = -z10, out[13 * vs + k] = -z10 - z11, out[14 * vs + k] = z11 - z10, out[15 * vs + k] = z11;
  }
}

// y = max(A^T m A + b, relu ? 0 : -inf) into the 2x2 tile y[u * 2 + v]; returns 0 when every
// value is finite before the max (NaN else).
JAX_MPS_CLONES float OutputTile(const float* __restrict m, int64_t ms, int64_t c, const float* __restrict b,
                                bool relu, float* const* y) {
  const float lo = relu ? 0.f : -std::numeric_limits<float>::infinity();
  float *__restrict y00 = y[0], *__restrict y01 = y[1], *__restrict y10 = y[2], *__restrict y11 = y[3];
  float bad = 0.f;
#pragma omp simd reduction(+ : bad)
  for (int64_t k = 0; k < c; ++k) {
    float f0[4], f1[4];
    for (int j = 0; j < 4; ++j) {
      const float m0 = m[j * ms + k], m1 = m[(4 + j) * ms + k], m2 = m[(8 + j) * ms + k], m3 = m[(12 + j) * ms + k];
      f0[j] = m0 + m1 + m2;
      f1[j] = m1 - m2 - m3;
    }
    const float bias = b ? b[k] : 0.f;
    const float a = f0[0] + f0[1] + f0[2] + bias, bb = f0[1] - f0[2] - f0[3] + bias;
    const float cc = f1[0] + f1[1] + f1[2] + bias, dd = f1[1] - f1[2] - f1[3] + bias;
    bad += (a - a) + (bb - bb) + (cc - cc) + (dd - dd);  // 0 for finite values
    y00[k] = std::max(a, lo), y01[k] = std::max(bb, lo), y10[k] = std::max(cc, lo), y11[k] = std::max(dd, lo);
  }
  return bad;
}

// u = G g G^T (4x4) for a 3x3 g, G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
void KernelTransform(const float g[9], float u[16]) {
  float t[4][3];
  for (int s = 0; s < 3; ++s) {
    t[0][s] = g[s];
    t[1][s] = 0.5f * (g[s] + g[3 + s] + g[6 + s]);
    t[2][s] = 0.5f * (g[s] - g[3 + s] + g[6 + s]);
    t[3][s] = g[6 + s];
  }
  for (int i = 0; i < 4; ++i) {
    u[i * 4 + 0] = t[i][0];
    u[i * 4 + 1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
    u[i * 4 + 2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
    u[i * 4 + 3] = t[i][2];
  }
}

// U[16][a][b] from HWIO w (3, 3, ci, co): (a, b) = (c, k), or for the backward data pass
// (flip) (k, c) of the 180-degree rotated kernel.
void KernelTransforms(const float* w, int64_t ci, int64_t co, bool flip, float* U) {
  const int64_t na = flip ? co : ci, nb = flip ? ci : co;
#pragma omp parallel for if (ci * co > 4096)
  for (int64_t a = 0; a < na; ++a)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c = flip ? b : a, k = flip ? a : b;
      float g[9], u[16];
      for (int r = 0; r < 9; ++r) g[flip ? 8 - r : r] = w[r * ci * co + c * co + k];
      KernelTransform(g, u);
      for (int i = 0; i < 16; ++i) U[(i * na + a) * nb + b] = u[i];
    }
}

// acc += the 4 rows z[0..3] of c floats.
JAX_MPS_CLONES void SumRows(const float* const* z, int64_t c, float* __restrict acc) {
  const float *__restrict a = z[0], *__restrict b = z[1], *__restrict e = z[2], *__restrict f = z[3];
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) acc[k] += (a[k] + b[k]) + (e[k] + f[k]);
}

// Walks the tiles in order (image, tile row, tile column) from tile t: each tile's output origin
// (n, p, q) and the 16 row pointers of its input patch (zeros outside the image).
struct TileCursor {
  const Geom& g;
  const float *x, *zero;
  int64_t n, p, q;

  TileCursor(const Geom& geom, const float* xp, const float* zp, int64_t t) : g(geom), x(xp), zero(zp) {
    const int64_t per = g.th() * g.tw();
    n = t / per;
    p = t % per / g.tw() * 2;
    q = t % g.tw() * 2;
  }
  void Next() {
    if ((q += 2) < g.ow) return;
    q = 0;
    if ((p += 2) < g.oh) return;
    p = 0;
    ++n;
  }
  void Patch(const float** d) const {
    const int64_t r0 = p - g.pt, c0 = q - g.pl;
    const float* img = x + n * g.ih * g.iw * g.ci;
    const bool inside = r0 >= 0 && r0 + 4 <= g.ih && c0 >= 0 && c0 + 4 <= g.iw;
    for (int u = 0; u < 4; ++u)
      for (int v = 0; v < 4; ++v) {
        const int64_t row = r0 + u, col = c0 + v;
        d[u * 4 + v] = inside || (row >= 0 && row < g.ih && col >= 0 && col < g.iw)
                           ? img + (row * g.iw + col) * g.ci
                           : zero;
      }
  }
  // The 2x2 output rows of the tile (into `sink` rows where they fall outside).
  template <typename T>
  void Outputs(T* y, int64_t c, T* sink, T** out) const {
    for (int u = 0; u < 2; ++u)
      for (int v = 0; v < 2; ++v)
        out[u * 2 + v] = p + u < g.oh && q + v < g.ow ? y + ((n * g.oh + p + u) * g.ow + q + v) * c
                                                       : sink + (u * 2 + v) * c;
  }
};

// y = conv(x, U) + b over geometry g, with relu applied when `relu`; false when some value came
// out non-finite (before the relu).
bool Forward(const Geom& g, const float* x, const float* U, const float* b, bool relu, float* y) {
  const int nt = omp_get_max_threads();
  const int64_t tb = BlockTiles(g, nt), T = g.tiles(), nblocks = (T + tb - 1) / tb;
  const auto plan = GetBatch(tb, g.ci, g.co, false, false);
  float bad = 0.f;
#pragma omp parallel reduction(+ : bad)
  {
    thread_local ScratchBuffer<float> vbuf, mbuf;
    float* V = vbuf.get(16 * tb * g.ci);
    float* M = mbuf.get(16 * tb * g.co);
    const float* zero = Zeros(std::max(g.ci, g.co));
    float* sink = Sink(4 * g.co);  // one row per tile position: the restrict stores never overlap
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t t0 = blk * tb, cnt = std::min(tb, T - t0);
      const float* d[16];
      TileCursor in(g, x, zero, t0);
      for (int64_t i = 0; i < cnt; ++i, in.Next()) {
        in.Patch(d);
        InputTile(d, g.ci, V + i * g.ci, tb * g.ci);
      }
      RunBatch(*plan, V, U, M);
      TileCursor out(g, x, zero, t0);
      float* rows[4];
      for (int64_t i = 0; i < cnt; ++i, out.Next()) {
        out.Outputs(y, g.co, sink, rows);
        bad += OutputTile(M + i * g.co, tb * g.co, g.co, b, relu, rows);
      }
    }
  }
  return bad == 0.f;
}

// JAX_MPS_WINOGRAD: "0" never, "1" for every eligible convolution (tests), else where it pays.
// Read on every call (a getenv costs ~100 ns) so that benchmarks can compare both paths in one process.
int Mode() {
  const char* e = std::getenv("JAX_MPS_WINOGRAD");
  return e && (e[0] == '0' || e[0] == '1') && e[1] == '\0' ? e[0] - '0' : -1;
}

}  // namespace

// Where it pays, measured against oneDNN's direct convolutions (forward, data and weights passes
// each) on InceptionV3's layers and others: from 35x35 images at batch 8 on and with 64x32
// channels or more, or 32x32 over many tiles. Fewer tiles leave the batched GEMMs too short;
// fewer channels leave the transforms (linear in the channels, where the GEMMs are quadratic)
// dominating.
bool UseWinograd(const ConvDesc& c) {
  const int mode = Mode();
  if (mode == 0 || c.transpose || c.groups != 1 || c.kh != 3 || c.kw != 3 || c.sh != 1 || c.sw != 1 || c.dh != 1 ||
      c.dw != 1)
    return false;
  const int64_t tiles = c.n * ((c.oh + 1) / 2) * ((c.ow + 1) / 2), chans = c.ic * c.oc;
  // 32x32 channels pay from ~8k tiles on (InceptionV3's 149x149 32->32: 16.6 -> 12.9 ms forward,
  // 51 -> 48 ms backward on a 2-vCPU EPYC); at 2.6k tiles (35x35 at batch 8) they lose.
  return mode == 1 || (chans >= 2048 && tiles >= 2048) || (chans >= 1024 && tiles >= 8192);
}

bool WinogradFwd(const ConvDesc& c, const float* x, const float* w, const float* b, float* y) {
  thread_local ScratchBuffer<float> ubuf;
  float* U = ubuf.get(16 * c.ic * c.oc);
  KernelTransforms(w, c.ic, c.oc, false, U);
  const bool relu = c.act == Act::kRelu;
  if (!Forward({c.n, c.ih, c.iw, c.ic, c.oh, c.ow, c.oc, c.plh, c.plw}, x, U, b, relu, y)) return false;
  if (c.act != Act::kNone && !relu) ActForward(c.act, c.alpha, c.n * c.oh * c.ow * c.oc, y, y);
  return true;
}

bool WinogradBwdData(const ConvDesc& c, const float* dz, const float* w, float* dx) {
  thread_local ScratchBuffer<float> ubuf;
  float* U = ubuf.get(16 * c.ic * c.oc);
  KernelTransforms(w, c.ic, c.oc, true, U);
  return Forward({c.n, c.oh, c.ow, c.oc, c.ih, c.iw, c.ic, 2 - c.plh, 2 - c.plw}, dz, U, nullptr, false, dx);
}

bool WinogradBwdWeights(const ConvDesc& c, const float* x, const float* dz, float* dw, float* db) {
  const Geom g{c.n, c.ih, c.iw, c.ic, c.oh, c.ow, c.oc, c.plh, c.plw};
  const int nt = omp_get_max_threads();
  const int64_t tb = BlockTiles(g, nt), T = g.tiles(), nblocks = (T + tb - 1) / tb;
  const int64_t psize = 16 * g.ci * g.co + g.co;  // a thread's transformed dw, then its db
  const auto plan = GetBatch(g.ci, tb, g.co, true, true);
  thread_local ScratchBuffer<float> pbuf;
  float* part = pbuf.get(nt * psize);
  std::fill(part, part + nt * psize, 0.f);
#pragma omp parallel num_threads(nt)
  {
    thread_local ScratchBuffer<float> vbuf, zbuf;
    float* V = vbuf.get(16 * tb * g.ci);
    float* Z = zbuf.get(16 * tb * g.co);
    const float* zero = Zeros(4 * std::max(g.ci, g.co));  // also 4 rows of dz outside the output
    float* mine = part + omp_get_thread_num() * psize;
    float* dbp = mine + 16 * g.ci * g.co;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t t0 = blk * tb, cnt = std::min(tb, T - t0);
      const float* d[16];
      TileCursor cur(g, x, zero, t0);
      for (int64_t i = 0; i < cnt; ++i, cur.Next()) {
        cur.Patch(d);
        InputTile(d, g.ci, V + i * g.ci, tb * g.ci);
        const float* z[4];
        cur.Outputs(dz, g.co, zero, z);  // dz rows outside the output read as zeros
        if (db) SumRows(z, g.co, dbp);
        DzTile(z, g.co, Z + i * g.co, tb * g.co);
      }
      for (int64_t i = cnt; i < tb; ++i)  // the last block's unused rows: zeros (0 * garbage may be NaN)
        for (int j = 0; j < 16; ++j) {
          std::fill_n(V + (j * tb + i) * g.ci, g.ci, 0.f);
          std::fill_n(Z + (j * tb + i) * g.co, g.co, 0.f);
        }
      RunBatch(*plan, V, Z, mine);  // mine[16][ci][co] += V^T Z
    }
  }
  // dw = G^T P G per (c, k), G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]; P summed over threads.
  const int64_t ck = g.ci * g.co;
  float bad = 0.f;
#pragma omp parallel for reduction(+ : bad) if (ck > 4096)
  for (int64_t e = 0; e < ck; ++e) {
    float P[16];
    for (int i = 0; i < 16; ++i) {
      float s = 0.f;
      for (int t = 0; t < nt; ++t) s += part[t * psize + i * ck + e];
      P[i] = s;
    }
    float qv[3][4];
    for (int j = 0; j < 4; ++j) {
      qv[0][j] = P[j] + 0.5f * (P[4 + j] + P[8 + j]);
      qv[1][j] = 0.5f * (P[4 + j] - P[8 + j]);
      qv[2][j] = 0.5f * (P[4 + j] + P[8 + j]) + P[12 + j];
    }
    for (int r = 0; r < 3; ++r) {
      const float v[3] = {qv[r][0] + 0.5f * (qv[r][1] + qv[r][2]), 0.5f * (qv[r][1] - qv[r][2]),
                          0.5f * (qv[r][1] + qv[r][2]) + qv[r][3]};
      for (int s = 0; s < 3; ++s) {
        dw[(r * 3 + s) * ck + e] = v[s];
        bad += v[s] - v[s];
      }
    }
  }
  if (db)
    for (int64_t k = 0; k < g.co; ++k) {
      float s = 0.f;
      for (int t = 0; t < nt; ++t) s += part[t * psize + 16 * ck + k];
      db[k] = s;
    }
  return bad == 0.f;
}

}  // namespace jax_mps::cpu
