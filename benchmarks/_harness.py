"""Shared parts of the layer benchmarks (bench_conv.py, bench_conv_layers.py): the XLA and torch
references of conv / dense + bias (+ relu), JAX <-> torch layout maps, the correctness check and
the interleaved timing of one case on jax_mps, XLA and torch.

Import this before jax: it sets the OMP_NUM_THREADS default (2) that the runtime reads at load.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def xla_conv(x, w, b, padding, act, stride=1):
    y = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    return jax.nn.relu(y) if act else y


def xla_dense(x, w, b, act):
    y = jnp.dot(x, w) + b
    return jax.nn.relu(y) if act else y


# Layout maps between the JAX (NHWC / HWIO / (in, out)) and torch (NCHW / OIHW / (out, in)) arrays.
CONV_TO_TORCH = ((0, 3, 1, 2), (3, 2, 0, 1), (0,))
CONV_FROM_TORCH = ((0, 2, 3, 1), (2, 3, 1, 0), (0,))
CONV_PERMS = (CONV_TO_TORCH, CONV_FROM_TORCH)
DENSE_TO_TORCH = ((0, 1), (1, 0), (0,))


def torch_conv(padding, act, stride=1):
    def f(x, w, b):
        y = F.conv2d(x, w, b, stride=stride, padding=padding)
        return F.relu(y) if act else y
    return f


def torch_dense(act):
    def f(x, w, b):
        y = F.linear(x, w, b)
        return F.relu(y) if act else y
    return f


def to_torch(a, perm, channels_last=False):
    t = torch.from_numpy(np.array(a)).permute(*perm)
    if channels_last and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def make_torch(kind, ft, a, argnums, perms, ct, channels_last=False):
    """A no-argument torch callable doing the same work as the jitted JAX one, and a function that
    maps its result to the JAX layout (value, grads) for the check. channels_last: 4-D tensors
    (activations and conv weights) in torch.channels_last memory format, else contiguous."""
    to, back = perms
    ta = [to_torch(v, p, channels_last).requires_grad_(kind == "fwd+bwd" and i in argnums)
          for i, (v, p) in enumerate(zip(a, to))]
    tct = to_torch(ct, to[0], channels_last)
    if kind == "fwd":
        def run():
            with torch.no_grad():
                return ft(*ta)
        return run, lambda y: [y.permute(*back[0]).numpy()]
    wrt = [ta[i] for i in argnums]

    def flat(t):  # a view in memory order: reshape(-1) of a channels_last tensor would copy
        return (t.permute(0, 2, 3, 1) if channels_last and t.dim() == 4 else t).reshape(-1)
    tct_flat = flat(tct)

    def run():
        loss = torch.vdot(flat(ft(*ta)), tct_flat)
        return loss, torch.autograd.grad(loss, wrt)
    return run, lambda r: [r[0].detach().numpy()] + [g.permute(*back[i]).numpy() for i, g in zip(argnums, r[1])]


CLOCK = time.perf_counter


def add_timing_args(ap, reps):
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")


def setup(args):
    """Apply --cpu-time and the thread count; print the run's header line. Returns the thread count."""
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
    return threads


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


def bench_case(name, kind, a, argnums, fm, fx, ft, perms, reps, block=20, warmup=10, channels_last=False,
               tol=1e-4):
    """Median times (us) of one case on 'mps', 'xla' and (if importable) 'torch'. kind "fwd" jits
    f(*a); "fwd+bwd" jits value_and_grad of <f(*a), ct> w.r.t. argnums (torch: autograd.grad of the
    same loss). All sides are first checked against XLA (error relative to each array's max), warmed
    up, then timed interleaved in blocks of `block` runs (mps, xla, torch, mps, ...) so that all see
    the same machine noise."""
    ct = jax.random.normal(jax.random.key(1), jax.eval_shape(fx, *a).shape)

    def make(f):
        if kind == "fwd":
            return jax.jit(f)
        return jax.jit(jax.value_and_grad(lambda *z: jnp.vdot(f(*z), ct), argnums=argnums))
    fns = {"mps": (make(fm), a), "xla": (make(fx), a)}
    # fwd+bwd checks the gradients only: the loss, a sum of up to ~1e6 terms of either sign, is too
    # ill-conditioned for a relative check, and the fwd case checks the forward.
    checked = slice(0, None) if kind == "fwd" else slice(1, None)
    ref = jax.tree.leaves(fns["xla"][0](*a))[checked]
    err = rel_err(jax.tree.leaves(fns["mps"][0](*a))[checked], ref)
    assert err < tol, f"{name} {kind}: mps and xla differ (rel err {err:.2e})"
    if torch is not None:
        run, to_jax = make_torch(kind, ft, a, argnums, perms, ct, channels_last)
        fns["torch"] = (run, ())
        err = rel_err(to_jax(run())[checked], ref)
        assert err < tol, f"{name} {kind}: torch and xla differ (rel err {err:.2e})"
    for _ in range(warmup):
        for f, z in fns.values():
            jax.block_until_ready(f(*z))
    ts = {n: [] for n in fns}
    for _ in range(max(reps // block, 1)):
        for n, (f, z) in fns.items():
            ts[n] += timed(f, z, block)
    return {n: float(np.median(v)) * 1e6 for n, v in ts.items()}
