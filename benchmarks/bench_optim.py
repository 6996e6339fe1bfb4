"""Adam step on a 200-leaf, 25M-parameter tree: mps.optim.adam(...).apply (one fused in-place
runtime call) vs jitted optax.adam + optax.apply_updates with donated params and state.

    PYTHONPATH=src python benchmarks/bench_optim.py [--iters 60] [--params 25e6] [--leaves 200]

Runs alternate between the two so machine load hits both alike; prints median ms per step.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jax_mps as mps


def make_tree(n_leaves: int, total: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, 1.5, n_leaves)
    sizes = np.maximum(1, (w / w.sum() * total).astype(np.int64))
    sizes[np.argmax(sizes)] += total - sizes.sum()
    tree = {}
    for i, n in enumerate(sizes):
        cols = next(c for c in (512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if n % c == 0)
        tree[f"leaf{i:03d}"] = jnp.asarray(rng.normal(size=(int(n) // cols, cols)).astype(np.float32) * 0.02)
    return tree


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--params", type=float, default=25e6)
    ap.add_argument("--leaves", type=int, default=200)
    a = ap.parse_args()
    total = int(a.params)

    params = make_tree(a.leaves, total)
    grads = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(1).normal(size=p.shape), jnp.float32), params)
    n = sum(p.size for p in jax.tree.leaves(params))
    print(f"tree: {len(jax.tree.leaves(params))} leaves, {n / 1e6:.2f}M params; "
          f"cpu cores {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")

    opt = mps.optim.adam(1e-3)
    p1, s1 = jax.tree.map(jnp.copy, params), opt.init(params)

    ref = optax.adam(1e-3)

    def ref_step(p, s, g):
        u, s = ref.update(g, s, p)
        return optax.apply_updates(p, u), s

    ref_step = jax.jit(ref_step, donate_argnums=(0, 1))
    p2, s2 = jax.tree.map(jnp.copy, params), ref.init(params)

    for _ in range(3):  # compile + warm up
        p1, s1 = opt.apply(p1, grads, s1)
        p2, s2 = ref_step(p2, s2, grads)
    jax.block_until_ready((p1, s1, p2, s2))

    t_mps, t_ref = [], []
    for _ in range(a.iters):
        t = time.perf_counter()
        p1, s1 = opt.apply(p1, grads, s1)
        jax.block_until_ready(p1)
        t_mps.append(time.perf_counter() - t)
        t = time.perf_counter()
        p2, s2 = ref_step(p2, s2, grads)
        jax.block_until_ready(p2)
        t_ref.append(time.perf_counter() - t)

    err = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
    m, r = np.median(t_mps) * 1e3, np.median(t_ref) * 1e3
    print(f"mps.optim.adam.apply       median {m:8.2f} ms  (min {min(t_mps) * 1e3:.2f})")
    print(f"optax.adam + apply_updates median {r:8.2f} ms  (min {min(t_ref) * 1e3:.2f})")
    print(f"speed-up {r / m:.2f}x   max |param diff| after {a.iters + 3} steps: {err:.2e}")


if __name__ == "__main__":
    main()
