// Fused optimizer steps (mps.optim) on the CPU: one call updates every leaf of a dtype group.
// Work is cut into fixed-size chunks across all leaves so OpenMP balances big and small tensors;
// the per-element loops are branch-free (rule options are template parameters) to vectorize.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/kernel_util.h"
#include "runtime/optim.h"
#include "runtime/registry.h"

namespace jax_mps::cpu {
namespace {

// Element load/store for the parameter dtype; state and arithmetic are float32.
template <typename P> inline float Ld(P x) { return static_cast<float>(x); }
template <typename P> inline P St(float x) { return static_cast<P>(x); }

struct BF16 { uint16_t v; };
template <> inline float Ld<BF16>(BF16 x) {
  uint32_t u = uint32_t(x.v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <> inline BF16 St<BF16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return BF16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return BF16{uint16_t(u >> 16)};
}

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

// Gradient preprocessing constants (neutral values when an option is off: exact no-ops).
struct Pre {
  float rescale, lo, hi, nscale, l1, l2;
};

inline float Prep(float g, float p, Pre c) {
  g = g * c.rescale;
  g = std::min(std::max(g, c.lo), c.hi);
  g = g * c.nscale;
  const float sg = float(p > 0.f) - float(p < 0.f);
  return g + (c.l2 * p + c.l1 * sg);
}

template <typename P>
double SqNorm(const std::vector<Leaf>& leaves, const std::vector<Chunk>& chunks, const Pre& c) {
  double acc = 0.0;
  const int64_t nc = int64_t(chunks.size());
#pragma omp parallel for schedule(static) reduction(+ : acc) if (nc > 1)
  for (int64_t k = 0; k < nc; ++k) {
    const Chunk& ch = chunks[k];
    const P* __restrict g = static_cast<const P*>(leaves[ch.leaf].g);
    float part = 0.f;  // a chunk is short: float partials, double across chunks
#pragma omp simd reduction(+ : part)
    for (int64_t i = ch.begin; i < ch.end; ++i) {
      float v = std::min(std::max(Ld<P>(g[i]) * c.rescale, c.lo), c.hi);
      part += v * v;
    }
    acc += part;
  }
  return acc;
}

// Per-rule hyperparameters resolved for this step.
struct Hyper {
  float nlr;                 // -learning_rate
  float keep;                // 1: out = p + delta (apply); 0: out = delta (optax updates)
  float b1, ob1, b2, ob2;    // adam b1/b2, rmsprop decay in b2; ob = 1 - b rounded from the
                             // caller's double (as optax), not from float b
  float bc1, bc2;            // adam bias corrections 1 - b^t
  float eps, mom, wd;
};

// Hyperparameters are copied into locals: read through a reference they could alias the
// stores, which keeps GCC from hoisting them.
template <typename P, OptRule R, bool kMom, bool kNesterov, bool kAms, bool kCentered>
JAX_MPS_CLONES void StepChunk(const Leaf& L, int64_t b, int64_t e, const Pre& c, const Hyper& h) {
  const P* __restrict p = static_cast<const P*>(L.p);
  const P* __restrict g = static_cast<const P*>(L.g);
  P* __restrict out = static_cast<P*>(L.out);
  const float* __restrict a0 = L.s_in[0];
  const float* __restrict a1 = L.s_in[1];
  const float* __restrict a2 = L.s_in[2];
  float* __restrict o0 = L.s_out[0];
  float* __restrict o1 = L.s_out[1];
  float* __restrict o2 = L.s_out[2];
  const Pre pre = c;
  const float nlr = h.nlr, keep = h.keep, b1 = h.b1, ob1 = h.ob1, b2 = h.b2, ob2 = h.ob2;
  const float bc1 = h.bc1, bc2 = h.bc2, eps = h.eps, mom = h.mom, wd = h.wd;
  // In place, out aliases p and the slot results alias their inputs; every iteration touches
  // only index i, so SIMD is valid (and GCC's runtime alias check would otherwise pick the
  // scalar loop).
#pragma omp simd
  for (int64_t i = b; i < e; ++i) {
    const float pv = Ld<P>(p[i]);
    const float gv = Prep(Ld<P>(g[i]), pv, pre);
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
      float vh = v / bc2;
      if constexpr (kAms) {
        vh = std::max(a2[i], vh);
        o2[i] = vh;
      }
      float u = (m / bc1) / (std::sqrt(vh) + eps);
      d = nlr * (u + wd * pv);
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
    out[i] = St<P>(keep * pv + d);
  }
}

template <typename P, OptRule R, bool kMom, bool kNesterov, bool kAms, bool kCentered>
void RunSteps(const std::vector<Leaf>& leaves, const std::vector<Chunk>& chunks, const Pre& c,
              const Hyper& h) {
  const int64_t nc = int64_t(chunks.size());
#pragma omp parallel for schedule(static) if (nc > 1)
  for (int64_t k = 0; k < nc; ++k) {
    const Chunk& ch = chunks[k];
    StepChunk<P, R, kMom, kNesterov, kAms, kCentered>(leaves[ch.leaf], ch.begin, ch.end, c, h);
  }
}

template <typename P>
void Dispatch(const OptimDesc& d, const std::vector<Leaf>& leaves, const std::vector<Chunk>& chunks,
              const Pre& c, const Hyper& h) {
  const bool mom = d.momentum != 0.f;
  switch (d.rule) {
    case OptRule::kSgd:
      if (!mom) return RunSteps<P, OptRule::kSgd, false, false, false, false>(leaves, chunks, c, h);
      if (d.nesterov) return RunSteps<P, OptRule::kSgd, true, true, false, false>(leaves, chunks, c, h);
      return RunSteps<P, OptRule::kSgd, true, false, false, false>(leaves, chunks, c, h);
    case OptRule::kAdam:
      if (d.amsgrad) return RunSteps<P, OptRule::kAdam, false, false, true, false>(leaves, chunks, c, h);
      return RunSteps<P, OptRule::kAdam, false, false, false, false>(leaves, chunks, c, h);
    case OptRule::kRmsprop:
      if (d.centered) {
        if (mom) return RunSteps<P, OptRule::kRmsprop, true, false, false, true>(leaves, chunks, c, h);
        return RunSteps<P, OptRule::kRmsprop, false, false, false, true>(leaves, chunks, c, h);
      }
      if (mom) return RunSteps<P, OptRule::kRmsprop, true, false, false, false>(leaves, chunks, c, h);
      return RunSteps<P, OptRule::kRmsprop, false, false, false, false>(leaves, chunks, c, h);
  }
}

bool Floating(ffi::DataType t) { return t == ffi::F32 || t == ffi::F16 || t == ffi::BF16; }

Pre MakePre(float rescale, float clip_value, float l1, float l2) {
  const float inf = std::numeric_limits<float>::infinity();
  return Pre{rescale, clip_value > 0.f ? -clip_value : -inf, clip_value > 0.f ? clip_value : inf,
             1.f, l1, l2};
}

template <typename F>
auto ByDtype(ffi::DataType t, F&& f) {
  switch (t) {
    case ffi::F16: return f(_Float16{});
    case ffi::BF16: return f(BF16{});
    default: return f(float{});
  }
}

ffi::Error OptimStep(ffi::Buffer<ffi::F32> lr, ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> sqnorm,
                     ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t rule, int64_t n,
                     int64_t nslots, int64_t write_updates, float b1, float b2, float ob1, float ob2, float eps, float momentum,
                     float weight_decay, int64_t nesterov, int64_t amsgrad, int64_t centered, float rescale,
                     float clip_value, float clip_norm, int64_t norm_mode, float l1, float l2) {
  OptimDesc d;
  d.rule = static_cast<OptRule>(rule);
  d.n = n;
  d.nslots = nslots;
  d.write_updates = write_updates != 0;
  d.b1 = b1; d.b2 = b2; d.eps = eps; d.momentum = momentum; d.weight_decay = weight_decay;
  d.nesterov = nesterov != 0; d.amsgrad = amsgrad != 0; d.centered = centered != 0;
  d.rescale = rescale; d.clip_value = clip_value; d.clip_norm = clip_norm; d.l1 = l1; d.l2 = l2;
  d.norm_mode = static_cast<NormMode>(norm_mode);
  JAX_MPS_RETURN_IF_ERROR(ValidateOptim(d, args.size(), rets.size()));
  JAX_MPS_CHECK(lr.element_count() == 1 && count.element_count() == 1 && sqnorm.element_count() == 1,
                "optim: lr, count and sqnorm must be scalars");

  std::vector<Leaf> leaves(n);
  ffi::DataType dtype = ffi::F32;
  for (int64_t l = 0; l < n; ++l) {
    auto p = args.get<ffi::AnyBuffer>(l);
    auto g = args.get<ffi::AnyBuffer>(n + l);
    auto o = rets.get<ffi::AnyBuffer>(l);
    if (!p.has_value()) return p.error();
    if (!g.has_value()) return g.error();
    if (!o.has_value()) return o.error();
    const int64_t size = int64_t(p->element_count());
    if (l == 0) dtype = p->element_type();
    JAX_MPS_CHECK(Floating(p->element_type()) && p->element_type() == dtype,
                  "optim: params of one call must share one float dtype (leaf ", l, ")");
    JAX_MPS_CHECK(g->element_type() == dtype && (*o)->element_type() == dtype,
                  "optim: grad/result dtype differs from its param (leaf ", l, ")");
    JAX_MPS_CHECK(int64_t(g->element_count()) == size && int64_t((*o)->element_count()) == size,
                  "optim: grad/result size differs from its param (leaf ", l, ": ",
                  DimsStr(p->dimensions()), ")");
    Leaf& L = leaves[l];
    L.size = size;
    L.p = p->untyped_data();
    L.g = g->untyped_data();
    L.out = (*o)->untyped_data();
    for (int64_t s = 0; s < 3; ++s) L.s_in[s] = L.s_out[s] = nullptr;
    for (int64_t s = 0; s < nslots; ++s) {
      auto si = args.get<ffi::AnyBuffer>((2 + s) * n + l);
      auto so = rets.get<ffi::AnyBuffer>((1 + s) * n + l);
      if (!si.has_value()) return si.error();
      if (!so.has_value()) return so.error();
      JAX_MPS_CHECK(si->element_type() == ffi::F32 && (*so)->element_type() == ffi::F32,
                    "optim: state slot ", s, " of leaf ", l, " must be float32");
      JAX_MPS_CHECK(int64_t(si->element_count()) == size && int64_t((*so)->element_count()) == size,
                    "optim: state slot ", s, " of leaf ", l, " has ", si->element_count(),
                    " elements, param has ", size);
      L.s_in[s] = static_cast<float*>(si->untyped_data());
      L.s_out[s] = static_cast<float*>((*so)->untyped_data());
    }
  }
  const auto chunks = MakeChunks(leaves);
  Pre c = MakePre(rescale, clip_value, l1, l2);
  if (d.norm_mode != NormMode::kNone) {
    double sq = d.norm_mode == NormMode::kExternal
                    ? double(sqnorm.typed_data()[0])
                    : ByDtype(dtype, [&](auto t) { return SqNorm<decltype(t)>(leaves, chunks, c); });
    c.nscale = NormScale(sq, clip_norm);
  }
  const int32_t t = count.typed_data()[0];
  Hyper h;
  h.nlr = -lr.typed_data()[0];
  h.keep = d.write_updates ? 0.f : 1.f;
  h.b1 = b1; h.ob1 = ob1;
  h.b2 = b2; h.ob2 = ob2;
  // As optax: 1 - b**count in float32.
  h.bc1 = 1.f - std::pow(b1, float(t));
  h.bc2 = 1.f - std::pow(b2, float(t));
  h.eps = eps; h.mom = momentum; h.wd = weight_decay;
  if (d.rule == OptRule::kAdam)
    JAX_MPS_CHECK(t > 0, "optim: adam needs a step count >= 1, got ", t);
  ByDtype(dtype, [&](auto tag) { Dispatch<decltype(tag)>(d, leaves, chunks, c, h); return 0; });
  return ffi::Error::Success();
}

// Squared global norm of a group's rescaled, value-clipped gradients (for trees of several
// dtype groups, whose norms are summed before the step calls).
ffi::Error OptimSqNorm(ffi::RemainingArgs args, ffi::Result<ffi::Buffer<ffi::F32>> out, float rescale,
                       float clip_value) {
  JAX_MPS_CHECK(out->element_count() == 1, "optim_sqnorm: result must be a scalar");
  JAX_MPS_CHECK(rescale >= 0.f && clip_value >= 0.f, "optim_sqnorm: rescale and clip_value must be >= 0");
  std::vector<Leaf> leaves(args.size());
  ffi::DataType dtype = ffi::F32;
  for (size_t l = 0; l < args.size(); ++l) {
    auto g = args.get<ffi::AnyBuffer>(l);
    if (!g.has_value()) return g.error();
    if (l == 0) dtype = g->element_type();
    JAX_MPS_CHECK(Floating(g->element_type()) && g->element_type() == dtype,
                  "optim_sqnorm: grads of one call must share one float dtype (leaf ", l, ")");
    leaves[l] = Leaf{int64_t(g->element_count()), nullptr, g->untyped_data(), nullptr, {}, {}};
  }
  const auto chunks = MakeChunks(leaves);
  const Pre c = MakePre(rescale, clip_value, 0.f, 0.f);
  double sq = ByDtype(dtype, [&](auto t) { return SqNorm<decltype(t)>(leaves, chunks, c); });
  out->typed_data()[0] = float(sq);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kOptimStep, OptimStep,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("rule")
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("nslots")
                                  .Attr<int64_t>("write_updates")
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("ob1")
                                  .Attr<float>("ob2")
                                  .Attr<float>("eps")
                                  .Attr<float>("momentum")
                                  .Attr<float>("weight_decay")
                                  .Attr<int64_t>("nesterov")
                                  .Attr<int64_t>("amsgrad")
                                  .Attr<int64_t>("centered")
                                  .Attr<float>("rescale")
                                  .Attr<float>("clip_value")
                                  .Attr<float>("clip_norm")
                                  .Attr<int64_t>("norm_mode")
                                  .Attr<float>("l1")
                                  .Attr<float>("l2"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kOptimSqNorm, OptimSqNorm,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("rescale")
                                  .Attr<float>("clip_value"));

JAX_MPS_REGISTER("jax_mps_optim_step_fwd", "cpu", kOptimStep);
JAX_MPS_REGISTER("jax_mps_optim_sqnorm_fwd", "cpu", kOptimSqNorm);

}  // namespace jax_mps::cpu
