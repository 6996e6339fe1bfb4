// Dropout: descriptor, validation and targets. The keep mask is returned bit-packed (bit j of byte b
// <-> element 8b + j) for the backward pass.
#pragma once
#include <cmath>
#include <cstdint>

#include "runtime/backend.h"

namespace jax_mps {

// Dropout: with b = i / 4 (a 64-bit block index), keep element i iff
// Philox4x32-10(counter = (lo32(b), hi32(b), k2, k3), key = (k0, k1))[i % 4] < threshold; k2 = k3 = 0 for
// 2-word keys. Counter-based, so the mask depends on (key, i) only, never on threading.
struct DropoutDesc {
  uint64_t threshold = 0;  // keep probability * 2^32, in (0, 2^32]
  float scale = 1.f;       // 1 / (1 - rate)
  int64_t n = 0;           // elements
  int64_t key_words = 2;   // uint32 words of the key: 2, or 4 (k2, k3 = 0 for 2)
  // dropout_offset_fwd: the key buffer ends with two more words, (lo32, hi32) of the global index
  // of element 0 (a multiple of 8), so that a shard of a batch-split tensor draws its part of the
  // whole tensor's mask. Backends read them beside the key; 0 otherwise.
  bool with_offset = false;
};

inline ffi::Error CheckDropoutScale(const char* op, float scale) {
  JAX_MPS_CHECK(std::isfinite(scale) && scale >= 1.f, op, ": scale must be finite and >= 1, got ", scale);
  return ffi::Error::Success();
}

// The mask: uint8 with one bit per element.
inline ffi::Error CheckMask(const char* op, const ffi::AnyBuffer& mask, int64_t n) {
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "mask", mask, ffi::U8));
  JAX_MPS_CHECK(mask.dimensions().size() == 1 && int64_t(mask.element_count()) == (n + 7) / 8, op,
                ": mask must have ", (n + 7) / 8, " bytes for ", n, " elements, got ", DimsStr(mask.dimensions()));
  return ffi::Error::Success();
}

inline ffi::Error MakeDropoutDesc(int64_t threshold, float scale, int64_t key_words, DropoutDesc* desc) {
  JAX_MPS_CHECK(threshold > 0 && threshold <= (int64_t(1) << 32), "dropout: keep threshold must be in (0, 2^32], got ",
                threshold);
  JAX_MPS_RETURN_IF_ERROR(CheckDropoutScale("dropout", scale));
  JAX_MPS_CHECK(key_words == 2 || key_words == 4, "dropout: key data must be uint32 (2,) or (4,), got (", key_words,
                ",)");
  desc->threshold = static_cast<uint64_t>(threshold);
  desc->scale = scale;
  desc->key_words = key_words;
  return ffi::Error::Success();
}

// with_offset: the key data ends with the element offset (offset_lo, offset_hi), see
// DropoutDesc::with_offset.
template <class B>
ffi::Error DropoutFwdChecked(const char* op, bool with_offset, typename B::Ctx ctx, ffi::AnyBuffer key,
                             ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mask,
                             int64_t threshold, float scale) {
  const int64_t extra = with_offset ? 2 : 0;
  DropoutDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "key data", key, ffi::U32));
  JAX_MPS_CHECK(key.dimensions().size() == 1 && static_cast<int64_t>(key.element_count()) >= extra, op,
                with_offset ? ": key data must be uint32 (2 + 2,) or (4 + 2,) (key words, then the element offset), got "
                            : ": key data must be uint32 (2,) or (4,), got ",
                DimsStr(key.dimensions()));
  JAX_MPS_RETURN_IF_ERROR(MakeDropoutDesc(threshold, scale, static_cast<int64_t>(key.element_count()) - extra, &d));
  d.with_offset = with_offset;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  d.n = static_cast<int64_t>(x.element_count());
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "y", *y, x));
  JAX_MPS_RETURN_IF_ERROR(CheckMask(op, *mask, d.n));
  return Guard(op, [&] { return B::DropoutFwd(ctx, d, key, x, *y, *mask); });
}

template <class B>
ffi::Error DropoutFwd(typename B::Ctx ctx, ffi::AnyBuffer key, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                      ffi::Result<ffi::AnyBuffer> mask, int64_t threshold, float scale) {
  return DropoutFwdChecked<B>("dropout", false, ctx, key, x, y, mask, threshold, scale);
}
template <class B>
auto DropoutFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Attr<int64_t>("threshold")
      .template Attr<float>("scale");
}

// As DropoutFwd, with key data (k..., offset_lo, offset_hi).
template <class B>
ffi::Error DropoutOffsetFwd(typename B::Ctx ctx, ffi::AnyBuffer key, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                            ffi::Result<ffi::AnyBuffer> mask, int64_t threshold, float scale) {
  return DropoutFwdChecked<B>("dropout_offset", true, ctx, key, x, y, mask, threshold, scale);
}
template <class B>
auto DropoutOffsetFwdBinding() {
  return DropoutFwdBinding<B>();
}

template <class B>
ffi::Error DropoutBwd(typename B::Ctx ctx, ffi::AnyBuffer mask, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dx,
                      float scale) {
  const char* op = "dropout_bwd";
  DropoutDesc d;
  JAX_MPS_RETURN_IF_ERROR(CheckDropoutScale(op, scale));
  d.scale = scale;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "g", g));
  d.n = static_cast<int64_t>(g.element_count());
  JAX_MPS_RETURN_IF_ERROR(CheckMask(op, mask, d.n));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, g));
  return Guard(op, [&] { return B::DropoutBwd(ctx, d, mask, g, *dx); });
}
template <class B>
auto DropoutBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Attr<float>("scale");
}

}  // namespace jax_mps
