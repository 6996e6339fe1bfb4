// The CPU backend's FFI table: every handler of runtime/targets.def instantiated for Cpu, in one
// explicit list (no static-initialisation self-registration a linker could drop).
#include "cpu/targets.h"

#include "cpu/backend.h"

namespace jax_mps {

#define JAX_MPS_TARGET(name, H) XLA_FFI_DEFINE_HANDLER_SYMBOL(kCpu_##name, H<Cpu>, H##Binding<Cpu>());
#include "runtime/targets.def"
#undef JAX_MPS_TARGET

const std::vector<Target>& CpuTargets() {
  static const std::vector<Target> table = {
#define JAX_MPS_TARGET(name, H) {"jax_mps_" #name, reinterpret_cast<void*>(kCpu_##name)},
#include "runtime/targets.def"
#undef JAX_MPS_TARGET
  };
  return table;
}

}  // namespace jax_mps
