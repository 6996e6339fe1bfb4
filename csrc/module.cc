// The Python extension: hands the FFI target table and build info to jax_mps/_runtime.py.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <dnnl.hpp>

#include "cpu/kernel_util.h"
#include "runtime/common.h"
#include "runtime/registry.h"

namespace nb = nanobind;

NB_MODULE(_jax_mps_cpu, m) {
  m.def("registrations", [] {
    nb::list out;
    for (const auto& t : jax_mps::Registry())
      out.append(nb::make_tuple(t.name, t.platform, nb::capsule(t.handler)));
    return out;
  }, "List of (target name, platform, handler capsule) for every FFI target built.");
  m.def("backends", [] {
    nb::dict d;
    const dnnl_version_t* v = dnnl_version();
    d["cpu"] = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
               std::to_string(v->patch);
    return d;
  }, "Backends compiled into this build and their libraries.");
  m.def("set_plan_cache_size", [](int64_t n) { jax_mps::g_plan_cache_limit = n; },
        "Most plans each op family's plan cache keeps (least recently used dropped first).");
  m.def("plan_cache_size", [] { return jax_mps::g_plan_cache_limit.load(); });
  m.def("plan_cache_entries", [] { return jax_mps::g_plan_cache_entries.load(); },
        "Plans held by all plan caches together.");
  m.def("scratch_bytes", [] { return jax_mps::cpu::g_scratch_bytes.load(); },
        "Bytes of per-thread scratch held by all threads.");
}
