// Backend-neutral description of one fused optimizer step (mps.optim) and its validation.
//
// One call updates n leaves of one dtype group. Operands, in order:
//   lr (f32 scalar), count (s32 scalar, the step count after increment), sqnorm (f32 scalar,
//   the squared global gradient norm when norm_mode == kExternal), grad_scale (f32 scalar: 1, or
//   1 / loss scale for loss-scaled gradients, so low-precision gradients are unscaled in the
//   kernel, never copied to float32 first), params[n], grads[n], slots[nslots][n] (float32
//   optimizer state).
// Results: out[n] (new params, or optax updates when write_updates), slots[nslots][n].
// Per element: g * (grad_scale * rescale) -> clip by value -> clip by global norm -> coupled
// L1/L2 -> rule.
#pragma once
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "runtime/backend.h"

namespace jax_mps {

enum class OptRule : int64_t { kSgd = 0, kAdam = 1, kRmsprop = 2 };
// kInternal: the call computes the norm of its own gradients (the tree is one dtype group);
// kExternal: the norm of the whole tree arrives in `sqnorm` (several groups, see optim_sqnorm).
enum class NormMode : int64_t { kNone = 0, kInternal = 1, kExternal = 2 };

struct OptimDesc {
  OptRule rule = OptRule::kSgd;
  int64_t n = 0;
  int64_t nslots = 0;
  bool write_updates = false;
  // Rule hyperparameters (sgd: momentum, nesterov; adam: b1, b2, eps, weight_decay, amsgrad;
  // rmsprop: decay (in b2), eps, momentum, centered).
  // ob1 = 1 - b1 and ob2 = 1 - b2 are computed in Python in double and rounded once, as optax does.
  float b1 = 0.f, b2 = 0.f, ob1 = 1.f, ob2 = 1.f, eps = 0.f, momentum = 0.f, weight_decay = 0.f;
  bool nesterov = false, amsgrad = false, centered = false;
  // Gradient preprocessing, shared by every rule.
  float rescale = 1.f, clip_value = 0.f, clip_norm = 0.f, l1 = 0.f, l2 = 0.f;
  NormMode norm_mode = NormMode::kNone;
};

// Slots per rule: sgd [trace]; adam [mu, nu, nu_max?]; rmsprop [nu, mu?, momentum?].
inline int64_t OptimSlots(const OptimDesc& d) {
  switch (d.rule) {
    case OptRule::kSgd: return d.momentum != 0.f ? 1 : 0;
    case OptRule::kAdam: return d.amsgrad ? 3 : 2;
    case OptRule::kRmsprop: return 1 + (d.centered ? 1 : 0) + (d.momentum != 0.f ? 1 : 0);
  }
  return -1;
}

// Gradient preprocessing and decay amounts must be >= 0 (NaN fails too).
inline ffi::Error CheckNonNegative(const char* op, std::initializer_list<std::pair<const char*, float>> values) {
  for (const auto& [name, v] : values) JAX_MPS_CHECK(v >= 0.f, op, ": ", name, " must be >= 0, got ", v);
  return ffi::Error::Success();
}

inline ffi::Error ValidateOptim(const OptimDesc& d, size_t nargs, size_t nrets) {
  JAX_MPS_CHECK(d.rule == OptRule::kSgd || d.rule == OptRule::kAdam || d.rule == OptRule::kRmsprop,
                "optim: unknown rule ", static_cast<int64_t>(d.rule));
  JAX_MPS_CHECK(d.n >= 0, "optim: n must be >= 0, got ", d.n);
  JAX_MPS_CHECK(d.nslots == OptimSlots(d), "optim: rule ", static_cast<int64_t>(d.rule), " needs ",
                OptimSlots(d), " state slots, got ", d.nslots);
  JAX_MPS_CHECK(nargs == static_cast<size_t>((2 + d.nslots) * d.n), "optim: expected ",
                (2 + d.nslots) * d.n, " tensor operands (params, grads, slots), got ", nargs);
  JAX_MPS_CHECK(nrets == static_cast<size_t>((1 + d.nslots) * d.n), "optim: expected ",
                (1 + d.nslots) * d.n, " results, got ", nrets);
  JAX_MPS_CHECK(d.eps >= 0.f, "optim: eps must be >= 0, got ", d.eps);
  JAX_MPS_RETURN_IF_ERROR(CheckNonNegative("optim", {{"rescale", d.rescale}, {"clip_value", d.clip_value},
                                                     {"clip_norm", d.clip_norm}, {"l1", d.l1}, {"l2", d.l2},
                                                     {"weight_decay", d.weight_decay}}));
  JAX_MPS_CHECK(d.norm_mode == NormMode::kNone || d.norm_mode == NormMode::kInternal ||
                    d.norm_mode == NormMode::kExternal,
                "optim: unknown norm_mode ", static_cast<int64_t>(d.norm_mode));
  JAX_MPS_CHECK((d.norm_mode != NormMode::kNone) == (d.clip_norm > 0.f),
                "optim: norm_mode and clip_norm disagree");
  return ffi::Error::Success();
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

// ---- optim_step_fwd: operands lr, count, sqnorm, grad_scale, params, grads, slots (see above) ----
template <class B>
ffi::Error OptimStep(typename B::Ctx ctx, ffi::AnyBuffer lr, ffi::AnyBuffer count, ffi::AnyBuffer sqnorm,
                     ffi::AnyBuffer grad_scale, ffi::RemainingArgs arg_list, ffi::RemainingRets ret_list,
                     int64_t rule, int64_t n, int64_t nslots, int64_t write_updates, float b1, float b2,
                     float ob1, float ob2, float eps, float momentum, float weight_decay, int64_t nesterov,
                     int64_t amsgrad, int64_t centered, float rescale, float clip_value, float clip_norm,
                     int64_t norm_mode, float l1, float l2) {
  const char* op = "optim";
  for (int64_t flag : {write_updates, nesterov, amsgrad, centered})
    JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "write_updates/nesterov/amsgrad/centered", flag));
  OptimDesc d;
  d.rule = static_cast<OptRule>(rule);
  d.n = n;
  d.nslots = nslots;
  d.write_updates = write_updates != 0;
  d.b1 = b1; d.b2 = b2; d.ob1 = ob1; d.ob2 = ob2; d.eps = eps; d.momentum = momentum;
  d.weight_decay = weight_decay;
  d.nesterov = nesterov != 0; d.amsgrad = amsgrad != 0; d.centered = centered != 0;
  d.rescale = rescale; d.clip_value = clip_value; d.clip_norm = clip_norm; d.l1 = l1; d.l2 = l2;
  d.norm_mode = static_cast<NormMode>(norm_mode);
  Buffers args, rets;
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, arg_list, &args));
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, ret_list, &rets));
  JAX_MPS_RETURN_IF_ERROR(ValidateOptim(d, args.size(), rets.size()));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "lr", lr, ffi::F32));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "count", count, ffi::S32));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "sqnorm", sqnorm, ffi::F32));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "grad_scale", grad_scale, ffi::F32));
  JAX_MPS_CHECK(lr.element_count() == 1 && count.element_count() == 1 && sqnorm.element_count() == 1 &&
                    grad_scale.element_count() == 1,
                op, ": lr, count, sqnorm and grad_scale must be scalars");
  JAX_MPS_RETURN_IF_ERROR(CheckOptimLeaves(d, args, rets));
  return Guard(op, [&] { return B::OptimStep(ctx, d, lr, count, sqnorm, grad_scale, args, rets); });
}
template <class B>
auto OptimStepBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().RemainingArgs().RemainingRets()
      .template Attr<int64_t>("rule")
      .template Attr<int64_t>("n").template Attr<int64_t>("nslots").template Attr<int64_t>("write_updates")
      .template Attr<float>("b1").template Attr<float>("b2").template Attr<float>("ob1").template Attr<float>("ob2")
      .template Attr<float>("eps").template Attr<float>("momentum").template Attr<float>("weight_decay")
      .template Attr<int64_t>("nesterov").template Attr<int64_t>("amsgrad").template Attr<int64_t>("centered")
      .template Attr<float>("rescale").template Attr<float>("clip_value").template Attr<float>("clip_norm")
      .template Attr<int64_t>("norm_mode").template Attr<float>("l1").template Attr<float>("l2");
}

// ---- optim_sqnorm_fwd: operands grad_scale (f32 scalar, as optim_step_fwd's), then grads. The
// squared global norm (f32 scalar) of one dtype group's unscaled, rescaled, value-clipped
// gradients (trees of several groups sum these before the step calls) ----
struct SqNormDesc {
  float rescale = 1.f, clip_value = 0.f;
};

template <class B>
ffi::Error OptimSqNorm(typename B::Ctx ctx, ffi::AnyBuffer grad_scale, ffi::RemainingArgs arg_list,
                       ffi::Result<ffi::AnyBuffer> out, float rescale, float clip_value) {
  const char* op = "optim_sqnorm";
  Buffers grads;
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, arg_list, &grads));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "grad_scale", grad_scale, ffi::F32));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "grad_scale", grad_scale, 1));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "result", *out, ffi::F32));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "result", *out, 1));
  JAX_MPS_RETURN_IF_ERROR(CheckNonNegative(op, {{"rescale", rescale}, {"clip_value", clip_value}}));
  for (size_t l = 0; l < grads.size(); ++l)
    JAX_MPS_CHECK(IsFloat(grads[l].element_type()) && grads[l].element_type() == grads[0].element_type(), op,
                  ": grads of one call must share one float dtype (leaf ", l, ")");
  return Guard(op, [&] {
    return B::OptimSqNorm(ctx, SqNormDesc{rescale, clip_value}, grad_scale, grads, *out);
  });
}
template <class B>
auto OptimSqNormBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().RemainingArgs()
      .template Ret<ffi::AnyBuffer>().template Attr<float>("rescale").template Attr<float>("clip_value");
}

// Factor that clip-by-global-norm applies to every gradient (optax.clip_by_global_norm).
inline float NormScale(double sqnorm, float clip_norm) {
  if (clip_norm <= 0.f) return 1.f;
  float norm = static_cast<float>(std::sqrt(sqnorm));
  return norm < clip_norm ? 1.f : clip_norm / norm;
}

}  // namespace jax_mps
