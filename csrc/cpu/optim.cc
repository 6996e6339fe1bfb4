// Fused optimizer steps (mps.optim) on the CPU: one call updates every leaf of a dtype group.
// Work is cut into fixed-size chunks across all leaves so OpenMP balances big and small tensors;
// the per-element loops are branch-free (rule options are template parameters) to vectorize.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/backend.h"
#include "cpu/f32.h"
#include "cpu/kernel_util.h"

namespace jax_mps::cpu {
namespace {

// Element load/store for the parameter dtype; state and arithmetic are float32.
template <typename P> inline float Ld(P x) { return static_cast<float>(x); }
template <typename P> inline P St(float x) { return static_cast<P>(x); }

struct BF16 { uint16_t v; };
template <> inline float Ld<BF16>(BF16 x) { return Bf16ToF32(x.v); }
template <> inline BF16 St<BF16>(float f) { return BF16{F32ToBf16(f)}; }

constexpr int64_t kChunk = 1 << 15;

struct Leaf {
  int64_t size;
  const void* p;
  const void* g;
  void* out;
  float* s_in[3];
  float* s_out[3];
};
struct Chunk { int32_t leaf; int64_t begin, end; };

std::vector<Chunk> MakeChunks(const std::vector<Leaf>& leaves) {
  std::vector<Chunk> chunks;
  for (size_t l = 0; l < leaves.size(); ++l)
    for (int64_t b = 0; b < leaves[l].size; b += kChunk)
      chunks.push_back({int32_t(l), b, std::min(leaves[l].size, b + kChunk)});
  return chunks;
}

// The parameter joins only through a term that is on (l1 / l2 > 0): 0 * inf would turn an inf or
// NaN parameter into a NaN update where optax, not reading it, keeps the gradient's value.
inline float Prep(float g, float p, const OptimPre& c) {
  g = RescaleClip(g, c) * c.nscale;
  const float sg = p > 0.f ? 1.f : p < 0.f ? -1.f : p;  // jnp.sign: NaN stays NaN
  const float l2 = c.l2 > 0.f ? c.l2 * p : 0.f, l1 = c.l1 > 0.f ? c.l1 * sg : 0.f;
  return g + (l2 + l1);
}

// jnp.maximum: NaN if either is NaN (std::max would keep the other).
inline float NanMax(float a, float b) { return (a != a || b != b) ? a + b : std::max(a, b); }

template <typename P>
double SqNorm(const std::vector<Leaf>& leaves, const std::vector<Chunk>& chunks, const OptimPre& c) {
  double acc = 0.0;
  const int64_t nc = int64_t(chunks.size());
#pragma omp parallel for schedule(static) reduction(+ : acc) if (nc > 1)
  for (int64_t k = 0; k < nc; ++k) {
    const Chunk& ch = chunks[k];
    const P* __restrict g = static_cast<const P*>(leaves[ch.leaf].g);
    float part = 0.f;  // a chunk is short: float partials, double across chunks
#pragma omp simd reduction(+ : part)
    for (int64_t i = ch.begin; i < ch.end; ++i) {
      const float v = RescaleClip(Ld<P>(g[i]), c);
      part += v * v;
    }
    acc += part;
  }
  return acc;
}

// Per-rule hyperparameters resolved for this step.
struct Hyper {
  float nlr;                 // -learning_rate
  bool keep;                 // out = p + delta (apply), else delta (optax updates; p unread)
  float b1, ob1, b2, ob2;    // adam b1/b2, rmsprop decay in b2; ob = 1 - b rounded from the
                             // caller's double (as optax), not from float b
  float bc1, bc2;            // adam bias corrections 1 - b^t
  float eps, mom, wd;
};

// Hyperparameters are copied into locals: read through a reference they could alias the
// stores, which keeps GCC from hoisting them. G: the gradients' type (P, or float16 / bfloat16
// gradients of float32 master weights).
template <typename P, typename G, OptRule R, bool kMom, bool kNesterov, bool kAms, bool kCentered>
JAX_MPS_CLONES void StepChunk(const Leaf& L, int64_t b, int64_t e, const OptimPre& c, const Hyper& h) {
  const P* __restrict p = static_cast<const P*>(L.p);
  const G* __restrict g = static_cast<const G*>(L.g);
  P* __restrict out = static_cast<P*>(L.out);
  const float* __restrict a0 = L.s_in[0];
  const float* __restrict a1 = L.s_in[1];
  const float* __restrict a2 = L.s_in[2];
  float* __restrict o0 = L.s_out[0];
  float* __restrict o1 = L.s_out[1];
  float* __restrict o2 = L.s_out[2];
  const OptimPre pre = c;
  const bool keep = h.keep;
  const float nlr = h.nlr, b1 = h.b1, ob1 = h.ob1, b2 = h.b2, ob2 = h.ob2;
  // The bias corrections as reciprocals: a vector division costs ~5x a multiply (Adam had three
  // and a square root an element); the results move by at most an ulp.
  const float ibc1 = 1.f / h.bc1, ibc2 = 1.f / h.bc2, eps = h.eps, mom = h.mom, wd = h.wd;
  // In place, out aliases p and the slot results alias their inputs; every iteration touches
  // only index i, so SIMD is valid (and GCC's runtime alias check would otherwise pick the
  // scalar loop).
#pragma omp simd
  for (int64_t i = b; i < e; ++i) {
    const float pv = Ld<P>(p[i]);
    const float gv = Prep(Ld<G>(g[i]), pv, pre);
    float d;
    if constexpr (R == OptRule::kSgd) {  // optax.trace then scale_by_learning_rate
      float u = gv;
      if constexpr (kMom) {
        float t = gv + mom * a0[i];
        o0[i] = t;
        u = kNesterov ? gv + mom * t : t;
      }
      d = nlr * u;
    } else if constexpr (R == OptRule::kAdam) {  // optax.scale_by_adam / scale_by_amsgrad
      float m = ob1 * gv + b1 * a0[i];
      float v = ob2 * (gv * gv) + b2 * a1[i];
      o0[i] = m;
      o1[i] = v;
      float vh = v * ibc2;
      if constexpr (kAms) {
        vh = NanMax(a2[i], vh);
        o2[i] = vh;
      }
      float u = (m * ibc1) / (std::sqrt(vh) + eps);
      d = nlr * (wd > 0.f ? u + wd * pv : u);
    } else {  // optax.rmsprop: scale_by_rms / scale_by_stddev, lr, then trace
      float v = ob2 * (gv * gv) + b2 * a0[i];
      o0[i] = v;
      float den = v;
      if constexpr (kCentered) {
        float m = ob2 * gv + b2 * a1[i];
        o1[i] = m;
        den = v - m * m;
      }
      d = nlr * ((1.f / std::sqrt(den + eps)) * gv);
      if constexpr (kMom) {  // the momentum slot follows nu (and mu when centered)
        const float* __restrict ti = kCentered ? a2 : a1;
        float* __restrict to = kCentered ? o2 : o1;
        float t = d + mom * ti[i];
        to[i] = t;
        d = t;
      }
    }
    out[i] = St<P>(keep ? pv + d : d);
  }
}

template <typename P, typename G, OptRule R, bool kMom, bool kNesterov, bool kAms, bool kCentered>
void RunSteps(const std::vector<Leaf>& leaves, const std::vector<Chunk>& chunks, const OptimPre& c,
              const Hyper& h) {
  const int64_t nc = int64_t(chunks.size());
#pragma omp parallel for schedule(static) if (nc > 1)
  for (int64_t k = 0; k < nc; ++k) {
    const Chunk& ch = chunks[k];
    StepChunk<P, G, R, kMom, kNesterov, kAms, kCentered>(leaves[ch.leaf], ch.begin, ch.end, c, h);
  }
}

template <typename P, typename G>
void Dispatch(const OptimDesc& d, const std::vector<Leaf>& leaves, const std::vector<Chunk>& chunks,
              const OptimPre& c, const Hyper& h) {
  const bool mom = d.Momentum();
  switch (d.rule) {
    case OptRule::kSgd:
      if (!mom) return RunSteps<P, G, OptRule::kSgd, false, false, false, false>(leaves, chunks, c, h);
      if (d.nesterov) return RunSteps<P, G, OptRule::kSgd, true, true, false, false>(leaves, chunks, c, h);
      return RunSteps<P, G, OptRule::kSgd, true, false, false, false>(leaves, chunks, c, h);
    case OptRule::kAdam:
      if (d.amsgrad) return RunSteps<P, G, OptRule::kAdam, false, false, true, false>(leaves, chunks, c, h);
      return RunSteps<P, G, OptRule::kAdam, false, false, false, false>(leaves, chunks, c, h);
    case OptRule::kRmsprop:
      if (d.centered) {
        if (mom) return RunSteps<P, G, OptRule::kRmsprop, true, false, false, true>(leaves, chunks, c, h);
        return RunSteps<P, G, OptRule::kRmsprop, false, false, false, true>(leaves, chunks, c, h);
      }
      if (mom) return RunSteps<P, G, OptRule::kRmsprop, true, false, false, false>(leaves, chunks, c, h);
      return RunSteps<P, G, OptRule::kRmsprop, false, false, false, false>(leaves, chunks, c, h);
  }
}

// The element type of each float dtype tag (runtime/backend.h DispatchFloat).
template <typename Tag> struct Elem;
template <> struct Elem<F32Tag> { using T = float; };
template <> struct Elem<F16Tag> { using T = _Float16; };
template <> struct Elem<BF16Tag> { using T = BF16; };
template <typename Tag> using ElemT = typename Elem<std::decay_t<Tag>>::T;

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

ffi::Error Cpu::OptimStep(Ctx, const OptimDesc& d, Buf count, Buf sqnorm, Buf hp_buf, const Buffers& args,
                          const Buffers& rets) {
  const float* hp = static_cast<const float*>(hp_buf.untyped_data());
  const int64_t n = d.n;
  std::vector<Leaf> leaves(n);
  const ffi::DataType dtype = n ? args[0].element_type() : ffi::F32;
  const ffi::DataType gdtype = n ? args[n].element_type() : dtype;
  for (int64_t l = 0; l < n; ++l) {
    Leaf& L = leaves[l];
    L.size = int64_t(args[l].element_count());
    L.p = args[l].untyped_data();
    L.g = args[n + l].untyped_data();
    L.out = rets[l].untyped_data();
    for (int64_t s = 0; s < 3; ++s) L.s_in[s] = L.s_out[s] = nullptr;
    for (int64_t s = 0; s < d.nslots; ++s) {
      L.s_in[s] = static_cast<float*>(args[(2 + s) * n + l].untyped_data());
      L.s_out[s] = static_cast<float*>(rets[(1 + s) * n + l].untyped_data());
    }
  }
  const int32_t t = static_cast<const int32_t*>(count.untyped_data())[0];
  if (d.rule == OptRule::kAdam) JAX_MPS_CHECK(t > 0, "optim: adam needs a step count >= 1, got ", t);
  const auto chunks = MakeChunks(leaves);
  OptimPre c = MakeOptimPre(hp, true);
  if (d.norm_mode != NormMode::kNone) {
    double sq = double(static_cast<const float*>(sqnorm.untyped_data())[0]);
    if (d.norm_mode == NormMode::kInternal)
      JAX_MPS_RETURN_IF_ERROR(DispatchFloat("optim", gdtype, [&](auto tag) {
        sq = SqNorm<ElemT<decltype(tag)>>(leaves, chunks, c);
        return ffi::Error::Success();
      }));
    c.nscale = ClipScale(static_cast<float>(std::sqrt(sq)), hp[kClipNorm]);
  }
  Hyper h;
  h.nlr = -hp[kLr];
  h.keep = !d.write_updates;
  h.b1 = hp[kB1]; h.ob1 = hp[kOb1];
  h.b2 = hp[kB2]; h.ob2 = hp[kOb2];
  // As optax: 1 - b**count in float32.
  h.bc1 = 1.f - std::pow(h.b1, float(t));
  h.bc2 = 1.f - std::pow(h.b2, float(t));
  h.eps = hp[kEps]; h.mom = hp[kMomentum]; h.wd = hp[kWeightDecay];
  if (gdtype != dtype)  // float32 masters, low-precision gradients (checked in runtime/optim.h)
    return DispatchFloat("optim", gdtype, [&](auto tag) {
      Dispatch<float, ElemT<decltype(tag)>>(d, leaves, chunks, c, h);
      return ffi::Error::Success();
    });
  return DispatchFloat("optim", dtype, [&](auto tag) {
    Dispatch<ElemT<decltype(tag)>, ElemT<decltype(tag)>>(d, leaves, chunks, c, h);
    return ffi::Error::Success();
  });
}

ffi::Error Cpu::OptimSqNorm(Ctx, Buf hp, const Buffers& grads, Buf out) {
  std::vector<Leaf> leaves(grads.size());
  for (size_t l = 0; l < grads.size(); ++l)
    leaves[l] = Leaf{int64_t(grads[l].element_count()), nullptr, grads[l].untyped_data(), nullptr, {}, {}};
  const auto chunks = MakeChunks(leaves);
  const OptimPre c = MakeOptimPre(static_cast<const float*>(hp.untyped_data()), false);
  double sq = 0.0;
  if (!grads.empty())
    JAX_MPS_RETURN_IF_ERROR(DispatchFloat("optim_sqnorm", grads[0].element_type(), [&](auto tag) {
      sq = SqNorm<ElemT<decltype(tag)>>(leaves, chunks, c);
      return ffi::Error::Success();
    }));
  static_cast<float*>(out.untyped_data())[0] = float(sq);
  return ffi::Error::Success();
}

}  // namespace jax_mps
