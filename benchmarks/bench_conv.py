"""Conv / dense fwd+bwd at LeNet-5 sizes (batch 128): jax_mps vs XLA-native (jitted lax / jnp.dot).

Run: OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_conv.py [--reps N]
Times are medians over interleaved runs of jitted value_and_grad (first-layer conv takes no dx,
as in training where x is data). On a shared, loaded machine wall times swing wildly: use
--cpu-time with OMP_NUM_THREADS=1 and XLA single-threaded (process CPU time then measures work).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import jax_mps as mps  # noqa: E402


def xla_conv(x, w, b, padding, act):
    y = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    return jax.nn.relu(y) if act else y


def xla_dense(x, w, b, act):
    y = jnp.dot(x, w) + b
    return jax.nn.relu(y) if act else y


def cases():
    r = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    yield ("conv1 28x28x1->6 5x5 SAME relu", (f(128, 28, 28, 1), f(5, 5, 1, 6), f(6)), (1, 2),
           lambda x, w, b: mps.conv2d(x, w, b, padding="SAME", activation="relu"),
           lambda x, w, b: xla_conv(x, w, b, "SAME", True))
    yield ("conv2 14x14x6->16 5x5 VALID relu", (f(128, 14, 14, 6), f(5, 5, 6, 16), f(16)), (0, 1, 2),
           lambda x, w, b: mps.conv2d(x, w, b, padding="VALID", activation="relu"),
           lambda x, w, b: xla_conv(x, w, b, "VALID", True))
    for i, o, act in [(400, 120, True), (120, 84, True), (84, 10, False)]:
        yield (f"dense {i}->{o}{' relu' if act else ''}", (f(128, i), f(i, o), f(o)), (0, 1, 2),
               lambda x, w, b, act=act: mps.dense(x, w, b, activation="relu" if act else None),
               lambda x, w, b, act=act: xla_dense(x, w, b, act))


CLOCK = time.perf_counter


def timed(fn, args, reps):
    out = []
    for _ in range(reps):
        t = CLOCK()
        jax.block_until_ready(fn(*args))
        out.append(CLOCK() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    print(f"{'cpu' if args.cpu_time else 'wall'} time, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}  jax {jax.__version__}  {jax.devices()[0].device_kind}")
    print(f"{'case':38s} {'pass':8s} {'mps us':>9s} {'xla us':>9s} {'xla/mps':>8s}")
    tot = {"mps": 0.0, "xla": 0.0}
    for name, a, argnums, fm, fx in cases():
        ct = jax.random.normal(jax.random.key(1), jax.eval_shape(fx, *a).shape)
        for kind in ("fwd", "fwd+bwd"):
            def make(f):
                if kind == "fwd":
                    return jax.jit(f)
                return jax.jit(jax.value_and_grad(lambda *z: jnp.vdot(f(*z), ct), argnums=argnums))
            jm, jx = make(fm), make(fx)
            for _ in range(10):
                jax.block_until_ready(jm(*a)), jax.block_until_ready(jx(*a))
            tm, tx = [], []
            for _ in range(max(args.reps // 20, 1)):  # interleave in blocks: both see the same noise
                tm += timed(jm, a, 20)
                tx += timed(jx, a, 20)
            m, x = np.median(tm) * 1e6, np.median(tx) * 1e6
            err = max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-30))
                      for u, v in zip(jax.tree.leaves(jm(*a)), jax.tree.leaves(jx(*a))))
            assert err < 1e-4, f"{name} {kind}: mps and xla differ (rel err {err:.2e})"
            if kind == "fwd+bwd":
                tot["mps"] += m
                tot["xla"] += x
            print(f"{name:38s} {kind:8s} {m:9.1f} {x:9.1f} {x / m:8.2f}")
    print(f"{'sum of fwd+bwd':38s} {'':8s} {tot['mps']:9.1f} {tot['xla']:9.1f} {tot['xla'] / tot['mps']:8.2f}")


if __name__ == "__main__":
    main()
