// Batch / instance / local-response normalization: descriptors, validation and targets.
#pragma once
#include <algorithm>
#include <cmath>

#include "runtime/activation.h"

namespace jax_mps {

// x viewed as (G, S, C): statistics per (g, c) over the S rows of group g. Batch norm: G = 1,
// S = everything but the channel axis. Instance norm: G = batch, S = spatial.
struct NormView {
  int64_t G = 1, S = 0, C = 0;
  float eps = 0.f;
  Act act = Act::kNone;  // fused activation (batch norm)
  float alpha = 0.f;
  bool from_output = false;  // backward: s is the output y (else x; z is recomputed)
  // Batch norm's y (forward) and y / dy (backward) may be the channel slice [off, off + C) of a
  // (..., ld) buffer: an in-place channel concatenation (mps.graph) has each branch write its part.
  int64_t ld = 0, off = 0;  // ld 0: dense rows of C
  int64_t yld() const { return ld ? ld : C; }
  int64_t rows() const { return G * S; }
  int64_t stats() const { return G * C; }
};

inline ffi::Error BatchNormView(const char* op, ffi::Span<const int64_t> d, NormView* v) {
  JAX_MPS_CHECK(d.size() >= 2, op, ": x must have rank >= 2 (..., C), got ", DimsStr(d));
  v->G = 1;
  v->C = d.back();
  v->S = Numel(d) / (v->C ? v->C : 1);
  for (size_t i = 0; i + 1 < d.size(); ++i)
    if (d[i] == 0) v->S = 0;
  JAX_MPS_CHECK(v->S > 0, op, ": x needs at least one element per channel, got ", DimsStr(d));
  return ffi::Error::Success();
}

inline ffi::Error InstanceNormView(ffi::Span<const int64_t> d, NormView* v) {
  JAX_MPS_CHECK(d.size() >= 3, "instance_norm: x must have rank >= 3 (N, ..., C), got ", DimsStr(d));
  v->G = d[0];
  v->C = d.back();
  v->S = 1;
  for (size_t i = 1; i + 1 < d.size(); ++i) v->S *= d[i];
  JAX_MPS_CHECK(v->S > 0, "instance_norm: x needs at least one spatial element, got ", DimsStr(d));
  return ffi::Error::Success();
}

inline ffi::Error CheckEpsilon(const char* op, float eps) {
  JAX_MPS_CHECK(std::isfinite(eps) && eps >= 0.f, op, ": epsilon must be finite and >= 0, got ", eps);
  return ffi::Error::Success();
}

// Local response normalization across the last axis (Caffe/torch definition).
struct LrnDesc {
  int64_t rows = 0, C = 0;  // x viewed as (rows, C)
  int64_t size = 5;
  int64_t half = 2;  // the window's reach, size / 2 clamped to C - 1 (a wider window sums the same)
  float alpha = 1e-4f, beta = 0.75f, k = 1.f;
};

inline ffi::Error MakeLrn(ffi::Span<const int64_t> d, int64_t size, float alpha, float beta, float k, LrnDesc* out) {
  JAX_MPS_CHECK(d.size() >= 1, "local_response_norm: x must have rank >= 1 (..., C)");
  LrnDesc& p = *out;
  p.C = d.back();
  p.rows = p.C ? Numel(d) / p.C : 0;
  p.size = size;
  p.alpha = alpha;
  p.beta = beta;
  p.k = k;
  JAX_MPS_CHECK(p.size >= 1 && p.size % 2 == 1, "local_response_norm: size must be a positive odd int, got ",
                p.size);
  p.half = std::min(p.size / 2, std::max<int64_t>(p.C - 1, 0));
  JAX_MPS_CHECK(std::isfinite(p.alpha) && p.alpha >= 0.f, "local_response_norm: alpha must be finite and >= 0, got ",
                p.alpha);
  JAX_MPS_CHECK(std::isfinite(p.beta), "local_response_norm: beta must be finite, got ", p.beta);
  JAX_MPS_CHECK(std::isfinite(p.k) && p.k > 0.f, "local_response_norm: k must be finite and > 0, got ", p.k);
  return ffi::Error::Success();
}

// Fills the epsilon / activation part of the view.
inline ffi::Error SetNormAttrs(const char* op, float eps, int64_t act, float alpha, int64_t from_output,
                               NormView* v) {
  JAX_MPS_RETURN_IF_ERROR(CheckEpsilon(op, eps));
  JAX_MPS_RETURN_IF_ERROR(CheckFusedAct(op, act, alpha, from_output));
  v->eps = eps;
  v->act = static_cast<Act>(act);
  v->alpha = alpha;
  v->from_output = from_output != 0;
  return ffi::Error::Success();
}

inline ffi::Error CheckChannels(const char* op, const NormView& v, std::initializer_list<const char*> names,
                                std::initializer_list<const ffi::AnyBuffer*> bufs) {
  auto n = names.begin();
  for (const ffi::AnyBuffer* b : bufs) JAX_MPS_RETURN_IF_ERROR(CheckFloatShape(op, *n++, *b, {v.C}));
  return ffi::Error::Success();
}

// `b` (named `name`) is x's shape but for its last axis, ld >= offset + C: batch norm reads or
// writes channels [offset, offset + C) of it. float32 only (a converted copy would not be in place).
inline ffi::Error SetSlice(const char* op, const char* name, const ffi::AnyBuffer& b, const ffi::AnyBuffer& x,
                           int64_t offset, NormView* v) {
  auto d = b.dimensions(), xd = x.dimensions();
  JAX_MPS_CHECK(b.element_type() == ffi::F32 && x.element_type() == ffi::F32, op,
                ": a channel slice needs float32 x and ", name);
  bool lead = d.size() == xd.size();
  for (size_t i = 0; lead && i + 1 < d.size(); ++i) lead = d[i] == xd[i];
  JAX_MPS_CHECK(lead, op, ": ", name, " must have x's shape but for the last axis, got ", DimsStr(d), " for x ",
                DimsStr(xd));
  JAX_MPS_CHECK(offset >= 0 && offset + v->C <= d.back(), op, ": channels [", offset, ", ", offset + v->C,
                ") must lie within ", name, "'s ", d.back());
  v->ld = d.back();
  v->off = offset;
  return ffi::Error::Success();
}

// ---- batch_norm_fwd (training): y = act((x - mean) * rstd * scale + bias); mean, biased var, rstd (C,) ----
// batch_norm_fwd_slice writes y into channels [offset, offset + C) of a (..., Ctot) result and
// leaves the rest unwritten; batch_norm_fwd_into does so in `dst`, which the result aliases
// (input_output_aliases), so that a chain of calls fills one concatenated buffer.
template <class B>
ffi::Error BatchNormFwdAt(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                          ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                          ffi::Result<ffi::AnyBuffer> var, ffi::Result<ffi::AnyBuffer> rstd, float eps, int64_t act,
                          float alpha, int64_t offset) {
  const char* op = "batch_norm";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(BatchNormView(op, x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(SetNormAttrs(op, eps, act, alpha, 0, &v));
  JAX_MPS_RETURN_IF_ERROR(CheckChannels(op, v, {"scale", "bias", "result mean", "result var", "result rstd"},
                                        {&scale, &bias, &*mean, &*var, &*rstd}));
  if (offset < 0)
    JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", *y, x));
  else
    JAX_MPS_RETURN_IF_ERROR(SetSlice(op, "y", *y, x, offset, &v));
  return Guard(op, [&] { return B::BatchNormFwd(ctx, v, x, scale, bias, *y, *mean, *var, *rstd); });
}
template <class B>
ffi::Error BatchNormFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                        ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                        ffi::Result<ffi::AnyBuffer> var, ffi::Result<ffi::AnyBuffer> rstd, float eps, int64_t act,
                        float alpha) {
  return BatchNormFwdAt<B>(ctx, x, scale, bias, y, mean, var, rstd, eps, act, alpha, -1);
}
template <class B>
auto BatchNormFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Attr<float>("epsilon")
      .template Attr<int64_t>("act").template Attr<float>("alpha");
}
template <class B>
ffi::Error BatchNormFwdSlice(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                             ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                             ffi::Result<ffi::AnyBuffer> var, ffi::Result<ffi::AnyBuffer> rstd, float eps,
                             int64_t act, float alpha, int64_t offset) {
  JAX_MPS_CHECK(offset >= 0, "batch_norm: channel offset must be >= 0, got ", offset);
  return BatchNormFwdAt<B>(ctx, x, scale, bias, y, mean, var, rstd, eps, act, alpha, offset);
}
template <class B>
auto BatchNormFwdSliceBinding() {
  return BatchNormFwdBinding<B>().template Attr<int64_t>("offset");
}
template <class B>
ffi::Error BatchNormFwdInto(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                            ffi::AnyBuffer dst, ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                            ffi::Result<ffi::AnyBuffer> var, ffi::Result<ffi::AnyBuffer> rstd, float eps,
                            int64_t act, float alpha, int64_t offset) {
  const char* op = "batch_norm";
  JAX_MPS_CHECK(dst.element_type() == y->element_type() && SameDims(dst.dimensions(), y->dimensions()), op,
                ": dst must be the result's shape and dtype, got ", DimsStr(dst.dimensions()), " for ",
                DimsStr(y->dimensions()));
  // Aliased, XLA hands over dst's memory as the result's (copying dst first where it is still read).
  if (dst.untyped_data() != y->untyped_data())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "batch_norm: dst and the result must be aliased "
                                                        "(input_output_aliases={3: 0})");
  return BatchNormFwdSlice<B>(ctx, x, scale, bias, y, mean, var, rstd, eps, act, alpha, offset);
}
template <class B>
auto BatchNormFwdIntoBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<float>("epsilon").template Attr<int64_t>("act").template Attr<float>("alpha")
      .template Attr<int64_t>("offset");
}

// ---- batch_norm_bwd: dx, dscale, dbias from the saved stats, s (y or x), dy and the mean/var cotangents ----
// batch_norm_bwd_slice: dy (and s = y when from_output) are channels [offset, offset + C) of
// (..., Ctot) buffers: the concatenation's cotangent and output.
template <class B>
ffi::Error BatchNormBwdAt(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                          ffi::AnyBuffer mean, ffi::AnyBuffer rstd, ffi::AnyBuffer s, ffi::AnyBuffer dy,
                          ffi::AnyBuffer dmean, ffi::AnyBuffer dvar, ffi::Result<ffi::AnyBuffer> dx,
                          ffi::Result<ffi::AnyBuffer> dscale, ffi::Result<ffi::AnyBuffer> dbias, int64_t act,
                          float alpha, int64_t from_output, int64_t offset) {
  const char* op = "batch_norm_bwd";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(BatchNormView(op, x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(SetNormAttrs(op, 0.f, act, alpha, from_output, &v));
  JAX_MPS_RETURN_IF_ERROR(CheckChannels(op, v, {"scale", "bias", "mean", "rstd", "dmean", "dvar", "result dscale", "result dbias"},
                                        {&scale, &bias, &mean, &rstd, &dmean, &dvar, &*dscale, &*dbias}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, x));
  if (offset < 0) {
    JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", s, x));
    JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dy", dy, x));
  } else {
    JAX_MPS_RETURN_IF_ERROR(SetSlice(op, "dy", dy, x, offset, &v));
    if (v.from_output) {
      JAX_MPS_CHECK(SameDims(s.dimensions(), dy.dimensions()) && s.element_type() == dy.element_type(), op,
                    ": y must be dy's shape and dtype, got ", DimsStr(s.dimensions()), " for ",
                    DimsStr(dy.dimensions()));
    } else {
      JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "x (as s)", s, x));  // z is recomputed from x
    }
  }
  return Guard(op, [&] {
    return B::BatchNormBwd(ctx, v, x, scale, bias, mean, rstd, s, dy, dmean, dvar, *dx, *dscale, *dbias);
  });
}
template <class B>
ffi::Error BatchNormBwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                        ffi::AnyBuffer mean, ffi::AnyBuffer rstd, ffi::AnyBuffer s, ffi::AnyBuffer dy,
                        ffi::AnyBuffer dmean, ffi::AnyBuffer dvar, ffi::Result<ffi::AnyBuffer> dx,
                        ffi::Result<ffi::AnyBuffer> dscale, ffi::Result<ffi::AnyBuffer> dbias, int64_t act,
                        float alpha, int64_t from_output) {
  return BatchNormBwdAt<B>(ctx, x, scale, bias, mean, rstd, s, dy, dmean, dvar, dx, dscale, dbias, act, alpha,
                           from_output, -1);
}
template <class B>
auto BatchNormBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Attr<int64_t>("act").template Attr<float>("alpha")
      .template Attr<int64_t>("from_output");
}
template <class B>
ffi::Error BatchNormBwdSlice(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                             ffi::AnyBuffer mean, ffi::AnyBuffer rstd, ffi::AnyBuffer s, ffi::AnyBuffer dy,
                             ffi::AnyBuffer dmean, ffi::AnyBuffer dvar, ffi::Result<ffi::AnyBuffer> dx,
                             ffi::Result<ffi::AnyBuffer> dscale, ffi::Result<ffi::AnyBuffer> dbias, int64_t act,
                             float alpha, int64_t from_output, int64_t offset) {
  JAX_MPS_CHECK(offset >= 0, "batch_norm_bwd: channel offset must be >= 0, got ", offset);
  return BatchNormBwdAt<B>(ctx, x, scale, bias, mean, rstd, s, dy, dmean, dvar, dx, dscale, dbias, act, alpha,
                           from_output, offset);
}
template <class B>
auto BatchNormBwdSliceBinding() {
  return BatchNormBwdBinding<B>().template Attr<int64_t>("offset");
}

// ---- batch_norm_inference_fwd: y = act((x - mean) / sqrt(var + eps) * scale + bias) ----
template <class B>
ffi::Error BatchNormInferenceFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                                 ffi::AnyBuffer mean, ffi::AnyBuffer var, ffi::Result<ffi::AnyBuffer> y, float eps,
                                 int64_t act, float alpha) {
  const char* op = "batch_norm_inference";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(BatchNormView(op, x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(SetNormAttrs(op, eps, act, alpha, 0, &v));
  JAX_MPS_RETURN_IF_ERROR(CheckChannels(op, v, {"scale", "bias", "mean", "var"}, {&scale, &bias, &mean, &var}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", *y, x));
  return Guard(op, [&] { return B::BatchNormInferenceFwd(ctx, v, x, scale, bias, mean, var, *y); });
}
template <class B>
auto BatchNormInferenceFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Attr<float>("epsilon").template Attr<int64_t>("act")
      .template Attr<float>("alpha");
}

// ---- batch_norm_inference_bwd: dx and the gradients of scale, bias, mean, var ----
template <class B>
ffi::Error BatchNormInferenceBwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                                 ffi::AnyBuffer mean, ffi::AnyBuffer var, ffi::AnyBuffer s, ffi::AnyBuffer dy,
                                 ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dscale,
                                 ffi::Result<ffi::AnyBuffer> dbias, ffi::Result<ffi::AnyBuffer> dmean,
                                 ffi::Result<ffi::AnyBuffer> dvar, float eps, int64_t act, float alpha,
                                 int64_t from_output) {
  const char* op = "batch_norm_inference_bwd";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(BatchNormView(op, x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(SetNormAttrs(op, eps, act, alpha, from_output, &v));
  JAX_MPS_RETURN_IF_ERROR(CheckChannels(op, v, {"scale", "bias", "mean", "var", "result dscale", "result dbias", "result dmean", "result dvar"},
                                        {&scale, &bias, &mean, &var, &*dscale, &*dbias, &*dmean, &*dvar}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", s, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dy", dy, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, x));
  return Guard(op, [&] {
    return B::BatchNormInferenceBwd(ctx, v, x, scale, bias, mean, var, s, dy, *dx, *dscale, *dbias, *dmean, *dvar);
  });
}
template <class B>
auto BatchNormInferenceBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Attr<float>("epsilon").template Attr<int64_t>("act")
      .template Attr<float>("alpha").template Attr<int64_t>("from_output");
}

// ---- instance_norm_fwd: y, mean and rstd (N, C) ----
template <class B>
ffi::Error InstanceNormFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                           ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                           ffi::Result<ffi::AnyBuffer> rstd, float eps) {
  const char* op = "instance_norm";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(InstanceNormView(x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(SetNormAttrs(op, eps, 0, 0.f, 0, &v));
  JAX_MPS_RETURN_IF_ERROR(CheckChannels(op, v, {"scale", "bias"}, {&scale, &bias}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", *y, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatShape(op, "result mean", *mean, {v.G, v.C}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatShape(op, "result rstd", *rstd, {v.G, v.C}));
  return Guard(op, [&] { return B::InstanceNormFwd(ctx, v, x, scale, bias, *y, *mean, *rstd); });
}
template <class B>
auto InstanceNormFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Attr<float>("epsilon");
}

// ---- instance_norm_bwd: dx, dscale, dbias ----
template <class B>
ffi::Error InstanceNormBwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer mean,
                           ffi::AnyBuffer rstd, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx,
                           ffi::Result<ffi::AnyBuffer> dscale, ffi::Result<ffi::AnyBuffer> dbias) {
  const char* op = "instance_norm_bwd";
  NormView v;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(InstanceNormView(x.dimensions(), &v));
  JAX_MPS_RETURN_IF_ERROR(CheckChannels(op, v, {"scale", "result dscale", "result dbias"}, {&scale, &*dscale, &*dbias}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatShape(op, "mean", mean, {v.G, v.C}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatShape(op, "rstd", rstd, {v.G, v.C}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dy", dy, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, x));
  return Guard(op, [&] { return B::InstanceNormBwd(ctx, v, x, scale, mean, rstd, dy, *dx, *dscale, *dbias); });
}
template <class B>
auto InstanceNormBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>();
}

// ---- local_response_norm_fwd / _bwd ----
template <class B>
ffi::Error LrnFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t size, float alpha,
                  float beta, float k) {
  const char* op = "local_response_norm";
  LrnDesc p;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(MakeLrn(x.dimensions(), size, alpha, beta, k, &p));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", *y, x));
  return Guard(op, [&] { return B::LrnFwd(ctx, p, x, *y); });
}
template <class B>
auto LrnFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("size").template Attr<float>("alpha").template Attr<float>("beta")
      .template Attr<float>("k");
}

template <class B>
ffi::Error LrnBwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx,
                  int64_t size, float alpha, float beta, float k) {
  const char* op = "local_response_norm_bwd";
  LrnDesc p;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(MakeLrn(x.dimensions(), size, alpha, beta, k, &p));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dy", dy, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, x));
  return Guard(op, [&] { return B::LrnBwd(ctx, p, x, dy, *dx); });
}
template <class B>
auto LrnBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Attr<int64_t>("size").template Attr<float>("alpha")
      .template Attr<float>("beta").template Attr<float>("k");
}

}  // namespace jax_mps
