// Backend-neutral convolution / dense descriptors and their validation.
// Layouts: x (N, H, W, C) (1-D convs use H = 1), w (KH, KW, Cin/groups, Cout), y (N, OH, OW, Cout).
// Padding is the lax.conv_general_dilated / lax.conv_transpose (lo, hi) pair per spatial dim.
#pragma once
#include <cstdint>

#include "runtime/common.h"

namespace jax_mps {

struct ConvDesc {
  int64_t n = 0, ih = 0, iw = 0, ic = 0;  // input
  int64_t oh = 0, ow = 0, oc = 0;         // output
  int64_t kh = 0, kw = 0, groups = 1;
  int64_t sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t plh = 0, plw = 0, phh = 0, phw = 0;  // lax (lo, hi) padding
  bool transpose = false;

  int64_t EffK(int64_t k, int64_t d) const { return (k - 1) * d + 1; }
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
inline int64_t ConvTransposeOut(int64_t i, int64_t k, int64_t s, int64_t d, int64_t lo, int64_t hi) {
  int64_t span = (i - 1) * s + 1 + lo + hi - ((k - 1) * d + 1);
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
struct DenseDesc {
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
  return ffi::Error::Success();
}

}  // namespace jax_mps
