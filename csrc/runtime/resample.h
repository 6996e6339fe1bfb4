// 2-D resampling of NHWC by integer factors: descriptor, validation and targets.
#pragma once
#include <cstdint>
#include <string_view>

#include "runtime/backend.h"

namespace jax_mps {

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

template <class B>
ffi::Error UpsampleFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw,
                       std::string_view method) {
  const char* op = "upsample2d_fwd";
  Upsample2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "y", *y));
  JAX_MPS_RETURN_IF_ERROR(MakeUpsample2D(op, x.dimensions(), y->dimensions(), sh, sw, method, &d));
  return Guard(op, [&] { return B::UpsampleFwd(ctx, d, x, *y); });
}
template <class B>
auto UpsampleFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("sh").template Attr<int64_t>("sw").template Attr<std::string_view>("method");
}

template <class B>
ffi::Error UpsampleBwd(typename B::Ctx ctx, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx, int64_t sh,
                       int64_t sw, std::string_view method) {
  const char* op = "upsample2d_bwd";
  Upsample2DDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dy", dy));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "dx", *dx));
  JAX_MPS_RETURN_IF_ERROR(MakeUpsample2D(op, dx->dimensions(), dy.dimensions(), sh, sw, method, &d));
  return Guard(op, [&] { return B::UpsampleBwd(ctx, d, dy, *dx); });
}
template <class B>
auto UpsampleBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("sh").template Attr<int64_t>("sw").template Attr<std::string_view>("method");
}

}  // namespace jax_mps
