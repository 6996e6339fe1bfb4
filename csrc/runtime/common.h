// Backend-neutral helpers shared by every op: FFI aliases, error macros, shape helpers, plan cache.
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jax_mps {

using Dims = std::vector<int64_t>;

inline Dims ToDims(ffi::Span<const int64_t> s) { return Dims(s.begin(), s.end()); }

inline int64_t Numel(ffi::Span<const int64_t> d) {
  int64_t n = 1;
  for (int64_t v : d) n *= v;
  return n;
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

// Plans (library primitives) are built once per shape/attribute set and reused across calls.
// Plans must be safe to execute concurrently (oneDNN primitives are).
template <typename Plan>
class PlanCache {
 public:
  template <typename Make>
  std::shared_ptr<Plan> Get(const PlanKey& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    auto plan = std::make_shared<Plan>(make());
    cache_.emplace(key, plan);
    return plan;
  }

 private:
  std::mutex mu_;
  std::unordered_map<PlanKey, std::shared_ptr<Plan>, PlanKeyHash> cache_;
};

}  // namespace jax_mps
