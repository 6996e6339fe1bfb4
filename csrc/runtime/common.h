// Backend-neutral helpers shared by every op: FFI aliases, error macros, shape helpers, plan cache.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Marks the contract's scalar math (e.g. the per-element losses) callable from CUDA kernels too,
// so both backends run the very same formulas; JAX_MPS_HDI also forces inlining (the CPU's
// vectorised loops need it).
#ifdef __CUDACC__
#define JAX_MPS_HD __host__ __device__
#define JAX_MPS_HDI __host__ __device__ __forceinline__
#else
#define JAX_MPS_HD
#define JAX_MPS_HDI inline __attribute__((always_inline))
#endif

namespace jax_mps {

using Dims = std::vector<int64_t>;

inline Dims ToDims(ffi::Span<const int64_t> s) { return Dims(s.begin(), s.end()); }

inline int64_t Numel(ffi::Span<const int64_t> d) {
  int64_t n = 1;
  for (int64_t v : d) n *= v;
  return n;
}

inline bool SameDims(ffi::Span<const int64_t> a, ffi::Span<const int64_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

inline std::string DimsStr(ffi::Span<const int64_t> d) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < d.size(); ++i) os << (i ? ", " : "") << d[i];
  if (d.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// Builds an InvalidArgument error from streamed parts: return Invalid("conv2d: x rank ", r);
template <typename... Args>
ffi::Error Invalid(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return ffi::Error::InvalidArgument(os.str());
}

#define JAX_MPS_CHECK(cond, ...)                                 \
  do {                                                           \
    if (!(cond)) return ::jax_mps::Invalid(__VA_ARGS__);         \
  } while (0)

#define JAX_MPS_RETURN_IF_ERROR(expr)       \
  do {                                      \
    ::xla::ffi::Error err_ = (expr);        \
    if (err_.failure()) return err_;        \
  } while (0)

// Converts C++ exceptions (e.g. dnnl::error) into an ffi::Error: nothing may cross the FFI boundary.
template <typename F>
ffi::Error Guard(const char* op, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(op) + ": " + e.what());
  } catch (...) {
    return ffi::Error::Internal(std::string(op) + ": unknown C++ exception");
  }
}

// Hashable key built from the integers/floats that fully describe a plan (shapes + attributes).
struct PlanKey {
  std::vector<int64_t> v;
  PlanKey& add(int64_t x) { v.push_back(x); return *this; }
  PlanKey& add(double x) { int64_t b; static_assert(sizeof b == sizeof x); std::memcpy(&b, &x, sizeof b); v.push_back(b); return *this; }
  bool operator==(const PlanKey& o) const { return v == o.v; }
};
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    size_t h = 1469598103934665603ull;
    for (int64_t x : k.v) h = (h ^ static_cast<size_t>(x)) * 1099511628211ull;
    return h;
  }
};

// Most plans each PlanCache keeps (one cache per op family and pass): least recently used plans
// beyond it are dropped, so workloads with ever new shapes (variable batch x sequence length) do
// not grow memory without bound. Default 256; set by the environment variable
// JAX_MPS_PLAN_CACHE_SIZE at load or jax_mps.set_plan_cache_size() at any time (0: no caching).
inline int64_t DefaultPlanCacheLimit() {
  const char* env = std::getenv("JAX_MPS_PLAN_CACHE_SIZE");
  if (!env || !*env) return 256;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  return (*end == '\0' && v >= 0) ? static_cast<int64_t>(v) : 256;
}
inline std::atomic<int64_t> g_plan_cache_limit{DefaultPlanCacheLimit()};
inline std::atomic<int64_t> g_plan_cache_entries{0};  // plans held by all caches together

// Plans (library primitives) are built once per shape/attribute set and reused across calls,
// least recently used first out (see g_plan_cache_limit). Callers hold the returned shared_ptr
// while they run the plan, so eviction by another thread never frees a plan in use. Plans must be
// safe to execute concurrently (oneDNN primitives are).
template <typename Plan>
class PlanCache {
 public:
  ~PlanCache() { g_plan_cache_entries -= static_cast<int64_t>(lru_.size()); }

  template <typename Make>
  std::shared_ptr<Plan> Get(const PlanKey& key, Make&& make) {
    return GetShared(key, [&] { return std::make_shared<Plan>(make()); });
  }

  // For plans built in place (not movable) by a build that can fail: build(Plan*) -> ffi::Error;
  // a failed build is returned and nothing is cached.
  template <typename Build>
  ::xla::ffi::Error GetBuilt(const PlanKey& key, Build&& build, std::shared_ptr<Plan>* out) {
    ::xla::ffi::Error err = ::xla::ffi::Error::Success();
    *out = GetShared(key, [&]() -> std::shared_ptr<Plan> {
      auto p = std::make_shared<Plan>();
      err = build(p.get());
      return err.failure() ? nullptr : p;
    });
    return err;
  }

 private:
  // make() returns a std::shared_ptr<Plan>; a null one is returned and not cached.
  template <typename Make>
  std::shared_ptr<Plan> GetShared(const PlanKey& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
    std::shared_ptr<Plan> plan = make();
    if (!plan) return plan;
    const size_t limit = static_cast<size_t>(std::max<int64_t>(g_plan_cache_limit.load(), 0));
    if (limit == 0) return plan;
    lru_.emplace_front(key, plan);
    index_.emplace(key, lru_.begin());
    ++g_plan_cache_entries;
    while (lru_.size() > limit) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
      --g_plan_cache_entries;
    }
    return plan;
  }

  using Entry = std::pair<PlanKey, std::shared_ptr<Plan>>;
  std::mutex mu_;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<PlanKey, typename std::list<Entry>::iterator, PlanKeyHash> index_;
};

}  // namespace jax_mps
