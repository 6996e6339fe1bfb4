// Fused optimizer steps (mps.optim) on CUDA: one launch updates every leaf of a dtype group (up to
// kMaxLeaves leaves per launch; larger trees take ceil(n / kMaxLeaves) launches). The leaf table
// travels as a kernel parameter, so no host-to-device copy is needed and the launch can be
// captured in a CUDA graph. The rules are those of csrc/cpu/optim.cc (optax's arithmetic);
// updates happen in place through the aliased buffers. lr, count and sqnorm are device scalars.
#include <algorithm>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/reduce.cuh"
#include "runtime/optim.h"

namespace jax_mps::cuda {
namespace {

constexpr int kMaxLeaves = 192;  // 192 leaves x 80 bytes: ~15 KB of the 32 KB parameter space

struct LeafTable {
  int count;
  int64_t size[kMaxLeaves];
  const void* p[kMaxLeaves];
  const void* g[kMaxLeaves];
  void* out[kMaxLeaves];
  float* s_in[3][kMaxLeaves];
  float* s_out[3][kMaxLeaves];
};

struct Pre {
  float rescale, lo, hi, l1, l2;
};

struct StepArgs {
  OptRule rule;
  bool mom, nesterov, ams, centered, write_updates;
  float b1, ob1, b2, ob2, eps, momentum, wd, clip_norm;
  NormMode norm_mode;
  Pre pre;
};

__device__ __forceinline__ float Clip(float g, const Pre& c) { return fminf(fmaxf(g * c.rescale, c.lo), c.hi); }

template <typename P>
__global__ void SqNormK(LeafTable t, Pre c, double* acc) {
  double part = 0.0;
  for (int l = 0; l < t.count; ++l) {
    const P* g = static_cast<const P*>(t.g[l]);
    float f = 0.f;
    JAX_MPS_GRID_STRIDE(i, t.size[l]) {
      const float v = Clip(Ld(g[i]), c);
      f += v * v;
    }
    part += f;
  }
  part = BlockSum(part);
  if (threadIdx.x == 0) atomicAdd(acc, part);
}

template <typename P>
__global__ void StepK(LeafTable t, StepArgs a, const float* lr, const int32_t* count, const float* ext_sq,
                      const double* int_sq) {
  const float nlr = -lr[0];
  const float keep = a.write_updates ? 0.f : 1.f;
  const float tc = float(count[0]);
  const float bc1 = 1.f - powf(a.b1, tc), bc2 = 1.f - powf(a.b2, tc);  // as optax: 1 - b**count in float32
  float nscale = 1.f;
  if (a.norm_mode != NormMode::kNone) {
    const float norm = sqrtf(a.norm_mode == NormMode::kExternal ? ext_sq[0] : float(int_sq[0]));
    nscale = norm < a.clip_norm ? 1.f : a.clip_norm / norm;
  }
  for (int l = 0; l < t.count; ++l) {
    const P* p = static_cast<const P*>(t.p[l]);
    const P* g = static_cast<const P*>(t.g[l]);
    P* out = static_cast<P*>(t.out[l]);
    const float *a0 = t.s_in[0][l], *a1 = t.s_in[1][l], *a2 = t.s_in[2][l];
    float *o0 = t.s_out[0][l], *o1 = t.s_out[1][l], *o2 = t.s_out[2][l];
    JAX_MPS_GRID_STRIDE(i, t.size[l]) {
      const float pv = Ld(p[i]);
      const float sg = float(pv > 0.f) - float(pv < 0.f);
      const float gv = Clip(Ld(g[i]), a.pre) * nscale + (a.pre.l2 * pv + a.pre.l1 * sg);
      float d;
      if (a.rule == OptRule::kSgd) {
        float u = gv;
        if (a.mom) {
          const float tr = gv + a.momentum * a0[i];
          o0[i] = tr;
          u = a.nesterov ? gv + a.momentum * tr : tr;
        }
        d = nlr * u;
      } else if (a.rule == OptRule::kAdam) {
        const float m = a.ob1 * gv + a.b1 * a0[i];
        const float v = a.ob2 * (gv * gv) + a.b2 * a1[i];
        o0[i] = m;
        o1[i] = v;
        float vh = v / bc2;
        if (a.ams) {
          vh = fmaxf(a2[i], vh);
          o2[i] = vh;
        }
        d = nlr * ((m / bc1) / (sqrtf(vh) + a.eps) + a.wd * pv);
      } else {
        const float v = a.ob2 * (gv * gv) + a.b2 * a0[i];
        o0[i] = v;
        float den = v;
        if (a.centered) {
          const float m = a.ob2 * gv + a.b2 * a1[i];
          o1[i] = m;
          den = v - m * m;
        }
        d = nlr * (rsqrtf(den + a.eps) * gv);  // lax.rsqrt, as optax (XLA:GPU lowers it to rsqrt too)
        if (a.mom) {
          const float* ti = a.centered ? a2 : a1;
          float* to = a.centered ? o2 : o1;
          const float tr = d + a.momentum * ti[i];
          to[i] = tr;
          d = tr;
        }
      }
      out[i] = St<P>(keep * pv + d);
    }
  }
}

Pre MakePre(float rescale, float clip_value, float l1, float l2) {
  return Pre{rescale, clip_value > 0.f ? -clip_value : -INFINITY, clip_value > 0.f ? clip_value : INFINITY, l1, l2};
}

unsigned GridFor(const LeafTable& t) {
  int64_t total = 0;
  for (int l = 0; l < t.count; ++l) total += t.size[l];
  return Blocks(total, 256, 132 * 8);
}

// Squared norm of the (rescaled, value-clipped) gradients of `leaves` added to *acc (zeroed by the caller).
ffi::Error LaunchSqNorm(Ctx& ctx, const char* op, ffi::DataType dtype, std::vector<LeafTable>& tables, Pre c,
                        double* acc) {
  return DispatchFloat(op, dtype, [&](auto tag) {
    using P = decltype(tag);
    for (auto& t : tables) SqNormK<P><<<GridFor(t), 256, 0, ctx.stream>>>(t, c, acc);
    return LaunchStatus(op);
  });
}

ffi::Error OptimStep(Ctx ctx, ffi::AnyBuffer lr, ffi::AnyBuffer count, ffi::AnyBuffer sqnorm, ffi::RemainingArgs args,
                     ffi::RemainingRets rets, int64_t rule, int64_t n, int64_t nslots, int64_t write_updates, float b1,
                     float b2, float ob1, float ob2, float eps, float momentum, float weight_decay, int64_t nesterov,
                     int64_t amsgrad, int64_t centered, float rescale, float clip_value, float clip_norm,
                     int64_t norm_mode, float l1, float l2) {
  const char* op = "optim";
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
  JAX_MPS_CHECK(lr.element_count() == 1 && count.element_count() == 1 && sqnorm.element_count() == 1 &&
                    lr.element_type() == ffi::F32 && count.element_type() == ffi::S32 &&
                    sqnorm.element_type() == ffi::F32,
                op, ": lr, count and sqnorm must be float32, int32 and float32 scalars");
  std::vector<LeafTable> tables;
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
    JAX_MPS_CHECK(IsFloat(p->element_type()) && p->element_type() == dtype, op,
                  ": params of one call must share one float dtype (leaf ", l, ")");
    JAX_MPS_CHECK(g->element_type() == dtype && (*o)->element_type() == dtype, op,
                  ": grad/result dtype differs from its param (leaf ", l, ")");
    JAX_MPS_CHECK(int64_t(g->element_count()) == size && int64_t((*o)->element_count()) == size, op,
                  ": grad/result size differs from its param (leaf ", l, ": ", DimsStr(p->dimensions()), ")");
    if (l % kMaxLeaves == 0) {
      tables.emplace_back();
      std::memset(&tables.back(), 0, sizeof(LeafTable));
    }
    LeafTable& t = tables.back();
    const int k = t.count++;
    t.size[k] = size;
    t.p[k] = p->untyped_data();
    t.g[k] = g->untyped_data();
    t.out[k] = (*o)->untyped_data();
    for (int64_t s = 0; s < nslots; ++s) {
      auto si = args.get<ffi::AnyBuffer>((2 + s) * n + l);
      auto so = rets.get<ffi::AnyBuffer>((1 + s) * n + l);
      if (!si.has_value()) return si.error();
      if (!so.has_value()) return so.error();
      JAX_MPS_CHECK(si->element_type() == ffi::F32 && (*so)->element_type() == ffi::F32, op, ": state slot ", s,
                    " of leaf ", l, " must be float32");
      JAX_MPS_CHECK(int64_t(si->element_count()) == size && int64_t((*so)->element_count()) == size, op,
                    ": state slot ", s, " of leaf ", l, " has ", si->element_count(), " elements, param has ", size);
      t.s_in[s][k] = static_cast<float*>(si->untyped_data());
      t.s_out[s][k] = static_cast<float*>((*so)->untyped_data());
    }
  }
  if (n == 0) return ffi::Error::Success();
  StepArgs a;
  a.rule = d.rule;
  a.mom = momentum != 0.f;
  a.nesterov = d.nesterov; a.ams = d.amsgrad; a.centered = d.centered; a.write_updates = d.write_updates;
  a.b1 = b1; a.ob1 = ob1; a.b2 = b2; a.ob2 = ob2; a.eps = eps; a.momentum = momentum; a.wd = weight_decay;
  a.clip_norm = clip_norm;
  a.norm_mode = d.norm_mode;
  a.pre = MakePre(rescale, clip_value, l1, l2);
  double* int_sq = nullptr;
  if (d.norm_mode == NormMode::kInternal) {
    ffi::Error err;
    int_sq = static_cast<double*>(Workspace(ctx, sizeof(double), op, &err));
    if (!int_sq) return err;
    JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(int_sq, 0, sizeof(double), ctx.stream));
    JAX_MPS_RETURN_IF_ERROR(LaunchSqNorm(ctx, op, dtype, tables, MakePre(rescale, clip_value, 0.f, 0.f), int_sq));
  }
  return DispatchFloat(op, dtype, [&](auto tag) {
    using P = decltype(tag);
    for (auto& t : tables)
      StepK<P><<<GridFor(t), 256, 0, ctx.stream>>>(t, a, Ptr<const float>(lr), Ptr<const int32_t>(count),
                                                   Ptr<const float>(sqnorm), int_sq);
    return LaunchStatus(op);
  });
}

__global__ void ToFloat(const double* s, float* out) { out[0] = float(s[0]); }

ffi::Error OptimSqNorm(Ctx ctx, ffi::RemainingArgs args, ffi::Result<ffi::AnyBuffer> out, float rescale,
                       float clip_value) {
  const char* op = "optim_sqnorm";
  JAX_MPS_CHECK(out->element_count() == 1 && out->element_type() == ffi::F32, op,
                ": result must be a float32 scalar");
  JAX_MPS_CHECK(rescale >= 0.f && clip_value >= 0.f, op, ": rescale and clip_value must be >= 0");
  std::vector<LeafTable> tables;
  ffi::DataType dtype = ffi::F32;
  for (size_t l = 0; l < args.size(); ++l) {
    auto g = args.get<ffi::AnyBuffer>(l);
    if (!g.has_value()) return g.error();
    if (l == 0) dtype = g->element_type();
    JAX_MPS_CHECK(IsFloat(g->element_type()) && g->element_type() == dtype, op,
                  ": grads of one call must share one float dtype (leaf ", l, ")");
    if (l % kMaxLeaves == 0) {
      tables.emplace_back();
      std::memset(&tables.back(), 0, sizeof(LeafTable));
    }
    LeafTable& t = tables.back();
    t.size[t.count] = int64_t(g->element_count());
    t.g[t.count++] = g->untyped_data();
  }
  ffi::Error err;
  double* acc = static_cast<double*>(Workspace(ctx, sizeof(double), op, &err));
  if (!acc) return err;
  JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(acc, 0, sizeof(double), ctx.stream));
  if (!tables.empty())
    JAX_MPS_RETURN_IF_ERROR(LaunchSqNorm(ctx, op, dtype, tables, MakePre(rescale, clip_value, 0.f, 0.f), acc));
  ToFloat<<<1, 1, 0, ctx.stream>>>(acc, Ptr<float>(*out));
  return LaunchStatus(op);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_optim_step_fwd, OptimStep,
                              ffi::Ffi::Bind()
                                  .Ctx<Ctx>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
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
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCuda_optim_sqnorm_fwd, OptimSqNorm,
                              ffi::Ffi::Bind().Ctx<Ctx>().RemainingArgs().Ret<ffi::AnyBuffer>()
                                  .Attr<float>("rescale").Attr<float>("clip_value"));

}  // namespace jax_mps::cuda
