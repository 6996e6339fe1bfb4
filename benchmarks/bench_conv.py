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
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import jax_mps as mps  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def xla_conv(x, w, b, padding, act):
    y = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    return jax.nn.relu(y) if act else y


def xla_dense(x, w, b, act):
    y = jnp.dot(x, w) + b
    return jax.nn.relu(y) if act else y


# Layout maps between the JAX (NHWC / HWIO / (in, out)) and torch (NCHW / OIHW / (out, in)) arrays.
CONV_TO_TORCH = ((0, 3, 1, 2), (3, 2, 0, 1), (0,))
CONV_FROM_TORCH = ((0, 2, 3, 1), (2, 3, 1, 0), (0,))
DENSE_TO_TORCH = ((0, 1), (1, 0), (0,))


def torch_conv(padding, act):
    def f(x, w, b):
        y = F.conv2d(x, w, b, padding=padding)
        return F.relu(y) if act else y
    return f


def torch_dense(act):
    def f(x, w, b):
        y = F.linear(x, w, b)
        return F.relu(y) if act else y
    return f


def cases():
    """(name, jax args, grad argnums, mps fn, xla fn, torch fn, (to torch, from torch) axis perms)."""
    r = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    conv_p = (CONV_TO_TORCH, CONV_FROM_TORCH)
    yield ("conv1 28x28x1->6 5x5 SAME relu", (f(128, 28, 28, 1), f(5, 5, 1, 6), f(6)), (1, 2),
           lambda x, w, b: mps.conv2d(x, w, b, padding="SAME", activation="relu"),
           lambda x, w, b: xla_conv(x, w, b, "SAME", True), torch_conv(2, True), conv_p)
    yield ("conv2 14x14x6->16 5x5 VALID relu", (f(128, 14, 14, 6), f(5, 5, 6, 16), f(16)), (0, 1, 2),
           lambda x, w, b: mps.conv2d(x, w, b, padding="VALID", activation="relu"),
           lambda x, w, b: xla_conv(x, w, b, "VALID", True), torch_conv(0, True), conv_p)
    for i, o, act in [(400, 120, True), (120, 84, True), (84, 10, False)]:
        yield (f"dense {i}->{o}{' relu' if act else ''}", (f(128, i), f(i, o), f(o)), (0, 1, 2),
               lambda x, w, b, act=act: mps.dense(x, w, b, activation="relu" if act else None),
               lambda x, w, b, act=act: xla_dense(x, w, b, act), torch_dense(act),
               (DENSE_TO_TORCH, DENSE_TO_TORCH))


def to_torch(a, perm):
    return torch.from_numpy(np.array(a)).permute(*perm).contiguous()


def make_torch(kind, ft, a, argnums, perms, ct):
    """A no-argument torch callable doing the same work as the jitted JAX one, and a function that
    maps its result to the JAX layout (value, grads) for the check."""
    to, back = perms
    ta = [to_torch(v, p).requires_grad_(kind == "fwd+bwd" and i in argnums) for i, (v, p) in enumerate(zip(a, to))]
    tct = to_torch(ct, to[0])
    if kind == "fwd":
        def run():
            with torch.no_grad():
                return ft(*ta)
        return run, lambda y: [y.permute(*back[0]).numpy()]
    wrt = [ta[i] for i in argnums]

    def run():
        loss = torch.vdot(ft(*ta).reshape(-1), tct.reshape(-1))
        return loss, torch.autograd.grad(loss, wrt)
    return run, lambda r: [r[0].detach().numpy()] + [g.permute(*back[i]).numpy() for i, g in zip(argnums, r[1])]


CLOCK = time.perf_counter


def timed(fn, args, reps):
    out = []
    for _ in range(reps):
        t = CLOCK()
        jax.block_until_ready(fn(*args))
        out.append(CLOCK() - t)
    return out


def rel_err(us, vs):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))) / (np.max(np.abs(np.asarray(v))) + 1e-30))
               for u, v in zip(us, vs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    threads = int(os.environ["OMP_NUM_THREADS"])
    if torch is not None:
        torch.set_num_threads(threads)
    print(f"{'cpu' if args.cpu_time else 'wall'} time, OMP_NUM_THREADS={threads}  jax {jax.__version__}  "
          f"{jax.devices()[0].device_kind}  "
          + (f"torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch is not None
             else "torch not importable: its column is skipped"))
    print(f"medians of {max(args.reps // 20, 1) * 20}; speed-up of jax_mps = other time / jax_mps time")
    print(f"{'case':34s} {'pass':8s} {'mps us':>9s} {'xla us':>9s} {'torch us':>9s} {'vs xla':>7s} {'vs torch':>8s}")
    tot = {"mps": 0.0, "xla": 0.0, "torch": 0.0}
    for name, a, argnums, fm, fx, ft, perms in cases():
        ct = jax.random.normal(jax.random.key(1), jax.eval_shape(fx, *a).shape)
        for kind in ("fwd", "fwd+bwd"):
            def make(f):
                if kind == "fwd":
                    return jax.jit(f)
                return jax.jit(jax.value_and_grad(lambda *z: jnp.vdot(f(*z), ct), argnums=argnums))
            fns = {"mps": (make(fm), a), "xla": (make(fx), a)}
            ref = jax.tree.leaves(fns["xla"][0](*a))
            err = rel_err(jax.tree.leaves(fns["mps"][0](*a)), ref)
            assert err < 1e-4, f"{name} {kind}: mps and xla differ (rel err {err:.2e})"
            if torch is not None:
                run, to_jax = make_torch(kind, ft, a, argnums, perms, ct)
                fns["torch"] = (run, ())
                err = rel_err(to_jax(run()), ref)
                assert err < 1e-4, f"{name} {kind}: torch and xla differ (rel err {err:.2e})"
            for _ in range(10):
                for f, z in fns.values():
                    jax.block_until_ready(f(*z))
            ts = {n: [] for n in fns}
            for _ in range(max(args.reps // 20, 1)):  # interleave in blocks: all see the same noise
                for n, (f, z) in fns.items():
                    ts[n] += timed(f, z, 20)
            med = {n: np.median(v) * 1e6 for n, v in ts.items()}
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
