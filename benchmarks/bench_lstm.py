"""LSTM forward+backward (value_and_grad under jit): jax_mps vs the same LSTM as lax.scan in XLA.

Not a test. One process; both implementations are warmed up, then timed interleaved (A, B, A, B,
...) so load from other processes hits both alike; prints medians and the XLA / jax_mps ratio.
Usage: python benchmarks/bench_lstm.py [--reps 30]
"""
from __future__ import annotations

import argparse
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


def mps_lstm(x, p):
    y, (h, c) = mps.lstm(x, [[p]])
    return y, h[0], c[0]


def make_step(fn):
    def loss(p, x):
        y, h, c = fn(x, p)
        return jnp.mean(y**2) + jnp.mean(h) + jnp.mean(c)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


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
        f_mps, f_xla = make_step(mps_lstm), make_step(xla_lstm)
        # Same math: compare once before timing.
        (l1, g1), (l2, g2) = f_mps(p, x), f_xla(p, x)
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
        for _ in range(3):
            timed(f_mps, p, x)
            timed(f_xla, p, x)
        tm, tx = [], []
        for _ in range(args.reps):
            tm.append(timed(f_mps, p, x))
            tx.append(timed(f_xla, p, x))
        mm, mx = np.median(tm) * 1e3, np.median(tx) * 1e3
        print(f"T{T} B{B} I{I} H{H}: jax_mps {mm:8.2f} ms   XLA lax.scan {mx:8.2f} ms   "
              f"speed-up {mx / mm:5.2f}x   (|loss diff| {abs(float(l1 - l2)):.1e}, max |grad diff| {err:.1e})")


if __name__ == "__main__":
    main()
