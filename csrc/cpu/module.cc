// The CPU extension module _jax_mps_cpu: the CPU FFI table, the contract's constants, the plan-cache
// controls (runtime/export.h), the CPU's scratch size and the allocator setting.
#include <dnnl.hpp>

#ifdef __GLIBC__
#include <malloc.h>
#endif

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
  // XLA:CPU allocates a step's buffers afresh on its own threads, and glibc serves large blocks of
  // threads' arenas with mmap and unmaps them on free: every step then faults in (and the kernel
  // zeroes) all of its memory again. InceptionV3's step at batch 8: 90k page faults and ~300 ms of
  // system time per 1.5 s step. One arena that keeps what is freed, large blocks included, reuses
  // the pages: 370 faults, 17 ms, the step 1576 -> 1360 ms. Takes effect for threads that allocate first
  // after the call (jax_mps calls it on import, before XLA's threads start).
  m.def("retain_freed_memory", [] {
#ifdef __GLIBC__
    return mallopt(M_ARENA_MAX, 1) == 1 && mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 &&
           mallopt(M_TRIM_THRESHOLD, 0x7fffffff) == 1;
#else
    return false;
#endif
  }, "glibc: one malloc arena that keeps freed memory mapped (see README); false where unsupported.");
}
