// The CPU backend's FFI table, handed to Python by module.cc.
#pragma once
#include <vector>

#include "runtime/backend.h"

namespace jax_mps {
const std::vector<Target>& CpuTargets();
}  // namespace jax_mps
