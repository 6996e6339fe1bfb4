// Convolution, transposed convolution and dense: descriptors, validation and targets.
// Layouts: x (N, H, W, C) (1-D convs use H = 1), w (KH, KW, Cin/groups, Cout), y (N, OH, OW, Cout).
// Padding is the lax.conv_general_dilated / lax.conv_transpose (lo, hi) pair per spatial dim.
// Three targets per op: fwd (bias + activation fused), bwd_data (dx) and bwd_weights (dw, db), split
// so XLA drops the dx call when the input needs no gradient. The backward targets take `s`, the
// saved output y (from_output) or pre-activation z (ignored when act is none).
#pragma once
#include <cstdint>

#include "runtime/activation.h"

namespace jax_mps {

// What conv and dense share: the fused epilogue and the precision request.
struct FusedDesc {
  Act act = Act::kNone;
  float alpha = 0.f;
  bool has_bias = false;
  bool from_output = false;  // backward: s is the output y (else the pre-activation z)
  // accumulate="float16" (1) or float32 (0), for float16 operands. A backend may honour it (CUDA)
  // or always accumulate in float32 (the CPU, as API.md allows).
  bool f16_accumulate = false;
  // float32 operands: TF32 allowed (kDefault) or full float32 (runtime/backend.h). The CPU ignores it.
  Precision precision = Precision::kDefault;
};

inline ffi::Error MakeFused(const char* op, int64_t act, float alpha, int64_t has_bias, int64_t from_output,
                            int64_t accumulate, int64_t precision, FusedDesc* f) {
  JAX_MPS_RETURN_IF_ERROR(CheckFusedAct(op, act, alpha, from_output));
  JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "has_bias", has_bias));
  JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "accumulate", accumulate));
  JAX_MPS_RETURN_IF_ERROR(CheckPrecision(op, precision));
  f->act = static_cast<Act>(act);
  f->alpha = alpha;
  f->has_bias = has_bias != 0;
  f->from_output = from_output != 0;
  f->f16_accumulate = accumulate != 0;
  f->precision = static_cast<Precision>(precision);
  return ffi::Error::Success();
}

struct ConvDesc : FusedDesc {
  int64_t n = 0, ih = 0, iw = 0, ic = 0;  // input
  int64_t oh = 0, ow = 0, oc = 0;         // output
  int64_t kh = 0, kw = 0, groups = 1;
  int64_t sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t plh = 0, plw = 0, phh = 0, phw = 0;  // lax (lo, hi) padding
  bool transpose = false;

  void AddTo(PlanKey& key) const {
    for (int64_t v : {n, ih, iw, ic, oh, ow, oc, kh, kw, groups, sh, sw, dh, dw, plh, plw, phh, phw})
      key.add(v);
    key.add(int64_t(transpose));
  }
};

// Output size along one dim for a forward conv (floor division, as lax) and a transposed conv
// (lax.conv_transpose: conv over the stride-dilated input with the given padding).
inline int64_t ConvOut(int64_t i, int64_t k, int64_t s, int64_t d, int64_t lo, int64_t hi) {
  int64_t span = i + lo + hi - ((k - 1) * d + 1);
  return span < 0 ? 0 : span / s + 1;
}
// The stride-dilated input has (i - 1) * s + 1 rows, none when i = 0 (as lax.conv_transpose).
inline int64_t ConvTransposeOut(int64_t i, int64_t k, int64_t s, int64_t d, int64_t lo, int64_t hi) {
  int64_t span = (i == 0 ? 0 : (i - 1) * s + 1) + lo + hi - ((k - 1) * d + 1);
  return span < 0 ? 0 : span + 1;
}

// Fills `c` from x/w/y dims and attributes; checks every consistency rule.
inline ffi::Error MakeConvDesc(const char* op, ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                               ffi::Span<const int64_t> y, ffi::Span<const int64_t> stride,
                               ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                               ffi::Span<const int64_t> dilation, int64_t groups, bool transpose,
                               ConvDesc* c) {
  JAX_MPS_CHECK(x.size() == 4 && w.size() == 4 && y.size() == 4, op,
                ": x, w, y must have rank 4 (N, H, W, C) / (KH, KW, I, O), got ", DimsStr(x), ", ",
                DimsStr(w), ", ", DimsStr(y));
  JAX_MPS_CHECK(stride.size() == 2 && pad_lo.size() == 2 && pad_hi.size() == 2 && dilation.size() == 2,
                op, ": stride, pad_lo, pad_hi, dilation must each have 2 entries");
  c->n = x[0]; c->ih = x[1]; c->iw = x[2]; c->ic = x[3];
  c->kh = w[0]; c->kw = w[1];
  c->oh = y[1]; c->ow = y[2]; c->oc = y[3];
  c->sh = stride[0]; c->sw = stride[1]; c->dh = dilation[0]; c->dw = dilation[1];
  c->plh = pad_lo[0]; c->plw = pad_lo[1]; c->phh = pad_hi[0]; c->phw = pad_hi[1];
  c->groups = groups;
  c->transpose = transpose;
  JAX_MPS_CHECK(c->sh >= 1 && c->sw >= 1 && c->dh >= 1 && c->dw >= 1, op, ": stride and dilation must be >= 1");
  JAX_MPS_CHECK(c->plh >= 0 && c->plw >= 0 && c->phh >= 0 && c->phw >= 0, op, ": padding must be >= 0");
  JAX_MPS_CHECK(groups >= 1 && c->ic % groups == 0 && c->oc % groups == 0, op, ": groups=", groups,
                " must divide Cin=", c->ic, " and Cout=", c->oc);
  JAX_MPS_CHECK(c->kh >= 1 && c->kw >= 1, op, ": kernel dims must be >= 1, got ", DimsStr(w));
  JAX_MPS_CHECK(w[2] == c->ic / groups && w[3] == c->oc, op, ": w must have shape (", c->kh, ", ", c->kw,
                ", ", c->ic / groups, ", ", c->oc, "), got ", DimsStr(w));
  JAX_MPS_CHECK(y[0] == c->n, op, ": y batch ", y[0], " != x batch ", c->n);
  int64_t eh, ew;
  if (transpose) {
    JAX_MPS_CHECK(groups == 1, op, ": groups must be 1");
    eh = ConvTransposeOut(c->ih, c->kh, c->sh, c->dh, c->plh, c->phh);
    ew = ConvTransposeOut(c->iw, c->kw, c->sw, c->dw, c->plw, c->phw);
  } else {
    eh = ConvOut(c->ih, c->kh, c->sh, c->dh, c->plh, c->phh);
    ew = ConvOut(c->iw, c->kw, c->sw, c->dw, c->plw, c->phw);
  }
  JAX_MPS_CHECK(eh == c->oh && ew == c->ow, op, ": output spatial dims must be (", eh, ", ", ew, "), got (",
                c->oh, ", ", c->ow, ")");
  return ffi::Error::Success();
}

// Dense: x (M, K) @ w (K, N) (+ b (N,)) -> y (M, N); leading dims of x are folded into M.
struct DenseDesc : FusedDesc {
  int64_t m = 0, k = 0, n = 0;
};

inline ffi::Error MakeDenseDesc(const char* op, ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                                DenseDesc* d) {
  JAX_MPS_CHECK(x.size() >= 1 && w.size() == 2, op, ": x must have rank >= 1 and w rank 2, got ",
                DimsStr(x), " and ", DimsStr(w));
  d->k = x.back();
  JAX_MPS_CHECK(w[0] == d->k, op, ": w must have shape (", d->k, ", Out), got ", DimsStr(w));
  d->n = w[1];
  d->m = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) d->m *= x[i];
  JAX_MPS_CHECK(d->k >= 1, op, ": In must be >= 1");
  return ffi::Error::Success();
}

// The bias b ((Cout,), or (0,) without bias) and the saved activation operand s (dy's shape
// unless act is none, when the kernels ignore it).
inline ffi::Error CheckBias(const char* op, const char* name, const ffi::AnyBuffer& b, const FusedDesc& f,
                            int64_t cout) {
  return CheckFloatShape(op, name, b, {f.has_bias ? cout : 0});
}
inline ffi::Error CheckSaved(const char* op, const ffi::AnyBuffer& s, const ffi::AnyBuffer& dy, const FusedDesc& f) {
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "s", s));
  return f.act == Act::kNone ? ffi::Error::Success() : CheckLike(op, "s", s, dy);
}

#define JAX_MPS_CONV_ARGS                                                                            \
  ffi::Span<const int64_t> stride, ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi, \
      ffi::Span<const int64_t> dilation, int64_t groups, int64_t transpose, int64_t act, float alpha

// Attributes every conv target binds, in this order: the spatial geometry, then the epilogue.
template <typename Bd>
auto ConvAttrs(Bd&& b) {
  return std::move(b).template Attr<ffi::Span<const int64_t>>("stride").template Attr<ffi::Span<const int64_t>>("pad_lo")
      .template Attr<ffi::Span<const int64_t>>("pad_hi").template Attr<ffi::Span<const int64_t>>("dilation")
      .template Attr<int64_t>("groups").template Attr<int64_t>("transpose").template Attr<int64_t>("act")
      .template Attr<float>("alpha");
}

inline const char* ConvOp(int64_t transpose, const char* conv, const char* deconv) { return transpose ? deconv : conv; }

// ---- conv_fwd: y = act(conv(x, w) + b) ----
template <class B>
ffi::Error ConvFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                   ffi::Result<ffi::AnyBuffer> y, JAX_MPS_CONV_ARGS, int64_t has_bias, int64_t accumulate,
                   int64_t precision) {
  const char* op = ConvOp(transpose, "conv_fwd", "conv_transpose_fwd");
  ConvDesc c;
  JAX_MPS_RETURN_IF_ERROR(MakeFused(op, act, alpha, has_bias, 0, accumulate, precision, &c));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "w", w));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "y", *y));
  JAX_MPS_RETURN_IF_ERROR(MakeConvDesc(op, x.dimensions(), w.dimensions(), y->dimensions(), stride, pad_lo, pad_hi,
                                       dilation, groups, transpose != 0, &c));
  JAX_MPS_RETURN_IF_ERROR(CheckBias(op, "b", b, c, c.oc));
  return Guard(op, [&] { return B::ConvFwd(ctx, c, x, w, b, *y); });
}
template <class B>
auto ConvFwdBinding() {
  return ConvAttrs(ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>()
                       .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>())
      .template Attr<int64_t>("has_bias").template Attr<int64_t>("accumulate")
      .template Attr<int64_t>("precision");
}

// ---- conv_bwd_data: dx from s, dy and w ----
template <class B>
ffi::Error ConvBwdData(typename B::Ctx ctx, ffi::AnyBuffer s, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                       ffi::Result<ffi::AnyBuffer> dx, JAX_MPS_CONV_ARGS, int64_t from_output, int64_t accumulate,
                       int64_t precision) {
  const char* op = ConvOp(transpose, "conv_bwd_data", "conv_transpose_bwd_data");
  ConvDesc c;
  JAX_MPS_RETURN_IF_ERROR(MakeFused(op, act, alpha, 0, from_output, accumulate, precision, &c));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dy", dy));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "w", w));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dx", *dx));
  JAX_MPS_RETURN_IF_ERROR(MakeConvDesc(op, dx->dimensions(), w.dimensions(), dy.dimensions(), stride, pad_lo,
                                       pad_hi, dilation, groups, transpose != 0, &c));
  JAX_MPS_RETURN_IF_ERROR(CheckSaved(op, s, dy, c));
  return Guard(op, [&] { return B::ConvBwdData(ctx, c, s, dy, w, *dx); });
}
template <class B>
auto ConvBwdDataBinding() {
  return ConvAttrs(ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>()
                       .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>())
      .template Attr<int64_t>("from_output").template Attr<int64_t>("accumulate")
      .template Attr<int64_t>("precision");
}

// ---- conv_bwd_weights: dw, db from x, s and dy ----
template <class B>
ffi::Error ConvBwdWeights(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer s, ffi::AnyBuffer dy,
                          ffi::Result<ffi::AnyBuffer> dw, ffi::Result<ffi::AnyBuffer> db, JAX_MPS_CONV_ARGS,
                          int64_t has_bias, int64_t from_output, int64_t accumulate, int64_t precision) {
  const char* op = ConvOp(transpose, "conv_bwd_weights", "conv_transpose_bwd_weights");
  ConvDesc c;
  JAX_MPS_RETURN_IF_ERROR(MakeFused(op, act, alpha, has_bias, from_output, accumulate, precision, &c));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dy", dy));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dw", *dw));
  JAX_MPS_RETURN_IF_ERROR(MakeConvDesc(op, x.dimensions(), dw->dimensions(), dy.dimensions(), stride, pad_lo,
                                       pad_hi, dilation, groups, transpose != 0, &c));
  JAX_MPS_RETURN_IF_ERROR(CheckSaved(op, s, dy, c));
  JAX_MPS_RETURN_IF_ERROR(CheckBias(op, "db", *db, c, c.oc));
  return Guard(op, [&] { return B::ConvBwdWeights(ctx, c, x, s, dy, *dw, *db); });
}
template <class B>
auto ConvBwdWeightsBinding() {
  return ConvAttrs(ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>()
                       .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
                       .template Ret<ffi::AnyBuffer>())
      .template Attr<int64_t>("has_bias").template Attr<int64_t>("from_output").template Attr<int64_t>("accumulate")
      .template Attr<int64_t>("precision");
}

#undef JAX_MPS_CONV_ARGS

// ---- dense_fwd: y = act(x @ w + b) ----
template <class B>
ffi::Error DenseFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                    ffi::Result<ffi::AnyBuffer> y, int64_t act, float alpha, int64_t has_bias, int64_t accumulate,
                    int64_t precision) {
  const char* op = "dense_fwd";
  DenseDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeFused(op, act, alpha, has_bias, 0, accumulate, precision, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "w", w));
  JAX_MPS_RETURN_IF_ERROR(MakeDenseDesc(op, x.dimensions(), w.dimensions(), &d));
  JAX_MPS_RETURN_IF_ERROR(CheckBias(op, "b", b, d, d.n));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "y", *y, d.m * d.n));
  return Guard(op, [&] { return B::DenseFwd(ctx, d, x, w, b, *y); });
}
template <class B>
auto DenseFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Attr<int64_t>("act")
      .template Attr<float>("alpha").template Attr<int64_t>("has_bias").template Attr<int64_t>("accumulate")
      .template Attr<int64_t>("precision");
}

// ---- dense_bwd_data: dx = dz @ w^T ----
template <class B>
ffi::Error DenseBwdData(typename B::Ctx ctx, ffi::AnyBuffer s, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                        ffi::Result<ffi::AnyBuffer> dx, int64_t act, float alpha, int64_t from_output,
                        int64_t accumulate, int64_t precision) {
  const char* op = "dense_bwd_data";
  DenseDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeFused(op, act, alpha, 0, from_output, accumulate, precision, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dx", *dx));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "w", w));
  JAX_MPS_RETURN_IF_ERROR(MakeDenseDesc(op, dx->dimensions(), w.dimensions(), &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "dy", dy, d.m * d.n));
  JAX_MPS_RETURN_IF_ERROR(CheckSaved(op, s, dy, d));
  return Guard(op, [&] { return B::DenseBwdData(ctx, d, s, dy, w, *dx); });
}
template <class B>
auto DenseBwdDataBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Attr<int64_t>("act")
      .template Attr<float>("alpha").template Attr<int64_t>("from_output").template Attr<int64_t>("accumulate")
      .template Attr<int64_t>("precision");
}

// ---- dense_bwd_weights: dw = x^T @ dz, db = sum_rows dz ----
template <class B>
ffi::Error DenseBwdWeights(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer s, ffi::AnyBuffer dy,
                           ffi::Result<ffi::AnyBuffer> dw, ffi::Result<ffi::AnyBuffer> db, int64_t act, float alpha,
                           int64_t has_bias, int64_t from_output, int64_t accumulate, int64_t precision) {
  const char* op = "dense_bwd_weights";
  DenseDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeFused(op, act, alpha, has_bias, from_output, accumulate, precision, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dw", *dw));
  JAX_MPS_RETURN_IF_ERROR(MakeDenseDesc(op, x.dimensions(), dw->dimensions(), &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "dy", dy, d.m * d.n));
  JAX_MPS_RETURN_IF_ERROR(CheckSaved(op, s, dy, d));
  JAX_MPS_RETURN_IF_ERROR(CheckBias(op, "db", *db, d, d.n));
  return Guard(op, [&] { return B::DenseBwdWeights(ctx, d, x, s, dy, *dw, *db); });
}
template <class B>
auto DenseBwdWeightsBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("act").template Attr<float>("alpha").template Attr<int64_t>("has_bias")
      .template Attr<int64_t>("from_output").template Attr<int64_t>("accumulate")
      .template Attr<int64_t>("precision");
}

}  // namespace jax_mps
