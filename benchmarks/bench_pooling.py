"""Max / average pooling, forward and forward+backward: jax_mps vs XLA-native lax.reduce_window vs PyTorch.

Not a test. One process; the JAX implementations are jitted (torch runs eagerly on NCHW tensors),
checked against each other once, warmed up, then timed interleaved (A, B, C, A, B, C, ...) so load
from other processes hits all alike, each sample the mean of ~2 ms of calls run one after another
to completion; prints medians and the speed-up of jax_mps over each.
"fwd" is the primal alone (nothing differentiated), "fwd+bwd" the gradient of sum(pool(x)**2).
Usage: python benchmarks/bench_pooling.py [--reps 10] [--threads 2] [--only max]
On a machine shared with other load, compare the ratios of one run rather than absolute times.
"""
from __future__ import annotations

import argparse
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--reps", type=int, default=10)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--only", default="", help="run only the cases whose label contains this")
args = ap.parse_args()
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import jax_mps as mps  # noqa: E402

# (op, NHWC shape, window, stride, symmetric padding, count_include_pad)
CASES = [
    ("avg", (128, 28, 28, 6), 2, 2, 0, True),   # LeNet sizes
    ("avg", (128, 10, 10, 16), 2, 2, 0, True),
    ("max", (128, 28, 28, 6), 2, 2, 0, None),
    ("max", (128, 10, 10, 16), 2, 2, 0, None),
    ("max", (8, 35, 35, 192), 3, 1, 1, None),    # Inception-style 3x3/1 SAME
    ("max", (32, 17, 17, 768), 3, 1, 1, None),
    ("avg", (8, 35, 35, 192), 3, 1, 1, False),
    ("avg", (32, 17, 17, 768), 3, 1, 1, False),
]


def mps_pool(op, k, s, p, cip):
    pad = ((p, p), (p, p))
    if op == "max":
        return lambda x: mps.max_pool2d(x, k, s, pad)
    return lambda x: mps.avg_pool2d(x, k, s, pad, count_include_pad=cip)


def xla_pool(op, k, s, p, cip):
    dims, strides, pad = (1, k, k, 1), (1, s, s, 1), ((0, 0), (p, p), (p, p), (0, 0))
    if op == "max":
        return lambda x: lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pad)

    def avg(x):
        total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pad)
        if cip:
            return total / (k * k)
        ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)  # real elements per window (XLA folds it)
        count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pad)
        return total / count
    return avg


def jax_fns(f):
    return {"fwd": jax.jit(f), "fwd+bwd": jax.jit(jax.grad(lambda x: jnp.sum(f(x) ** 2)))}


def torch_fns(op, k, s, p, cip):
    import torch
    import torch.nn.functional as F

    pool = (lambda x: F.max_pool2d(x, k, s, p)) if op == "max" else \
        (lambda x: F.avg_pool2d(x, k, s, p, count_include_pad=cip))

    def fwd(x):
        with torch.no_grad():
            return pool(x)

    def fwd_bwd(x):
        x = x.detach().requires_grad_()
        (pool(x) ** 2).sum().backward()
        return x.grad
    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def timed(f, x, inner):
    """Mean time of `inner` calls, each run to completion (no overlap of successive calls)."""
    t0 = time.perf_counter()
    for _ in range(inner):
        r = f(x)
        if isinstance(r, jax.Array):
            r.block_until_ready()
    return (time.perf_counter() - t0) / inner


def main():
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    print(f"jax {jax.__version__}, torch {torch.__version__ if torch else 'missing'}, {args.threads} threads, "
          f"median of {args.reps}, times in us")
    for op, shape, k, s, p, cip in CASES:
        label = f"{op} {k}x{k}/{s} pad {p}{' cip' if cip else ''} {shape}"
        if args.only not in label:
            continue
        x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
        xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous() if torch else None
        impls = {"jax_mps": (jax_fns(mps_pool(op, k, s, p, cip)), x),
                 "XLA": (jax_fns(xla_pool(op, k, s, p, cip)), x)}
        if torch:
            impls["torch"] = (torch_fns(op, k, s, p, cip), xt)
        print(label)
        for mode in ("fwd", "fwd+bwd"):
            want = np.asarray(impls["jax_mps"][0][mode](x))
            for name, (fns, arg) in impls.items():
                got = fns[mode](arg)
                got = got.permute(0, 2, 3, 1).numpy() if name == "torch" else np.asarray(got)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name} {mode}")
            # Calls per timing so each lasts ~2 ms (a single short call is mostly timer and dispatch noise).
            inner = {n: max(1, int(2e-3 / timed(f[mode], a, 3))) for n, (f, a) in impls.items()}
            times = {n: [] for n in impls}
            for _ in range(args.reps):
                for n, (f, a) in impls.items():
                    times[n].append(timed(f[mode], a, inner[n]))
            med = {n: np.median(v) * 1e6 for n, v in times.items()}
            line = "   ".join(f"{n} {m:8.0f}" + ("" if n == "jax_mps" else f" ({m / med['jax_mps']:4.2f}x)")
                               for n, m in med.items())
            print(f"  {mode:8s} {line}")
    print("(Nx) = that implementation's time / jax_mps's: > 1 means jax_mps is faster")


if __name__ == "__main__":
    main()
