// Activation ("neuron") codes shared by the standalone activation ops and every op with a fused
// activation, the one "gradient from the output" rule, and the activation family's targets
// (activation, prelu, softmax). Python reads the codes from the extension (runtime/export.h).
//
// Numerical rules every backend's kernels follow (tests/test_numerics.py checks them):
// - Values and gradients are jax.nn's, in float32 to float32 accuracy over the whole float32
//   range against jax.nn in float64 (relative 1e-6 where not tiny, else absolute 1e-7 max(1, |x|)),
//   never with the wrong sign: softplus = max(x, 0) + log1p(exp(-|x|)) (never 1 + exp), tanh and
//   sigmoid from exp(-|x|), elu with an expm1 that does not cancel near 0, gelu from erfc (not
//   1 + erf) and gelu_tanh as x * sigmoid(2u). Library eltwise ops that miss this are not used.
// - NaN in gives NaN out, for every activation (a max/min/clip must not drop it); +-inf give
//   jax.nn's values: relu/leaky_relu/elu/softplus/gelu(+inf) = inf, sigmoid/tanh/hard_sigmoid
//   saturate, softsign(+-inf) = NaN, gelu(-inf) = gelu_tanh(-inf) = NaN (-inf * 0).
// - Gradients: relu, relu6, hard_sigmoid and leaky_relu are selects as in jax (relu'(0) = 0,
//   relu6' = 0 at 0 and 6, leaky_relu'(0) = 1, leaky_relu'(NaN) = alpha, relu'(NaN) = 0, and a NaN
//   dy where the select picks 0 gives 0); the others are dy * f'(x) (NaN at NaN); softsign' and
//   gelu' are NaN at +-inf (jax's inf * 0); sigmoid', tanh', elu'(-inf) are 0.
// - Fused activations (conv, conv_transpose, dense, batch norm) follow the same rules.
#pragma once
#include <cstdint>

#include "runtime/backend.h"

namespace jax_mps {

enum class Act : int64_t {
  kNone = 0,
  kRelu = 1,
  kRelu6 = 2,
  kLeakyRelu = 3,  // alpha
  kElu = 4,        // alpha
  kSigmoid = 5,
  kHardSigmoid = 6,  // relu6(x + 3) / 6, as jax.nn.hard_sigmoid
  kTanh = 7,
  kSoftplus = 8,
  kSoftsign = 9,
  kGelu = 10,      // exact erf form
  kGeluTanh = 11,  // tanh approximation
  kCount = 12,
};

inline bool ValidAct(int64_t code) { return code >= 0 && code < static_cast<int64_t>(Act::kCount); }

// Activations whose derivative is a function of the output y alone: fused ops then keep only y
// for the backward pass instead of the pre-activation z (leaky_relu / elu with alpha >= 0 are
// monotone, so the sign of y gives the branch).
inline bool ActGradFromOutput(Act a, float alpha) {
  switch (a) {
    case Act::kNone: case Act::kRelu: case Act::kRelu6: case Act::kSigmoid: case Act::kTanh:
      return true;
    case Act::kLeakyRelu:
      return alpha > 0.f;  // alpha = 0 maps x < 0 and x = 0 to the same y, but jax's gradients differ
    case Act::kElu:
      return alpha >= 0.f;
    default:
      return false;
  }
}

inline ffi::Error CheckAct(const char* op, int64_t act) {
  JAX_MPS_CHECK(ValidAct(act), op, ": unknown activation code ", act);
  return ffi::Error::Success();
}

// A fused activation: a valid code, and from_output only where ActGradFromOutput allows it.
inline ffi::Error CheckFusedAct(const char* op, int64_t act, float alpha, int64_t from_output) {
  JAX_MPS_RETURN_IF_ERROR(CheckAct(op, act));
  JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "from_output", from_output));
  JAX_MPS_CHECK(!from_output || ActGradFromOutput(static_cast<Act>(act), alpha), op, ": activation ", act,
                " cannot be differentiated from its output");
  return ffi::Error::Success();
}

// ---- activation_fwd / activation_bwd: y = act(x), dx = dy * act'(x) ----

template <class B>
ffi::Error ActivationFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t act,
                         float alpha) {
  const char* op = "activation_fwd";
  JAX_MPS_RETURN_IF_ERROR(CheckAct(op, act));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", *y, x));
  return Guard(op, [&] { return B::ActivationFwd(ctx, x, *y, static_cast<Act>(act), alpha); });
}
template <class B>
auto ActivationFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("act").template Attr<float>("alpha");
}

template <class B>
ffi::Error ActivationBwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx,
                         int64_t act, float alpha) {
  const char* op = "activation_bwd";
  JAX_MPS_RETURN_IF_ERROR(CheckAct(op, act));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dy", dy, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, x));
  return Guard(op, [&] { return B::ActivationBwd(ctx, x, dy, *dx, static_cast<Act>(act), alpha); });
}
template <class B>
auto ActivationBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Attr<int64_t>("act").template Attr<float>("alpha");
}

// ---- prelu: y = x > 0 ? x : alpha[c] * x, slope per channel of the last axis ----

struct PreluDesc {
  int64_t rows = 0, c = 0;
};

inline ffi::Error MakePrelu(const char* op, const ffi::AnyBuffer& x, const ffi::AnyBuffer& alpha, PreluDesc* d) {
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_CHECK(x.dimensions().size() >= 1, op, ": x must have rank >= 1");
  d->c = x.dimensions().back();
  d->rows = d->c ? static_cast<int64_t>(x.element_count()) / d->c : 0;
  return CheckFloatShape(op, "alpha", alpha, {d->c});
}

template <class B>
ffi::Error PreluFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer alpha, ffi::Result<ffi::AnyBuffer> y) {
  const char* op = "prelu_fwd";
  PreluDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePrelu(op, x, alpha, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", *y, x));
  return Guard(op, [&] { return B::PreluFwd(ctx, d, x, alpha, *y); });
}
template <class B>
auto PreluFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>();
}

template <class B>
ffi::Error PreluBwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer alpha, ffi::AnyBuffer dy,
                    ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dalpha) {
  const char* op = "prelu_bwd";
  PreluDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakePrelu(op, x, alpha, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dy", dy, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dalpha", *dalpha, alpha));
  return Guard(op, [&] { return B::PreluBwd(ctx, d, x, alpha, dy, *dx, *dalpha); });
}
template <class B>
auto PreluBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>();
}

// ---- softmax / log-softmax over `axis`: x viewed as (outer, axis, inner) ----

struct SoftmaxDesc {
  int64_t outer = 1, axis = 0, inner = 1;
  bool log = false;
};

inline ffi::Error MakeSoftmax(const char* op, ffi::Span<const int64_t> d, int64_t axis, int64_t log,
                              SoftmaxDesc* s) {
  JAX_MPS_CHECK(axis >= 0 && axis < static_cast<int64_t>(d.size()), op, ": axis ", axis,
                " out of range for shape ", DimsStr(d));
  JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "log", log));
  s->outer = 1;
  s->inner = 1;
  for (int64_t i = 0; i < axis; ++i) s->outer *= d[i];
  s->axis = d[axis];
  for (size_t i = axis + 1; i < d.size(); ++i) s->inner *= d[i];
  s->log = log != 0;
  return ffi::Error::Success();
}

template <class B>
ffi::Error SoftmaxFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t axis,
                      int64_t log) {
  const char* op = "softmax_fwd";
  SoftmaxDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(MakeSoftmax(op, x.dimensions(), axis, log, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", *y, x));
  return Guard(op, [&] { return B::SoftmaxFwd(ctx, d, x, *y); });
}
template <class B>
auto SoftmaxFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("axis").template Attr<int64_t>("log");
}

template <class B>
ffi::Error SoftmaxBwd(typename B::Ctx ctx, ffi::AnyBuffer y, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx,
                      int64_t axis, int64_t log) {
  const char* op = "softmax_bwd";
  SoftmaxDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "y", y));
  JAX_MPS_RETURN_IF_ERROR(MakeSoftmax(op, y.dimensions(), axis, log, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dy", dy, y));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, y));
  return Guard(op, [&] { return B::SoftmaxBwd(ctx, d, y, dy, *dx); });
}
template <class B>
auto SoftmaxBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Attr<int64_t>("axis").template Attr<int64_t>("log");
}

}  // namespace jax_mps
