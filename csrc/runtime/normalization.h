// Backend-neutral descriptors and validation for batch / instance / local-response normalization.
#pragma once
#include <cmath>

#include "runtime/activation.h"
#include "runtime/common.h"

namespace jax_mps {

// x viewed as (G, S, C): statistics per (g, c) over the S rows of group g. Batch norm: G = 1,
// S = everything but the channel axis. Instance norm: G = batch, S = spatial.
struct NormView {
  int64_t G = 1, S = 0, C = 0;
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

inline ffi::Error CheckVec(const char* op, const char* name, ffi::Span<const int64_t> d, int64_t n) {
  JAX_MPS_CHECK(d.size() == 1 && d[0] == n, op, ": ", name, " must have shape (", n, ",), got ", DimsStr(d));
  return ffi::Error::Success();
}

inline ffi::Error CheckSame(const char* op, const char* name, ffi::Span<const int64_t> d,
                            ffi::Span<const int64_t> want) {
  JAX_MPS_CHECK(ToDims(d) == ToDims(want), op, ": ", name, " must have shape ", DimsStr(want), ", got ",
                DimsStr(d));
  return ffi::Error::Success();
}

// Results are sized by the caller: check them too, so a bad ffi_call cannot write out of bounds.
inline ffi::Error CheckCount(const char* op, const char* name, int64_t got, int64_t want) {
  JAX_MPS_CHECK(got == want, op, ": result ", name, " must have ", want, " elements, got ", got);
  return ffi::Error::Success();
}

inline ffi::Error CheckEpsilon(const char* op, float eps) {
  JAX_MPS_CHECK(std::isfinite(eps) && eps >= 0.f, op, ": epsilon must be finite and >= 0, got ", eps);
  return ffi::Error::Success();
}

inline ffi::Error CheckFusedAct(const char* op, int64_t act, float alpha, int64_t from_output) {
  JAX_MPS_CHECK(ValidAct(act), op, ": unknown activation code ", act);
  JAX_MPS_CHECK(!from_output || ActGradFromOutput(static_cast<Act>(act), alpha), op,
                ": activation ", act, " cannot be differentiated from its output");
  return ffi::Error::Success();
}

// Local response normalization across the last axis (Caffe/torch definition).
struct LrnDesc {
  int64_t size = 5;
  float alpha = 1e-4f, beta = 0.75f, k = 1.f;
};

inline ffi::Error CheckLrn(ffi::Span<const int64_t> d, const LrnDesc& p) {
  JAX_MPS_CHECK(d.size() >= 1, "local_response_norm: x must have rank >= 1 (..., C)");
  JAX_MPS_CHECK(p.size >= 1 && p.size % 2 == 1, "local_response_norm: size must be a positive odd int, got ",
                p.size);
  JAX_MPS_CHECK(std::isfinite(p.alpha) && p.alpha >= 0.f, "local_response_norm: alpha must be finite and >= 0, got ",
                p.alpha);
  JAX_MPS_CHECK(std::isfinite(p.beta), "local_response_norm: beta must be finite, got ", p.beta);
  JAX_MPS_CHECK(std::isfinite(p.k) && p.k > 0.f, "local_response_norm: k must be finite and > 0, got ", p.k);
  return ffi::Error::Success();
}

}  // namespace jax_mps
