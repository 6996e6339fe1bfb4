"""Bounded plan caches and per-thread scratch (issue 17): an LRU limit that is documented and
settable (JAX_MPS_PLAN_CACHE_SIZE, jax_mps.set_plan_cache_size), and scratch that shrinks once
calls need far less. The memory checks run in a fresh process so that other tests' plans and
scratch do not blur them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import jax_mps as mps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, env: dict) -> dict:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_set_plan_cache_size():
    old = mps.plan_cache_size()
    try:
        mps.set_plan_cache_size(7)
        assert mps.plan_cache_size() == 7
        mps.set_plan_cache_size(0)  # 0: plans are built per call and not kept
        assert mps.plan_cache_size() == 0
        import jax.numpy as jnp
        assert float(mps.dense(jnp.ones((3, 2)), jnp.ones((2, 4))).sum()) == 24.0
    finally:
        mps.set_plan_cache_size(old)
    for bad in (-1, 1.5, "8", True):
        with pytest.raises(ValueError):
            mps.set_plan_cache_size(bad)


MEMORY_SCRIPT = """
import json, os, resource, jax, jax.numpy as jnp, numpy as np
import jax_mps as mps
# The plans of the backend under test: each backend module keeps its own caches.
core = mps._runtime._cuda if os.environ["JAX_MPS_TEST_BACKEND"] == "cuda" else mps._runtime._core
jax.config.update("jax_default_device", jax.devices(os.environ["JAX_MPS_TEST_BACKEND"])[0])

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

# dense 256 -> 256 over 500 distinct row counts, XLA's caches cleared after each (as a workload
# with ever new batch x sequence shapes): unbounded, the runtime's plans alone grew RSS by ~24 MB
# per 100 shapes.
w = jnp.ones((256, 256), jnp.float32) / 256
xs = np.ones((520, 256), np.float32)
f = jax.jit(lambda a, b: mps.dense(a, b, activation="relu"))
for m in range(1, 21):  # warm-up: fixed costs of XLA and the runtime
    f(xs[:m], w).block_until_ready()
    jax.clear_caches()
before = rss_mb()
for m in range(21, 521):
    f(xs[:m], w).block_until_ready()
    jax.clear_caches()
print(json.dumps({"limit": mps.plan_cache_size(), "entries": int(core.plan_cache_entries()),
                  "growth_mb": rss_mb() - before}))
"""


def test_500_shapes_bounded_by_lru(backend):
    r = _run(MEMORY_SCRIPT, {"JAX_MPS_PLAN_CACHE_SIZE": "16", "JAX_MPS_TEST_BACKEND": backend})
    assert r["limit"] == 16  # read from the environment at load
    assert 0 < r["entries"] <= 16  # dense's plans share one cache
    # RSS is printed, not asserted: in a fresh venv (2026-12-02, also at 8c40000) the 500 compiles
    # grow it by 50-80 MB whatever the plan limit (unbounded plans: ~61 MB), so RSS no longer
    # tells the LRU's effect; the entry count above does.
    print(r)


SCRATCH_SCRIPT = """
import json, time, jax, jax.numpy as jnp
import jax_mps as mps, _jax_mps_cpu as core

def grad_lstm(B, T, H):
    p = mps.init_lstm(jax.random.key(0), H, H)
    x = jnp.ones((B, T, H)) * 0.1
    f = jax.jit(jax.grad(lambda x: jnp.sum(mps.lstm(x, p)[0])))
    return lambda: f(x).block_until_ready()

big, small = grad_lstm(32, 200, 128), grad_lstm(2, 4, 8)
big()
peak = int(core.scratch_bytes())
small()
after_one = int(core.scratch_bytes())
time.sleep(1.2)  # scratch shrinks only after a second without big requests (no churn within a step)
for _ in range(40):
    small()
settled = int(core.scratch_bytes())
big()
again = int(core.scratch_bytes())
print(json.dumps({"peak": peak, "after_one": after_one, "settled": settled, "again": again}))
"""


@pytest.mark.cpu_only  # the CPU's per-thread scratch (CUDA keeps one workspace per stream, csrc/cuda/common.cuh)
def test_scratch_shrinks_after_small_calls():
    # Scratch is per thread and shrinks on its own thread's later small requests. XLA picks the
    # thread of each execution: on a loaded machine the big call's thread sometimes runs none of
    # the small calls and keeps its buffer until it runs again (seen ~1 run in 3 under a load of
    # 2 on 2 cores). So the script gets a few tries; one in which the big call's thread ran the
    # small calls must show the shrink.
    for _ in range(5):
        r = _run(SCRATCH_SCRIPT, {})
        if r["settled"] < 2 << 20:
            break
    assert r["peak"] > 8 << 20, r  # the big gradient needed > 8 MiB of scratch
    assert r["after_one"] >= r["peak"] // 2, r  # one small call keeps it (no churn between sizes)
    assert r["settled"] < 2 << 20, r  # many small calls give it back
    assert r["again"] >= r["peak"] // 2, r


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc only")
def test_freed_memory_is_retained():
    # XLA allocates a step's buffers afresh on its own threads: with the setting, a 64 MiB block
    # malloc'd on a thread comes from the heap (kept mapped when freed), not from an mmap of its
    # own that free unmaps; JAX_MPS_RETAIN_MEMORY=0 leaves glibc as it is.
    code = """
        import ctypes, json, threading
        import jax_mps
        libc = ctypes.CDLL(None)
        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
        libc.mallinfo2.restype = Info
        libc.malloc.restype = ctypes.c_void_p
        out = {}
        def work():
            p = libc.malloc(64 << 20)
            out["mmapped"] = libc.mallinfo2().hblkhd
            libc.free(ctypes.c_void_p(p))
        t = threading.Thread(target=work); t.start(); t.join()
        print(json.dumps(out))
    """
    assert _run(code, {})["mmapped"] < (64 << 20)
    assert _run(code, {"JAX_MPS_RETAIN_MEMORY": "0"})["mmapped"] >= (64 << 20)
