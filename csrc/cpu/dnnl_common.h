// oneDNN plumbing for the CPU backend: one engine, a stream per thread, memory helpers.
#pragma once
#include <dnnl.hpp>

#include "runtime/common.h"

namespace jax_mps::cpu {

inline dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// XLA:CPU may run custom calls from several threads; a stream per thread avoids sharing.
inline dnnl::stream& Stream() {
  thread_local dnnl::stream s(Engine());
  return s;
}

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

inline dnnl::memory::dims MDims(ffi::Span<const int64_t> d) { return dnnl::memory::dims(d.begin(), d.end()); }

inline dnnl::memory Mem(const dnnl::memory::desc& md, const void* p) {
  return dnnl::memory(md, Engine(), const_cast<void*>(p));
}

inline dnnl::memory::desc FlatF32(int64_t n) { return dnnl::memory::desc({n}, dt::f32, tag::a); }

}  // namespace jax_mps::cpu
