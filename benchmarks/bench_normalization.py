"""batch_norm (training mode, with and without fused relu) forward and forward + backward (all of
x, scale, bias): jax_mps vs jitted XLA of the same math vs PyTorch (CPU, F.batch_norm(training=True)).

Usage: python benchmarks/bench_normalization.py [N H W C] [reps]
One process; each case is checked to give the same result on all sides, warmed up, then timed
interleaved (mps, xla, torch, mps, ...); prints medians and the speed-up of jax_mps (other time /
jax_mps time) vs XLA and vs torch. Thread counts come from the environment (OMP_NUM_THREADS for
ours, XLA_FLAGS for XLA's); torch.set_num_threads gets OMP_NUM_THREADS (default: all cores). The
JAX side is NHWC; torch gets the same data as NCHW contiguous (its default layout; channels_last was
no faster here), converted outside the timed region. Without torch its column is skipped.
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_mps as mps

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def xla_bn(x, scale, bias, epsilon=1e-5, activation=None):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    y = (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
    return (jax.nn.relu(y) if activation == "relu" else y), mean, var


def jax_fns(fn, act):
    def y_of(x, s, b):
        return fn(x, s, b, activation=act)[0]

    @jax.jit
    def fwd_bwd(x, s, b, g):
        y, vjp = jax.vjp(y_of, x, s, b)
        return y, vjp(g)

    return jax.jit(y_of), fwd_bwd


def torch_fns(act, eps=1e-5):
    def y_of(x, s, b):
        y = F.batch_norm(x, None, None, s, b, training=True, eps=eps)
        return F.relu(y) if act == "relu" else y

    def fwd(x, s, b):
        with torch.no_grad():
            return y_of(x, s, b)

    def fwd_bwd(x, s, b, g):
        y = y_of(x, s, b)
        return y, torch.autograd.grad(y, (x, s, b), g)

    return fwd, fwd_bwd


def timed(f, args):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t


def main():
    shape = tuple(int(a) for a in sys.argv[1:5]) if len(sys.argv) >= 5 else (128, 28, 28, 64)
    reps = int(sys.argv[5]) if len(sys.argv) >= 6 else 20
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
    r = np.random.default_rng(0)
    xn = r.normal(1.0, 2.0, shape).astype(np.float32)
    c = shape[-1]
    sn = r.uniform(0.5, 1.5, c).astype(np.float32)
    bn = r.normal(size=c).astype(np.float32)
    gn = r.normal(size=shape).astype(np.float32)
    x, s, b, g = map(jnp.asarray, (xn, sn, bn, gn))
    if torch is not None:
        torch.set_num_threads(threads)
        nchw = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).copy())  # noqa: E731
        tx, tg = nchw(xn), nchw(gn)
        ts, tb = torch.from_numpy(sn.copy()), torch.from_numpy(bn.copy())
        tx_req, ts_req, tb_req = (t.clone().requires_grad_() for t in (tx, ts, tb))
    print(f"batch_norm {shape} NHWC, median of {reps}, OMP_NUM_THREADS={threads}, jax {jax.__version__}, "
          + (f"torch {torch.__version__} ({torch.get_num_threads()} threads, NCHW)" if torch is not None
             else "torch not importable: its column is skipped"))
    print("speed-up of jax_mps = other time / jax_mps time")
    print(f"{'act':5s} {'pass':8s} {'mps ms':>8s} {'xla ms':>8s} {'torch ms':>8s} {'vs xla':>7s} {'vs torch':>8s}")

    for act in (None, "relu"):
        (mf, mfb), (xf, xfb) = jax_fns(mps.batch_norm, act), jax_fns(xla_bn, act)
        kinds = {"fwd": ({"mps": (mf, (x, s, b)), "xla": (xf, (x, s, b))}),
                 "fwd+bwd": ({"mps": (mfb, (x, s, b, g)), "xla": (xfb, (x, s, b, g))})}
        if torch is not None:
            tf, tfb = torch_fns(act)
            kinds["fwd"]["torch"] = (tf, (tx, ts, tb))
            kinds["fwd+bwd"]["torch"] = (tfb, (tx_req, ts_req, tb_req, tg))
        for kind, fns in kinds.items():
            ref = [np.asarray(v) for v in jax.tree.leaves(fns["xla"][0](*fns["xla"][1]))]
            for n, (f, z) in fns.items():
                out = [np.asarray(v) for v in jax.tree.leaves(f(*z))] if n != "torch" else \
                    [v.detach().numpy() for v in jax.tree.leaves(f(*z))]
                if n == "torch":  # y, dx back to NHWC
                    out = [np.moveaxis(v, 1, -1) if v.ndim == 4 else v for v in out]
                err = max(float(np.max(np.abs(u - v)) / (np.max(np.abs(v)) + 1e-30)) for u, v in zip(out, ref))
                assert err < 1e-4, f"act={act} {kind}: {n} and xla differ (rel err {err:.2e})"
            times = {n: [] for n in fns}
            for rep in range(3 + reps):  # 3 warm-up rounds, then interleaved timing
                for n, (f, z) in fns.items():
                    t = timed(f, z)
                    if rep >= 3:
                        times[n].append(t)
            med = {n: np.median(v) * 1e3 for n, v in times.items()}
            m = med["mps"]
            tcol, rcol = (f"{med['torch']:.2f}", f"{med['torch'] / m:.2f}") if "torch" in med else ("-", "-")
            print(f"{act!s:5s} {kind:8s} {m:8.2f} {med['xla']:8.2f} {tcol:>8s} {med['xla'] / m:7.2f} {rcol:>8s}")


if __name__ == "__main__":
    main()
