"""Adam step on a 200-leaf, 25M-parameter tree: mps.optim.adam(...).apply (one fused in-place
runtime call) vs jitted optax.adam + optax.apply_updates with donated params and state vs PyTorch
torch.optim.Adam over tensors of the same sizes (fused=True, torch's fastest CPU Adam; foreach=True
where fused is unsupported; --torch-impl picks).

    python benchmarks/bench_optim.py [--iters 40] [--params 25e6] [--leaves 200] [--torch-impl fused]

All start from the same params and use the same grads; after the warm-up steps the params are
checked to agree. Steps alternate (mps, optax, torch, mps, ...) so machine load hits all alike;
prints median ms per step and the speed-up of jax_mps (other time / jax_mps time).
torch.set_num_threads gets OMP_NUM_THREADS (default: all cores); without torch its row is skipped.
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

try:
    import torch
except ImportError:
    torch = None


def make_tree(n_leaves: int, total: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, 1.5, n_leaves)
    sizes = np.maximum(1, (w / w.sum() * total).astype(np.int64))
    sizes[np.argmax(sizes)] += total - sizes.sum()
    tree = {}
    for i, n in enumerate(sizes):
        cols = next(c for c in (512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if n % c == 0)
        tree[f"leaf{i:03d}"] = rng.normal(size=(int(n) // cols, cols)).astype(np.float32) * 0.02
    return tree


def to_jax(tree):
    """Fresh device arrays from a numpy tree (device_put: jnp.copy / jnp.asarray compile once per shape)."""
    return jax.tree.map(lambda p: jax.device_put(np.array(p)), tree)


def torch_adam(params, grads, lr, impl):
    """torch params (leaf order of the tree) with .grad set, and their Adam; impl falls back from
    fused to foreach where fused is unsupported. Returns (params, optimizer, impl used)."""
    tp = [torch.from_numpy(p.copy()).requires_grad_() for p in jax.tree.leaves(params)]
    for p, g in zip(tp, jax.tree.leaves(grads)):
        p.grad = torch.from_numpy(g.copy())
    if impl == "fused":
        try:  # probe on a dummy tensor: fused Adam on CPU needs a recent torch
            d = torch.zeros(1, requires_grad=True)
            d.grad = torch.zeros(1)
            torch.optim.Adam([d], lr, fused=True).step()
        except (RuntimeError, TypeError):
            impl = "foreach"
    return tp, torch.optim.Adam(tp, lr, **{impl: True}), impl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--params", type=float, default=25e6)
    ap.add_argument("--leaves", type=int, default=200)
    ap.add_argument("--torch-impl", choices=("fused", "foreach"), default="fused")
    a = ap.parse_args()
    total = int(a.params)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))

    params = make_tree(a.leaves, total)  # numpy; each side gets its own copy
    grads_np = jax.tree.map(lambda p: np.random.default_rng(1).normal(size=p.shape).astype(np.float32), params)
    grads = to_jax(grads_np)
    n = sum(p.size for p in jax.tree.leaves(params))
    print(f"tree: {len(jax.tree.leaves(params))} leaves, {n / 1e6:.2f}M params; "
          f"cpu cores {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")

    opt = mps.optim.adam(1e-3)
    p1 = to_jax(params)
    s1 = jax.jit(opt.init)(p1)  # one compile, not one jnp.zeros compile per leaf shape

    ref = optax.adam(1e-3)

    def ref_step(p, s, g):
        u, s = ref.update(g, s, p)
        return optax.apply_updates(p, u), s

    ref_step = jax.jit(ref_step, donate_argnums=(0, 1))
    p2 = to_jax(params)
    s2 = jax.jit(ref.init)(p2)

    if torch is not None:
        torch.set_num_threads(threads)
        tp, topt, impl = torch_adam(params, grads_np, 1e-3, a.torch_impl)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, torch.optim.Adam({impl}=True)")
    else:
        print("torch not importable: its row is skipped")

    warm = 3
    for _ in range(warm):  # compile + warm up
        p1, s1 = opt.apply(p1, grads, s1)
        p2, s2 = ref_step(p2, s2, grads)
        if torch is not None:
            topt.step()
    jax.block_until_ready((p1, s1, p2, s2))
    leaves = lambda p: [np.asarray(x) for x in jax.tree.leaves(p)]  # noqa: E731
    diff = lambda u, v: max(float(np.max(np.abs(x - y))) for x, y in zip(u, v))  # noqa: E731
    assert diff(leaves(p1), leaves(p2)) < 1e-5, "mps and optax disagree"
    if torch is not None:
        assert diff([p.detach().numpy() for p in tp], leaves(p2)) < 1e-5, "torch and optax disagree"

    t_mps, t_ref, t_torch = [], [], []
    for _ in range(a.iters):
        t = time.perf_counter()
        p1, s1 = opt.apply(p1, grads, s1)
        jax.block_until_ready(p1)
        t_mps.append(time.perf_counter() - t)
        t = time.perf_counter()
        p2, s2 = ref_step(p2, s2, grads)
        jax.block_until_ready(p2)
        t_ref.append(time.perf_counter() - t)
        if torch is not None:
            t = time.perf_counter()
            topt.step()
            t_torch.append(time.perf_counter() - t)

    err = diff(leaves(p1), leaves(p2))
    m, r = np.median(t_mps) * 1e3, np.median(t_ref) * 1e3
    print(f"mps.optim.adam.apply       median {m:8.2f} ms  (min {min(t_mps) * 1e3:.2f})")
    print(f"optax.adam + apply_updates median {r:8.2f} ms  (min {min(t_ref) * 1e3:.2f})   "
          f"speed-up of jax_mps {r / m:.2f}x")
    if torch is not None:
        t = np.median(t_torch) * 1e3
        print(f"torch.optim.Adam {impl:9s} median {t:8.2f} ms  (min {min(t_torch) * 1e3:.2f})   "
              f"speed-up of jax_mps {t / m:.2f}x")
        terr = diff([p.detach().numpy() for p in tp], leaves(p2))
    print(f"max |param diff| vs optax after {a.iters + warm} steps: mps {err:.2e}"
          + (f", torch {terr:.2e}" if torch is not None else ""))


if __name__ == "__main__":
    main()
