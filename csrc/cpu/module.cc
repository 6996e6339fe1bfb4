// The CPU extension module _jax_mps_cpu: the CPU FFI table, the contract's constants, the plan-cache
// controls (runtime/export.h) and the CPU's scratch size.
#include <dnnl.hpp>

#include "cpu/kernel_util.h"
#include "cpu/targets.h"
#include "runtime/common.h"
#include "runtime/export.h"

NB_MODULE(_jax_mps_cpu, m) {
  const dnnl_version_t* v = dnnl_version();
  jax_mps::ExportContract(m, jax_mps::CpuTargets(), "cpu", "cpu",
                          "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                              std::to_string(v->patch));
  m.def("scratch_bytes", [] { return jax_mps::cpu::g_scratch_bytes.load(); },
        "Bytes of per-thread scratch held by all threads.");
}
