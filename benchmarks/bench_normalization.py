"""batch_norm forward + backward (all of x, scale, bias) vs jitted XLA of the same math.

Usage: PYTHONPATH=src:tests python benchmarks/bench_normalization.py [N H W C] [reps]
Thread counts come from the environment (OMP_NUM_THREADS for ours, XLA_FLAGS for XLA's).
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_mps as mps


def xla_bn(x, scale, bias, epsilon=1e-5, activation=None):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    y = (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
    return (jax.nn.relu(y) if activation == "relu" else y), mean, var


def bench(f, args, reps):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e3, np.min(ts) * 1e3


def main():
    shape = tuple(int(a) for a in sys.argv[1:5]) if len(sys.argv) >= 5 else (128, 28, 28, 64)
    reps = int(sys.argv[5]) if len(sys.argv) >= 6 else 20
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(1.0, 2.0, shape).astype(np.float32))
    c = shape[-1]
    s = jnp.asarray(r.uniform(0.5, 1.5, c).astype(np.float32))
    b = jnp.asarray(r.normal(size=c).astype(np.float32))
    g = jnp.asarray(r.normal(size=shape).astype(np.float32))

    for act in (None, "relu"):
        for name, fn in [("jax_mps", mps.batch_norm), ("xla", xla_bn)]:
            def y_of(x, s, b, fn=fn):
                return fn(x, s, b, activation=act)[0]

            @jax.jit
            def fwd_bwd(x, s, b, g, y_of=y_of):
                y, vjp = jax.vjp(y_of, x, s, b)
                return y, vjp(g)

            fm, fmin = bench(jax.jit(y_of), (x, s, b), reps)
            bm, bmin = bench(fwd_bwd, (x, s, b, g), reps)
            print(f"{name:8s} {shape} act={act!s:5s} fwd {fm:7.2f} ms (min {fmin:6.2f})   "
                  f"fwd+bwd {bm:7.2f} ms (min {bmin:6.2f})")


if __name__ == "__main__":
    main()
