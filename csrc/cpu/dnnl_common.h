// oneDNN plumbing for the CPU backend: one engine, a stream per thread, memory helpers.
#pragma once
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>
#include <omp.h>

#include "cpu/kernel_util.h"
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

inline dnnl::memory Mem(const dnnl::memory::desc& md, const void* p) {
  return dnnl::memory(md, Engine(), const_cast<void*>(p));
}

inline dnnl::memory::desc FlatF32(int64_t n) { return dnnl::memory::desc({n}, dt::f32, tag::a); }

// Every primitive uses a user scratchpad taken from a per-thread buffer: oneDNN's default
// library scratchpad is shared, so primitives run concurrently (XLA runs independent custom
// calls on several threads) would corrupt it ("could not execute a primitive", wrong numbers).
inline dnnl::primitive_attr UserAttr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Executes a primitive built with UserAttr() (or needing no scratchpad) and waits for it.
inline void Exec(const dnnl::primitive& prim, std::unordered_map<int, dnnl::memory> args) {
  const_dnnl_memory_desc_t md =
      dnnl_primitive_desc_query_md(prim.get_primitive_desc(), dnnl_query_scratchpad_md, 0);
  const size_t bytes = md ? dnnl_memory_desc_get_size(md) : 0;
  if (bytes) {
    thread_local ScratchBuffer<char> pad;
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 dnnl::memory(dnnl::memory::desc({int64_t(bytes)}, dt::u8, tag::a), Engine(), pad.get(bytes)));
  }
  prim.execute(Stream(), args);
  Stream().wait();
}

// Runs small work on the calling thread only: waking OpenMP's sleeping workers
// (OMP_WAIT_POLICY=PASSIVE) costs more than a GEMM of ~1 MFLOP. Plans created inside the scope
// must be cached under the thread count (oneDNN fixes some primitives' threads at creation).
class ThreadLimit {
 public:
  explicit ThreadLimit(bool single) : prev_(single ? omp_get_max_threads() : 0) {
    if (single) omp_set_num_threads(1);
  }
  ~ThreadLimit() {
    if (prev_) omp_set_num_threads(prev_);
  }
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int prev_;
};

// Multiply-adds below which a GEMM runs on one thread (measured on LeNet's dense layers).
constexpr int64_t kSmallGemm = int64_t(1) << 21;

}  // namespace jax_mps::cpu
