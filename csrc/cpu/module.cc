// The CPU extension module _jax_mps_cpu: the CPU FFI table and the contract's constants.
#include <dnnl.hpp>

#include "cpu/targets.h"
#include "runtime/export.h"

NB_MODULE(_jax_mps_cpu, m) {
  const dnnl_version_t* v = dnnl_version();
  jax_mps::ExportContract(m, jax_mps::CpuTargets(), "cpu", "cpu",
                          "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                              std::to_string(v->patch));
}
