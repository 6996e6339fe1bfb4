// Backend-neutral descriptors and validation for 2-D pooling (NHWC; 1-D pooling is H == 1) and
// 2-D resampling, shared by every backend.
#pragma once
#include <cstdint>
#include <string_view>

#include "runtime/common.h"

namespace jax_mps {

// Window geometry with the meaning of lax.reduce_window over the spatial dims of NHWC.
struct Pool2DDesc {
  int64_t n = 0, h = 0, w = 0, c = 0;   // input
  int64_t oh = 0, ow = 0;               // output
  int64_t kh = 1, kw = 1, sh = 1, sw = 1;
  int64_t pt = 0, pl = 0, pb = 0, pr = 0;  // padding top/left (lo) and bottom/right (hi)
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

// Upsampling of NHWC by integer factors (sh, sw); in (N, H, W, C) -> out (N, H*sh, W*sw, C).
struct Upsample2DDesc {
  int64_t n = 0, h = 0, w = 0, c = 0, sh = 1, sw = 1;
  bool bilinear = false;
};

inline ffi::Error MakeUpsample2D(const char* op, ffi::Span<const int64_t> in, ffi::Span<const int64_t> out,
                                 int64_t sh, int64_t sw, std::string_view method, Upsample2DDesc* d) {
  JAX_MPS_CHECK(in.size() == 4, op, ": input must have rank 4 (N, H, W, C), got ", DimsStr(in));
  JAX_MPS_CHECK(sh >= 1 && sw >= 1, op, ": scale entries must be >= 1, got (", sh, ", ", sw, ")");
  JAX_MPS_CHECK(method == "nearest" || method == "bilinear", op, ": method must be 'nearest' or 'bilinear', got '",
                std::string(method), "'");
  JAX_MPS_CHECK(out.size() == 4 && out[0] == in[0] && out[1] == in[1] * sh && out[2] == in[2] * sw &&
                    out[3] == in[3],
                op, ": output must have shape (", in[0], ", ", in[1] * sh, ", ", in[2] * sw, ", ", in[3],
                ") for input ", DimsStr(in), ", got ", DimsStr(out));
  *d = Upsample2DDesc{in[0], in[1], in[2], in[3], sh, sw, method == "bilinear"};
  return ffi::Error::Success();
}

}  // namespace jax_mps
