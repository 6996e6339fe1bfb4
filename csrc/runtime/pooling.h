// 2-D pooling (NHWC; 1-D pooling is H == 1): descriptor, validation and targets.
#pragma once
#include <cstdint>
#include <limits>

#include "runtime/backend.h"

namespace jax_mps {

// Window geometry with the meaning of lax.reduce_window over the spatial dims of NHWC.
struct Pool2DDesc {
  int64_t n = 0, h = 0, w = 0, c = 0;   // input
  int64_t oh = 0, ow = 0;               // output
  int64_t kh = 1, kw = 1, sh = 1, sw = 1;
  int64_t pt = 0, pl = 0, pb = 0, pr = 0;  // padding top/left (lo) and bottom/right (hi)
  bool with_index = false;         // max: also return the argmax (flat h * W + w per window)
  bool count_include_pad = false;  // avg: divide by the full window (else by its real elements)
};

inline ffi::Error CheckPair(const char* op, const char* name, ffi::Span<const int64_t> v, int64_t minimum) {
  JAX_MPS_CHECK(v.size() == 2, op, ": ", name, " must have 2 entries, got ", v.size());
  JAX_MPS_CHECK(v[0] >= minimum && v[1] >= minimum, op, ": ", name, " entries must be >= ", minimum, ", got ",
                DimsStr(v));
  return ffi::Error::Success();
}

// `in` is the NHWC input (x or dx), `out` the NHWC output (y or dy). Every window must hold at
// least one real element (padding < window), so kernels never divide by zero or emit a window of
// padding only.
inline ffi::Error MakePool2D(const char* op, ffi::Span<const int64_t> in, ffi::Span<const int64_t> out,
                             ffi::Span<const int64_t> window, ffi::Span<const int64_t> stride,
                             ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi, Pool2DDesc* d) {
  JAX_MPS_CHECK(in.size() == 4, op, ": input must have rank 4 (N, H, W, C), got ", DimsStr(in));
  JAX_MPS_CHECK(out.size() == 4, op, ": output must have rank 4 (N, OH, OW, C), got ", DimsStr(out));
  JAX_MPS_RETURN_IF_ERROR(CheckPair(op, "window", window, 1));
  JAX_MPS_RETURN_IF_ERROR(CheckPair(op, "stride", stride, 1));
  JAX_MPS_RETURN_IF_ERROR(CheckPair(op, "pad_lo", pad_lo, 0));
  JAX_MPS_RETURN_IF_ERROR(CheckPair(op, "pad_hi", pad_hi, 0));
  JAX_MPS_CHECK(pad_lo[0] < window[0] && pad_lo[1] < window[1] && pad_hi[0] < window[0] && pad_hi[1] < window[1],
                op, ": padding must be smaller than the window ", DimsStr(window));
  *d = Pool2DDesc{};
  d->n = in[0]; d->h = in[1]; d->w = in[2]; d->c = in[3];
  d->kh = window[0]; d->kw = window[1]; d->sh = stride[0]; d->sw = stride[1];
  d->pt = pad_lo[0]; d->pl = pad_lo[1]; d->pb = pad_hi[0]; d->pr = pad_hi[1];
  JAX_MPS_CHECK(d->h >= 1 && d->w >= 1, op, ": spatial dims must be >= 1, got ", DimsStr(in));
  const int64_t ph = d->h + d->pt + d->pb, pw = d->w + d->pl + d->pr;
  JAX_MPS_CHECK(ph >= d->kh && pw >= d->kw, op, ": window ", DimsStr(window), " is larger than the padded input (",
                ph, ", ", pw, ")");
  d->oh = (ph - d->kh) / d->sh + 1;
  d->ow = (pw - d->kw) / d->sw + 1;
  JAX_MPS_CHECK(out[0] == d->n && out[1] == d->oh && out[2] == d->ow && out[3] == d->c, op, ": output must have shape (",
                d->n, ", ", d->oh, ", ", d->ow, ", ", d->c, ") for input ", DimsStr(in), ", got ", DimsStr(out));
  return ffi::Error::Success();
}

// Binding's move constructor is private: shared attribute lists are built by forwarding the
// binding through a template (never copied).
template <typename Bd>
auto PoolAttrs(Bd&& b) {
  return std::move(b).template Attr<ffi::Span<const int64_t>>("window").template Attr<ffi::Span<const int64_t>>("stride")
      .template Attr<ffi::Span<const int64_t>>("pad_lo").template Attr<ffi::Span<const int64_t>>("pad_hi");
}
#define JAX_MPS_POOL_ARGS                                                                            \
  ffi::Span<const int64_t> window, ffi::Span<const int64_t> stride, ffi::Span<const int64_t> pad_lo, \
      ffi::Span<const int64_t> pad_hi

// ---- max_pool_fwd: y and (with_index) the argmax idx, int32 with y's shape ((0,) otherwise) ----
template <class B>
ffi::Error MaxPoolFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                      ffi::Result<ffi::AnyBuffer> idx, JAX_MPS_POOL_ARGS, int64_t with_index) {
  const char* op = "max_pool_fwd";
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "y", *y));
  JAX_MPS_RETURN_IF_ERROR(MakePool2D(op, x.dimensions(), y->dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "with_index", with_index));
  d.with_index = with_index != 0;
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "argmax", *idx, ffi::S32));
  if (with_index)
    JAX_MPS_CHECK(ToDims(idx->dimensions()) == ToDims(y->dimensions()), op, ": argmax must have the output's shape ",
                  DimsStr(y->dimensions()), ", got ", DimsStr(idx->dimensions()));
  else
    JAX_MPS_CHECK(idx->element_count() == 0, op, ": argmax must be empty when with_index is 0, got ",
                  DimsStr(idx->dimensions()));
  JAX_MPS_CHECK(d.h * d.w <= std::numeric_limits<int32_t>::max(), op, ": H * W must fit in int32");
  return Guard(op, [&] { return B::MaxPoolFwd(ctx, d, x, *y, *idx); });
}
template <class B>
auto MaxPoolFwdBinding() {
  return PoolAttrs(ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>()
                       .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>())
      .template Attr<int64_t>("with_index");
}

// ---- max_pool_bwd: dx from the argmax and dy ----
template <class B>
ffi::Error MaxPoolBwd(typename B::Ctx ctx, ffi::AnyBuffer idx, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx,
                      JAX_MPS_POOL_ARGS) {
  const char* op = "max_pool_bwd";
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dy", dy));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dx", *dx));
  JAX_MPS_RETURN_IF_ERROR(MakePool2D(op, dx->dimensions(), dy.dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "argmax", idx, ffi::S32));
  JAX_MPS_RETURN_IF_ERROR(CheckLike(op, "argmax", idx, dy));
  d.with_index = true;
  return Guard(op, [&] { return B::MaxPoolBwd(ctx, d, idx, dy, *dx); });
}
template <class B>
auto MaxPoolBwdBinding() {
  return PoolAttrs(ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>()
                       .template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>());
}

// ---- avg_pool_fwd / avg_pool_bwd ----
template <class B>
ffi::Error AvgPoolFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, JAX_MPS_POOL_ARGS,
                      int64_t count_include_pad) {
  const char* op = "avg_pool_fwd";
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "y", *y));
  JAX_MPS_RETURN_IF_ERROR(MakePool2D(op, x.dimensions(), y->dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "count_include_pad", count_include_pad));
  d.count_include_pad = count_include_pad != 0;
  return Guard(op, [&] { return B::AvgPoolFwd(ctx, d, x, *y); });
}
template <class B>
auto AvgPoolFwdBinding() {
  return PoolAttrs(ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>()
                       .template Ret<ffi::AnyBuffer>())
      .template Attr<int64_t>("count_include_pad");
}

template <class B>
ffi::Error AvgPoolBwd(typename B::Ctx ctx, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx, JAX_MPS_POOL_ARGS,
                      int64_t count_include_pad) {
  const char* op = "avg_pool_bwd";
  Pool2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dy", dy));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dx", *dx));
  JAX_MPS_RETURN_IF_ERROR(MakePool2D(op, dx->dimensions(), dy.dimensions(), window, stride, pad_lo, pad_hi, &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "count_include_pad", count_include_pad));
  d.count_include_pad = count_include_pad != 0;
  return Guard(op, [&] { return B::AvgPoolBwd(ctx, d, dy, *dx); });
}
template <class B>
auto AvgPoolBwdBinding() {
  return PoolAttrs(ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>()
                       .template Ret<ffi::AnyBuffer>())
      .template Attr<int64_t>("count_include_pad");
}

#undef JAX_MPS_POOL_ARGS

// ---- global average pooling: (N, H, W, C) -> (N, C) ----
struct GlobalPoolDesc {
  int64_t n = 0, hw = 0, c = 0;
};

inline ffi::Error MakeGlobalPool(const char* op, const ffi::AnyBuffer& in, const ffi::AnyBuffer& out,
                                 GlobalPoolDesc* d) {
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "input", in));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "output", out));
  auto i = in.dimensions();
  JAX_MPS_CHECK(i.size() == 4, op, ": input must have rank 4 (N, H, W, C), got ", DimsStr(i));
  JAX_MPS_CHECK(i[1] * i[2] > 0, op, ": H * W must be > 0, got ", DimsStr(i));
  JAX_MPS_RETURN_IF_ERROR(CheckShape(op, "output", out, {i[0], i[3]}));
  *d = GlobalPoolDesc{i[0], i[1] * i[2], i[3]};
  return ffi::Error::Success();
}

template <class B>
ffi::Error GlobalAvgPoolFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  const char* op = "global_avg_pool2d_fwd";
  GlobalPoolDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeGlobalPool(op, x, *y, &d));
  return Guard(op, [&] { return B::GlobalAvgPoolFwd(ctx, d, x, *y); });
}
template <class B>
auto GlobalAvgPoolFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>();
}

template <class B>
ffi::Error GlobalAvgPoolBwd(typename B::Ctx ctx, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx) {
  const char* op = "global_avg_pool2d_bwd";
  GlobalPoolDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeGlobalPool(op, *dx, dy, &d));
  return Guard(op, [&] { return B::GlobalAvgPoolBwd(ctx, d, dy, *dx); });
}
template <class B>
auto GlobalAvgPoolBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>();
}

}  // namespace jax_mps
