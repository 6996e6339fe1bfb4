#include "runtime/registry.h"

namespace jax_mps {
std::vector<Target>& Registry() {
  static std::vector<Target> table;  // function-local: safe against static-init order
  return table;
}
}  // namespace jax_mps
