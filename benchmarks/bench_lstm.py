"""LSTM forward+backward: jax_mps vs the same LSTM as lax.scan in XLA vs torch.nn.LSTM (CPU).

Not a test. One process; every implementation is warmed up, then timed interleaved (A, B, C, A,
...) so load from other processes hits all alike; prints medians and other / jax_mps ratios.
Two XLA baselines (value_and_grad under jit): the input projection hoisted out of the scan (the
stronger one) and both projections inside the step (as flax's LSTMCell under nn.scan). PyTorch:
torch.nn.LSTM with the same weights, the same loss and backward, torch.set_num_threads matching
OMP_NUM_THREADS (default: all cores).
Usage: python benchmarks/bench_lstm.py [--reps 30]
The runtime's threads (OMP_NUM_THREADS) each run a slice of the batch with no per-step barrier; on a
machine shared with other load, compare the ratios of one run rather than absolute times.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_mps as mps

SIZES = [(20, 32, 64, 200), (100, 64, 256, 256)]  # (T, B, I, H)


def xla_lstm(x, p):
    """torch.nn.LSTM equations, batch-major x (B, T, I); input projection hoisted out of the scan."""
    B = x.shape[0]
    H = p["w_hh"].shape[0]
    gx = jnp.einsum("bti,ig->tbg", x, p["w_ih"]) + p["b_ih"] + p["b_hh"]

    def step(carry, g):
        h, c = carry
        g = g + h @ p["w_hh"]
        i, f, gg, o = jnp.split(g, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    z = jnp.zeros((B, H), x.dtype)
    (h, c), ys = lax.scan(step, (z, z), gx)
    return jnp.swapaxes(ys, 0, 1), h, c


def xla_lstm_cell(x, p):
    """The same LSTM with both projections inside the step, as flax's LSTMCell under nn.scan."""
    B = x.shape[0]
    H = p["w_hh"].shape[0]

    def step(carry, xt):
        h, c = carry
        g = xt @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"]
        i, f, gg, o = jnp.split(g, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    z = jnp.zeros((B, H), x.dtype)
    (h, c), ys = lax.scan(step, (z, z), jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1), h, c


def mps_lstm(x, p):
    y, (h, c) = mps.lstm(x, [[p]])
    return y, h[0], c[0]


def make_step(fn):
    def loss(p, x):
        y, h, c = fn(x, p)
        return jnp.mean(y**2) + jnp.mean(h) + jnp.mean(c)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def torch_step(p, x):
    """The same loss and gradients with torch.nn.LSTM (None when torch is missing)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    I, G = p["w_ih"].shape
    m = torch.nn.LSTM(I, G // 4, batch_first=True)
    with torch.no_grad():
        for name, v in [("weight_ih_l0", p["w_ih"].T), ("weight_hh_l0", p["w_hh"].T), ("bias_ih_l0", p["b_ih"]),
                        ("bias_hh_l0", p["b_hh"])]:
            getattr(m, name).copy_(torch.from_numpy(np.array(v)))
    xt = torch.from_numpy(np.array(x)).requires_grad_(True)

    def step(*_):
        m.zero_grad(set_to_none=True)
        xt.grad = None
        y, (h, c) = m(xt)
        loss = (y**2).mean() + h.mean() + c.mean()
        loss.backward()
        return loss.detach(), (m.weight_ih_l0.grad.T, xt.grad)

    return step


def timed(f, *args):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}, backends {mps.backends()}")
    for T, B, I, H in SIZES:
        key = jax.random.key(0)
        p = mps.init_lstm(key, I, H)[0][0]
        x = jax.random.normal(jax.random.key(1), (B, T, I), jnp.float32)
        fns = {"jax_mps": make_step(mps_lstm), "XLA scan (hoisted x-proj)": make_step(xla_lstm),
               "XLA scan (per-step cell)": make_step(xla_lstm_cell)}
        # Same math: compare once before timing.
        (l0, g0) = fns["jax_mps"](p, x)
        for name, f in fns.items():
            l1, g1 = f(p, x)
            err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
            assert err < 1e-4 and abs(float(l1 - l0)) < 1e-4, (name, err)
        ts = torch_step(p, x)
        if ts is None:
            print("  (torch not installed: no PyTorch column)")
        else:
            lt, (gw, gx) = ts()
            err = max(float(np.max(np.abs(gw.numpy() - np.array(g0[0]["w_ih"])))),
                      float(np.max(np.abs(gx.numpy() - np.array(g0[1])))))
            assert err < 1e-4 and abs(float(lt) - float(l0)) < 1e-4, ("torch", err)
            fns["PyTorch nn.LSTM"] = ts
        times = {n: [] for n in fns}
        for rep in range(3 + args.reps):  # 3 warm-up rounds, then interleaved timing
            for n, f in fns.items():
                t = timed(f, p, x)
                if rep >= 3:
                    times[n].append(t)
        med = {n: np.median(v) * 1e3 for n, v in times.items()}
        print(f"T{T} B{B} I{I} H{H} (median of {args.reps}):")
        for n, m in med.items():
            print(f"  {n:28s} {m:9.2f} ms   speed-up of jax_mps {m / med['jax_mps']:5.2f}x")

if __name__ == "__main__":
    main()
