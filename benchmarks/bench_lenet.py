"""LeNet-5 training step (batch 128, 28x28x1, Adam via optax): jax_mps vs XLA-native JAX vs PyTorch.

Same model, same data, one process; each step timed to completion after warm-up; median of
--steps steps. Run: python benchmarks/bench_lenet.py [--steps 50] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=50)
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--json", default=None, help="write the figures here")
args = ap.parse_args()
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared models
import _gpu_models as xm  # noqa: E402
import _mps_models as mm  # noqa: E402

# The models shared with bench_gpu.py (whose --cpu mode times the larger CPU steps).
init, xla_loss, mps_loss = xm.lenet_init, xm.lenet_loss, mm.lenet_mps


def make_step(loss_fn, opt):
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss
    return jax.jit(step, donate_argnums=(0, 1))


def time_jax(loss_fn, xs, ys):
    opt = optax.adam(1e-3)
    p = init(jax.random.key(0))
    s = opt.init(p)
    step = make_step(loss_fn, opt)
    for i in range(5):
        p, s, loss = step(p, s, xs[i % len(xs)], ys[i % len(ys)])
    jax.block_until_ready(p)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        p, s, loss = step(p, s, xs[i % len(xs)], ys[i % len(ys)])
        jax.block_until_ready((p, loss))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_torch(xs, ys):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(args.threads)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    txs = [torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous() for x in xs]
    tys = [torch.from_numpy(np.array(y)).long() for y in ys]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    for i in range(5):
        step(txs[i % len(txs)], tys[i % len(tys)])
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(txs[i % len(txs)], tys[i % len(tys)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.standard_normal((args.batch, 28, 28, 1), np.float32)) for _ in range(4)]
    ys = [jnp.asarray(rng.integers(0, 10, args.batch, dtype=np.int32)) for _ in range(4)]
    t_mps = time_jax(mps_loss, xs, ys)
    t_xla = time_jax(xla_loss, xs, ys)
    t_torch = time_torch(xs, ys)
    res = {"batch": args.batch, "threads": args.threads, "jax_mps_ms": t_mps * 1e3, "xla_ms": t_xla * 1e3,
           "torch_ms": None if t_torch is None else t_torch * 1e3}
    print(f"LeNet-5 training step, batch {args.batch}, {args.threads} threads, median of {args.steps}")
    print(f"  jax_mps     {t_mps * 1e3:8.2f} ms")
    print(f"  XLA native  {t_xla * 1e3:8.2f} ms   speed-up of jax_mps: {t_xla / t_mps:.2f}x")
    if t_torch is not None:
        print(f"  PyTorch     {t_torch * 1e3:8.2f} ms   speed-up of jax_mps: {t_torch / t_mps:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
