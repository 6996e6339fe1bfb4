// What a backend plugs into: its context type, dtype helpers, the shared buffer checks and the
// error for a target a backend lacks. A backend is a struct `B` of static kernel functions:
//   using CtxTag = ...;  // what the binding's .Ctx<>() decodes (CPU: CpuCtx; CUDA: PlatformStream<cudaStream_t>)
//   using Ctx = ...;     // the decoded type handed to every kernel (CPU: CpuCtx; CUDA: cudaStream_t)
//   static ffi::Error <Target>(Ctx, [const Desc&,] buffers in binding order, decoded attributes);
// The handler templates in runtime/<family>.h validate every shape and attribute from dims and
// attribute values only (never buffer contents: on a GPU those are device pointers) and then
// call B::<Target> inside Guard. csrc/cpu/backend.h declares the exact signatures.
#pragma once
#include <optional>
#include <type_traits>
#include <vector>

#include "runtime/common.h"

namespace jax_mps {

// The CPU's context: nothing to decode. Every backend takes exactly one context parameter so one
// handler template serves all backends.
struct CpuCtx {};

// One FFI target of a backend's table (cpu/targets.cc, cuda/targets.cc).
struct Target {
  const char* name;  // jax_mps_<op>_<fwd|bwd>
  void* handler;     // XLA_FFI_Handler*
};

// Variadic operand / result lists (RNN weights, optimizer leaves), decoded once by the runtime.
using Buffers = std::vector<ffi::AnyBuffer>;

inline ffi::Error Unimplemented(const char* backend, const char* target) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    std::string("jax_mps_") + target + " is not implemented by the " + backend + " backend");
}

inline bool IsFloat(ffi::DataType t) { return t == ffi::F32 || t == ffi::F16 || t == ffi::BF16; }

inline const char* DtypeName(ffi::DataType t) {
  switch (t) {
    case ffi::F32: return "float32";
    case ffi::F16: return "float16";
    case ffi::BF16: return "bfloat16";
    case ffi::F64: return "float64";
    case ffi::S32: return "int32";
    case ffi::S64: return "int64";
    case ffi::U32: return "uint32";
    case ffi::U8: return "uint8";
    case ffi::PRED: return "bool";
    default: return "an unsupported dtype";
  }
}

// Tags naming a float dtype for DispatchFloat's functor: f(F32Tag{}) etc. A backend maps them to
// its element types (CPU: float / _Float16 / its bf16; CUDA: float / __half / __nv_bfloat16).
struct F32Tag {};
struct F16Tag {};
struct BF16Tag {};

// The one dtype switch: calls f with the tag of `t` (which IsFloat must accept).
template <typename F>
ffi::Error DispatchFloat(const char* op, ffi::DataType t, F&& f) {
  switch (t) {
    case ffi::F32: return f(F32Tag{});
    case ffi::F16: return f(F16Tag{});
    case ffi::BF16: return f(BF16Tag{});
    default: return Invalid(op, ": unsupported dtype ", DtypeName(t));
  }
}

// ---- buffer checks (one checker per rule) ----

inline ffi::Error CheckFloat(const char* op, const char* name, const ffi::AnyBuffer& b) {
  JAX_MPS_CHECK(IsFloat(b.element_type()), op, ": ", name, " must be float32, float16 or bfloat16, got ",
                DtypeName(b.element_type()));
  return ffi::Error::Success();
}

inline ffi::Error CheckDtype(const char* op, const char* name, const ffi::AnyBuffer& b, ffi::DataType want) {
  JAX_MPS_CHECK(b.element_type() == want, op, ": ", name, " must be ", DtypeName(want), ", got ",
                DtypeName(b.element_type()));
  return ffi::Error::Success();
}

// Exact dims.
inline ffi::Error CheckShape(const char* op, const char* name, const ffi::AnyBuffer& b, const Dims& want) {
  JAX_MPS_CHECK(ToDims(b.dimensions()) == want, op, ": ", name, " must have shape ",
                DimsStr(ffi::Span<const int64_t>(want.data(), want.size())), ", got ", DimsStr(b.dimensions()));
  return ffi::Error::Success();
}

// Same dims as `ref`.
inline ffi::Error CheckLike(const char* op, const char* name, const ffi::AnyBuffer& b, const ffi::AnyBuffer& ref) {
  return CheckShape(op, name, b, ToDims(ref.dimensions()));
}

// Element count (views whose rank the kernel does not care about, and every result).
inline ffi::Error CheckCount(const char* op, const char* name, const ffi::AnyBuffer& b, int64_t want) {
  JAX_MPS_CHECK(static_cast<int64_t>(b.element_count()) == want, op, ": ", name, " must have ", want,
                " elements, got ", DimsStr(b.dimensions()));
  return ffi::Error::Success();
}

// A float buffer with the given dims / count: the two checks every float operand needs.
inline ffi::Error CheckFloatShape(const char* op, const char* name, const ffi::AnyBuffer& b, const Dims& want) {
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, name, b));
  return CheckShape(op, name, b, want);
}
inline ffi::Error CheckFloatLike(const char* op, const char* name, const ffi::AnyBuffer& b,
                                 const ffi::AnyBuffer& ref) {
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, name, b));
  return CheckLike(op, name, b, ref);
}
inline ffi::Error CheckFloatCount(const char* op, const char* name, const ffi::AnyBuffer& b, int64_t want) {
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, name, b));
  return CheckCount(op, name, b, want);
}

inline ffi::Error CheckFlag(const char* op, const char* name, int64_t v) {
  JAX_MPS_CHECK(v == 0 || v == 1, op, ": ", name, " must be 0 or 1, got ", v);
  return ffi::Error::Success();
}

// float32 matmul / conv math of conv, conv_transpose, dense and the RNN GEMMs, from
// jax.default_matmul_precision at trace time (the `precision` attribute): kDefault lets a backend
// use TF32 tensor cores, as XLA does on GPU; kHighest asks for full float32 ("highest",
// "float32"). float16 / bfloat16 operands are unaffected; the CPU always computes in float32.
enum class Precision : int64_t { kDefault = 0, kHighest = 1, kCount = 2 };

inline ffi::Error CheckPrecision(const char* op, int64_t v) {
  JAX_MPS_CHECK(v >= 0 && v < int64_t(Precision::kCount), op, ": unknown precision code ", v);
  return ffi::Error::Success();
}

// Decodes a RemainingArgs / RemainingRets list into AnyBuffers.
template <typename R>
ffi::Error DecodeAll(const char* op, const R& list, Buffers* out) {
  out->clear();
  out->reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    auto b = list.template get<ffi::AnyBuffer>(i);
    if (b.has_error()) return Invalid(op, ": operand ", i, ": ", b.error().message());
    if constexpr (std::is_same_v<R, ffi::RemainingRets>)
      out->push_back(**b);
    else
      out->push_back(*b);
  }
  return ffi::Error::Success();
}

}  // namespace jax_mps

// CpuCtx needs no decoding.
template <>
struct xla::ffi::CtxDecoding<jax_mps::CpuCtx> {
  using Type = jax_mps::CpuCtx;
  static std::optional<Type> Decode(const XLA_FFI_Api*, XLA_FFI_ExecutionContext*, DiagnosticEngine&) {
    return jax_mps::CpuCtx{};
  }
};
