"""Conv / dense fwd and fwd+bwd at LeNet-5 sizes (batch 128): jax_mps vs XLA-native JAX (jitted
lax.conv_general_dilated / jnp.dot) vs PyTorch (CPU, torch.nn.functional.conv2d / linear).

Run: OMP_NUM_THREADS=2 python benchmarks/bench_conv.py [--reps N] [--cpu-time]
One process; every case is first checked to give the same result on all sides, warmed up, then
timed interleaved in blocks of 20 (mps, xla, torch, mps, ...); prints medians and the speed-up of
jax_mps (other / mps) vs XLA and vs torch. fwd+bwd is jitted value_and_grad of <y, ct> in JAX and
the same loss through torch.autograd.grad; the first-layer conv takes no dx (x is data), on all
sides. torch runs NCHW / OIHW tensors (its native layout) converted outside the timed region, with
torch.set_num_threads(OMP_NUM_THREADS); without torch its column is skipped. On a shared, loaded
machine wall times swing wildly: use --cpu-time with OMP_NUM_THREADS=1 and XLA single-threaded
(process CPU time then measures work).
"""
from __future__ import annotations

import argparse

# First: _harness sets the OMP_NUM_THREADS default before jax_mps loads its runtime.
from _harness import (CONV_PERMS, DENSE_TO_TORCH, add_timing_args, bench_case, setup, torch, torch_conv,
                      torch_dense, xla_conv, xla_dense)

import jax.numpy as jnp
import numpy as np

import jax_mps as mps


def cases():
    """(name, jax args, grad argnums, mps fn, xla fn, torch fn, (to torch, from torch) axis perms)."""
    r = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    yield ("conv1 28x28x1->6 5x5 SAME relu", (f(128, 28, 28, 1), f(5, 5, 1, 6), f(6)), (1, 2),
           lambda x, w, b: mps.conv2d(x, w, b, padding="SAME", activation="relu"),
           lambda x, w, b: xla_conv(x, w, b, "SAME", True), torch_conv(2, True), CONV_PERMS)
    yield ("conv2 14x14x6->16 5x5 VALID relu", (f(128, 14, 14, 6), f(5, 5, 6, 16), f(16)), (0, 1, 2),
           lambda x, w, b: mps.conv2d(x, w, b, padding="VALID", activation="relu"),
           lambda x, w, b: xla_conv(x, w, b, "VALID", True), torch_conv(0, True), CONV_PERMS)
    for i, o, act in [(400, 120, True), (120, 84, True), (84, 10, False)]:
        yield (f"dense {i}->{o}{' relu' if act else ''}", (f(128, i), f(i, o), f(o)), (0, 1, 2),
               lambda x, w, b, act=act: mps.dense(x, w, b, activation="relu" if act else None),
               lambda x, w, b, act=act: xla_dense(x, w, b, act), torch_dense(act),
               (DENSE_TO_TORCH, DENSE_TO_TORCH))


def main():
    ap = argparse.ArgumentParser()
    add_timing_args(ap, reps=200)
    args = ap.parse_args()
    setup(args)
    print(f"medians of {max(args.reps // 20, 1) * 20}; speed-up of jax_mps = other time / jax_mps time")
    print(f"{'case':34s} {'pass':8s} {'mps us':>9s} {'xla us':>9s} {'torch us':>9s} {'vs xla':>7s} {'vs torch':>8s}")
    tot = {"mps": 0.0, "xla": 0.0, "torch": 0.0}
    for name, a, argnums, fm, fx, ft, perms in cases():
        for kind in ("fwd", "fwd+bwd"):
            med = bench_case(name, kind, a, argnums, fm, fx, ft, perms, args.reps)
            if kind == "fwd+bwd":
                for n in med:
                    tot[n] += med[n]
            m = med["mps"]
            tcol = f"{med['torch']:9.1f}" if "torch" in med else f"{'-':>9s}"
            rcol = f"{med['torch'] / m:8.2f}" if "torch" in med else f"{'-':>8s}"
            print(f"{name:34s} {kind:8s} {m:9.1f} {med['xla']:9.1f} {tcol} {med['xla'] / m:7.2f} {rcol}")
    m = tot["mps"]
    tcol, rcol = (f"{tot['torch']:.1f}", f"{tot['torch'] / m:.2f}") if torch is not None else ("-", "-")
    print(f"{'sum of fwd+bwd':34s} {'':8s} {m:9.1f} {tot['xla']:9.1f} {tcol:>9s} {tot['xla'] / m:7.2f} {rcol:>8s}")


if __name__ == "__main__":
    main()
