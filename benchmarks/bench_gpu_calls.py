"""Per-call cost of each runtime call at tiny sizes, where launch and host overhead dominate: one
jit of K chained calls, median time / K. Tells which calls carry host work (plan lookups, cuDNN's
legacy-API setup, workspace handling) beyond the launches, next to XLA-native forms of the same
chains (which XLA may fuse, so theirs are floors, not like-for-like).
Run: python benchmarks/bench_gpu_calls.py [--k 40] [--steps 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_mps as mps

ap = argparse.ArgumentParser()
ap.add_argument("--k", type=int, default=40)
ap.add_argument("--steps", type=int, default=30)
args = ap.parse_args()
K = args.k


def per_call_us(f, *xs):
    f = jax.jit(f)
    for _ in range(3):
        jax.block_until_ready(f(*xs))
    ts = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*xs))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) / K * 1e6


def chain(op):
    def f(x, *rest):
        for _ in range(K):
            x = op(x, *rest)
        return x
    return f


def grad_chain(op):
    return jax.grad(lambda x, *rest: jnp.sum(chain(op)(x, *rest)))


rng = np.random.default_rng(0)
x4 = jnp.asarray(rng.normal(size=(8, 8, 8, 8)), jnp.float32)
w3 = jnp.asarray(rng.normal(size=(3, 3, 8, 8)) * 0.1, jnp.float32)
b8 = jnp.zeros(8)
x2 = jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)
w2 = jnp.asarray(rng.normal(size=(64, 64)) * 0.1, jnp.float32)
b64 = jnp.zeros(64)
ones8 = jnp.ones(8)

xconv = lambda x, w, b: jax.nn.relu(lax.conv_general_dilated(  # noqa: E731
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b)
CASES = {
    "activation relu": (lambda x: mps.activation(x, "relu"), jax.nn.relu, (x4,)),
    "conv2d 3x3 +bias+relu": (lambda x, w, b: mps.conv2d(x, w, b, padding="SAME", activation="relu"), xconv,
                             (x4, w3, b8)),
    "dense +bias+relu": (lambda x, w, b: mps.dense(x, w, b, activation="relu"),
                         lambda x, w, b: jax.nn.relu(x @ w + b), (x2, w2, b64)),
    "batch_norm +relu": (lambda x, s, b: mps.batch_norm(x, s, b, activation="relu")[0],
                         lambda x, s, b: jax.nn.relu((x - x.mean((0, 1, 2))) * lax.rsqrt(x.var((0, 1, 2)) + 1e-5)
                                                     * s + b), (x4, ones8, b8)),
    "max_pool2d 3x3 s1": (lambda x: mps.max_pool2d(x, 3, 1, padding="SAME"),
                          lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME"),
                          (x4,)),
}


def main():
    print(f"{jax.devices()[0].device_kind}: us per call, median of {args.steps} runs of {K} chained calls")
    print(f"{'call':28s} {'fwd mps':>9s} {'fwd XLA':>9s} {'fwd+bwd mps':>12s} {'fwd+bwd XLA':>12s}")
    for name, (ours, theirs, xs) in CASES.items():
        row = [per_call_us(chain(ours), *xs), per_call_us(chain(theirs), *xs),
               per_call_us(grad_chain(ours), *xs), per_call_us(grad_chain(theirs), *xs)]
        print(f"{name:28s} {row[0]:9.1f} {row[1]:9.1f} {row[2]:12.1f} {row[3]:12.1f}", flush=True)
    # one fused optimizer step over a LeNet-sized tree (10 leaves)
    params = {f"p{i}": jnp.ones((64, 64)) for i in range(10)}
    opt = mps.optim.adam(1e-3)
    state = opt.init(params)
    step = jax.jit(lambda p, s: opt.apply(p, p, s))
    for _ in range(3):
        params, state = step(params, state)
    ts = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        params, state = step(params, state)
        jax.block_until_ready(params)
        ts.append(time.perf_counter() - t0)
    print(f"{'adam step (10 leaves, jit)':28s} {statistics.median(ts) * 1e6:9.1f} us per step")


if __name__ == "__main__":
    main()
