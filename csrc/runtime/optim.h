// Backend-neutral description of one fused optimizer step (mps.optim) and its validation.
//
// One call updates n leaves of one dtype group. Operands, in order:
//   count (s32 scalar, the step count after increment), sqnorm (f32 scalar, the squared global
//   gradient norm when norm_mode == kExternal), hp (f32[kNumOptimHp], the numeric
//   hyperparameters, see OptimHp), params[n], grads[n], slots[nslots][n] (float32 optimizer state).
// Results: out[n] (new params, or optax updates when write_updates), slots[nslots][n].
// Per element: g * (grad_scale * rescale) -> clip by value -> clip by global norm -> coupled
// L1/L2 -> rule.
// The numeric hyperparameters are data, not attributes, so they may be traced
// (optax.inject_hyperparams under jit); like optax, the runtime does not range-check them (Python
// checks concrete ones at trace time). What decides the kernel's shape -- rule, slots, flags, norm
// mode -- stays in attributes and is validated here.
#pragma once
#include <cmath>
#include <cstdint>

#include "runtime/backend.h"

namespace jax_mps {

enum class OptRule : int64_t { kSgd = 0, kAdam = 1, kRmsprop = 2 };
// kInternal: the call computes the norm of its own gradients (the tree is one dtype group);
// kExternal: the norm of the whole tree arrives in `sqnorm` (several groups, see optim_sqnorm).
enum class NormMode : int64_t { kNone = 0, kInternal = 1, kExternal = 2 };

// Entries of the hp operand. grad_scale: 1, or 1 / loss scale for loss-scaled gradients (unscaled
// in the kernel, never copied to float32 first). clip_value: inf = off (clip to [-inf, inf]). Rules: sgd
// momentum; adam b1, b2, eps, weight_decay; rmsprop decay (in b2), eps, momentum. ob1 = 1 - b1 and
// ob2 = 1 - b2 come from Python: rounded once from double for numbers, float32 arithmetic for
// traced values -- each as optax computes them.
enum OptimHp : int {
  kLr, kGradScale, kRescale, kClipValue, kClipNorm, kL1, kL2,
  kB1, kOb1, kB2, kOb2, kEps, kMomentum, kWeightDecay, kNumOptimHp
};
inline constexpr const char* kOptimHpNames[kNumOptimHp] = {
    "learning_rate", "grad_scale", "rescale", "clip_value", "clip_norm", "l1", "l2",
    "b1", "ob1", "b2", "ob2", "eps", "momentum", "weight_decay"};

struct OptimDesc {
  OptRule rule = OptRule::kSgd;
  int64_t n = 0;
  int64_t nslots = 0;
  bool write_updates = false;
  bool nesterov = false, amsgrad = false, centered = false;
  NormMode norm_mode = NormMode::kNone;
  // sgd / rmsprop: a momentum slot is present (its factor is hp[kMomentum]).
  bool Momentum() const {
    return rule == OptRule::kSgd ? nslots == 1 : rule == OptRule::kRmsprop && nslots == 2 + (centered ? 1 : 0);
  }
};

// Slots per rule: sgd [trace?]; adam [mu, nu, nu_max?]; rmsprop [nu, mu?, momentum?].
inline bool ValidSlots(const OptimDesc& d) {
  switch (d.rule) {
    case OptRule::kSgd: return d.nslots == 0 || d.nslots == 1;
    case OptRule::kAdam: return d.nslots == (d.amsgrad ? 3 : 2);
    case OptRule::kRmsprop: return d.nslots - (d.centered ? 1 : 0) == 1 || d.nslots - (d.centered ? 1 : 0) == 2;
  }
  return false;
}

inline ffi::Error ValidateOptim(const OptimDesc& d, size_t nargs, size_t nrets) {
  JAX_MPS_CHECK(d.rule == OptRule::kSgd || d.rule == OptRule::kAdam || d.rule == OptRule::kRmsprop,
                "optim: unknown rule ", static_cast<int64_t>(d.rule));
  JAX_MPS_CHECK(d.n >= 0, "optim: n must be >= 0, got ", d.n);
  JAX_MPS_CHECK(ValidSlots(d), "optim: rule ", static_cast<int64_t>(d.rule), " with these flags cannot have ",
                d.nslots, " state slots");
  JAX_MPS_CHECK(!d.nesterov || (d.rule == OptRule::kSgd && d.Momentum()), "optim: nesterov needs sgd with momentum");
  JAX_MPS_CHECK(nargs == static_cast<size_t>((2 + d.nslots) * d.n), "optim: expected ",
                (2 + d.nslots) * d.n, " tensor operands (params, grads, slots), got ", nargs);
  JAX_MPS_CHECK(nrets == static_cast<size_t>((1 + d.nslots) * d.n), "optim: expected ",
                (1 + d.nslots) * d.n, " results, got ", nrets);
  JAX_MPS_CHECK(d.norm_mode == NormMode::kNone || d.norm_mode == NormMode::kInternal ||
                    d.norm_mode == NormMode::kExternal,
                "optim: unknown norm_mode ", static_cast<int64_t>(d.norm_mode));
  return ffi::Error::Success();
}

inline ffi::Error CheckOptimHp(const char* op, const ffi::AnyBuffer& hp) {
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "hp", hp, ffi::F32));
  return CheckCount(op, "hp", hp, kNumOptimHp);
}

// Leaf l: params[l] (one float dtype for the whole call), grads[l] (one float dtype: the params'
// or, for float32 params, float16 / bfloat16: mixed precision's master weights), slots (float32);
// results out[l] (params' dtype), new slots. Every size equals the param's.
inline ffi::Error CheckOptimLeaves(const OptimDesc& d, const Buffers& args, const Buffers& rets) {
  const char* op = "optim";
  const ffi::DataType dtype = d.n ? args[0].element_type() : ffi::F32;
  const ffi::DataType gdtype = d.n ? args[d.n].element_type() : dtype;
  JAX_MPS_CHECK(IsFloat(gdtype) && (gdtype == dtype || dtype == ffi::F32), op, ": grads must be ",
                DtypeName(dtype), dtype == ffi::F32 ? ", float16 or bfloat16" : "", ", got ", DtypeName(gdtype));
  for (int64_t l = 0; l < d.n; ++l) {
    const ffi::AnyBuffer& p = args[l];
    JAX_MPS_CHECK(IsFloat(p.element_type()) && p.element_type() == dtype, op,
                  ": params of one call must share one float dtype (leaf ", l, ")");
    JAX_MPS_CHECK(args[d.n + l].element_type() == gdtype, op, ": grads of one call must share one dtype (leaf ", l,
                  ")");
    for (const ffi::AnyBuffer* b : {&args[d.n + l], &rets[l]}) {
      JAX_MPS_CHECK(b == &args[d.n + l] || b->element_type() == dtype, op, ": result dtype differs from its param (leaf ",
                    l, ")");
      JAX_MPS_CHECK(b->element_count() == p.element_count(), op, ": grad/result size differs from its param (leaf ",
                    l, ": ", DimsStr(p.dimensions()), ")");
    }
    for (int64_t s = 0; s < d.nslots; ++s)
      for (const ffi::AnyBuffer* b : {&args[(2 + s) * d.n + l], &rets[(1 + s) * d.n + l]}) {
        JAX_MPS_CHECK(b->element_type() == ffi::F32, op, ": state slot ", s, " of leaf ", l, " must be float32");
        JAX_MPS_CHECK(b->element_count() == p.element_count(), op, ": state slot ", s, " of leaf ", l, " has ",
                      b->element_count(), " elements, param has ", p.element_count());
      }
  }
  return ffi::Error::Success();
}

// ---- optim_step_fwd: operands count, sqnorm, hp, params, grads, slots (see above) ----
template <class B>
ffi::Error OptimStep(typename B::Ctx ctx, ffi::AnyBuffer count, ffi::AnyBuffer sqnorm, ffi::AnyBuffer hp,
                     ffi::RemainingArgs arg_list, ffi::RemainingRets ret_list, int64_t rule, int64_t n,
                     int64_t nslots, int64_t write_updates, int64_t nesterov, int64_t amsgrad, int64_t centered,
                     int64_t norm_mode) {
  const char* op = "optim";
  for (int64_t flag : {write_updates, nesterov, amsgrad, centered})
    JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "write_updates/nesterov/amsgrad/centered", flag));
  OptimDesc d;
  d.rule = static_cast<OptRule>(rule);
  d.n = n;
  d.nslots = nslots;
  d.write_updates = write_updates != 0;
  d.nesterov = nesterov != 0; d.amsgrad = amsgrad != 0; d.centered = centered != 0;
  d.norm_mode = static_cast<NormMode>(norm_mode);
  Buffers args, rets;
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, arg_list, &args));
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, ret_list, &rets));
  JAX_MPS_RETURN_IF_ERROR(ValidateOptim(d, args.size(), rets.size()));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "count", count, ffi::S32));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "count", count, 1));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "sqnorm", sqnorm, ffi::F32));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "sqnorm", sqnorm, 1));
  JAX_MPS_RETURN_IF_ERROR(CheckOptimHp(op, hp));
  JAX_MPS_RETURN_IF_ERROR(CheckOptimLeaves(d, args, rets));
  return Guard(op, [&] { return B::OptimStep(ctx, d, count, sqnorm, hp, args, rets); });
}
template <class B>
auto OptimStepBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().RemainingArgs().RemainingRets()
      .template Attr<int64_t>("rule").template Attr<int64_t>("n").template Attr<int64_t>("nslots")
      .template Attr<int64_t>("write_updates").template Attr<int64_t>("nesterov").template Attr<int64_t>("amsgrad")
      .template Attr<int64_t>("centered").template Attr<int64_t>("norm_mode");
}

// ---- optim_sqnorm_fwd: operands hp (as optim_step_fwd's: grad_scale, rescale, clip_value are
// read), then grads. The squared global norm (f32 scalar) of one dtype group's unscaled, rescaled,
// value-clipped gradients (trees of several groups sum these before the step calls) ----
template <class B>
ffi::Error OptimSqNorm(typename B::Ctx ctx, ffi::AnyBuffer hp, ffi::RemainingArgs arg_list,
                       ffi::Result<ffi::AnyBuffer> out) {
  const char* op = "optim_sqnorm";
  Buffers grads;
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, arg_list, &grads));
  JAX_MPS_RETURN_IF_ERROR(CheckOptimHp(op, hp));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "result", *out, ffi::F32));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "result", *out, 1));
  for (size_t l = 0; l < grads.size(); ++l)
    JAX_MPS_CHECK(IsFloat(grads[l].element_type()) && grads[l].element_type() == grads[0].element_type(), op,
                  ": grads of one call must share one float dtype (leaf ", l, ")");
  return Guard(op, [&] { return B::OptimSqNorm(ctx, hp, grads, *out); });
}
template <class B>
auto OptimSqNormBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().RemainingArgs()
      .template Ret<ffi::AnyBuffer>();
}

// Gradient preprocessing constants from hp, neutral when an option is off (exact no-ops): grad_scale
// (1 / loss scale) folds into the rescale factor; the step sets nscale (clip by global norm).
// hp is host memory on the CPU and device memory in the CUDA kernels.
struct OptimPre {
  float rescale, lo, hi, nscale, l1, l2;
};

JAX_MPS_HDI OptimPre MakeOptimPre(const float* hp, bool regularize) {
  const float cv = hp[kClipValue];
  return OptimPre{hp[kGradScale] * hp[kRescale], -cv, cv, 1.f, regularize ? hp[kL1] : 0.f, regularize ? hp[kL2] : 0.f};
}

// Rescale, then clip by value as std::min(std::max(.)): a NaN gradient stays NaN (fminf / fmaxf
// would clip it to a bound).
JAX_MPS_HDI float RescaleClip(float g, const OptimPre& c) {
  const float v = g * c.rescale, l = v < c.lo ? c.lo : v;
  return c.hi < l ? c.hi : l;
}

// Factor that clip-by-global-norm applies to every gradient (optax.clip_by_global_norm), given the
// global norm (the norm mode attribute says whether it is on). A clip_norm of 0 (possible when traced)
// zeroes the gradients, as optax's. One rule for the CPU and the CUDA kernels.
JAX_MPS_HDI float ClipScale(float norm, float clip_norm) {
  return norm < clip_norm ? 1.f : clip_norm / norm;
}

}  // namespace jax_mps
