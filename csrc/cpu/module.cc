// The CPU extension module _jax_mps_cpu: the CPU FFI table, the contract's constants, and the CPU's
// plan-cache and scratch controls.
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
  m.def("set_plan_cache_size", [](int64_t n) { jax_mps::g_plan_cache_limit = n; },
        "Most plans each op family's plan cache keeps (least recently used dropped first).");
  m.def("plan_cache_size", [] { return jax_mps::g_plan_cache_limit.load(); });
  m.def("plan_cache_entries", [] { return jax_mps::g_plan_cache_entries.load(); },
        "Plans held by all plan caches together.");
  m.def("scratch_bytes", [] { return jax_mps::cpu::g_scratch_bytes.load(); },
        "Bytes of per-thread scratch held by all threads.");
}
