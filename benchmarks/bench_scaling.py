"""Data-parallel InceptionV3 training (bfloat16 compute, float32 masters): jax_mps vs XLA-native JAX
on the same mesh, 1 device and N devices; images/s per device and scaling efficiency.

    python benchmarks/bench_scaling.py --devices 8 --batch-per-device 64          # 8 GPUs
    python benchmarks/bench_scaling.py --cpu-check --devices 2                    # functional check

The batch per device is fixed (weak scaling): efficiency = images/s on N devices / (N x images/s
on 1). Both sides run the model of examples/inception_v3.py (XLA's side with lax convolutions,
reduce_window pooling and jnp batch norm), RMSProp, batch-sharded inputs and replicated
parameters; each step is timed to completion after a warm-up step, median of --steps. On a
CPU-only machine the N devices are forced host devices that share the same cores, so the
figures only show that the run works (--cpu-check also shrinks the model); the scaling run
needs a machine with several GPUs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types

ap = argparse.ArgumentParser()
ap.add_argument("--devices", type=int, default=None, help="N (default: every device)")
ap.add_argument("--batch-per-device", type=int, default=32)
ap.add_argument("--image-size", type=int, default=299)
ap.add_argument("--width-multiplier", type=float, default=1.0)
ap.add_argument("--num-classes", type=int, default=1000)
ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--cpu-check", action="store_true", help="tiny model on forced host devices (functional check)")
ap.add_argument("--json", default=None, help="write the figures here")
args = ap.parse_args()
if args.cpu_check:
    args.devices = args.devices or 2
    args.image_size, args.width_multiplier, args.batch_per_device = 75, 0.125, 2
    args.num_classes, args.steps = 10, min(args.steps, 2)
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count="
                               f"{args.devices} --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jax_mps as mps  # noqa: E402

_EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "inception_v3.py")


def _load_model(name, ops):
    """A copy of examples/inception_v3.py whose `mps` is `ops` (the model code looks it up per call)."""
    spec = importlib.util.spec_from_file_location(name, _EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.mps = ops
    return mod


def _pool(x, window, stride, padding, init, op):
    return lax.reduce_window(x, init, op, (1, window, window, 1), (1, stride, stride, 1), padding)


def _xla_batch_norm(x, scale, bias, *, epsilon, activation):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2))
    y = (xf - mean) * lax.rsqrt(var + epsilon) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    assert activation == "relu"
    return jax.nn.relu(y).astype(x.dtype), mean, var


XLA_OPS = types.SimpleNamespace(
    conv2d=lambda x, w, stride=1, padding="SAME": lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")),
    batch_norm=_xla_batch_norm,
    max_pool2d=lambda x, window, stride=None, padding="VALID": _pool(
        x, window, stride or window, padding, -jnp.inf, lax.max),
    # count_include_pad=False, as mps.avg_pool2d's default
    avg_pool2d=lambda x, window, stride=None, padding="VALID": _pool(
        x, window, stride or window, padding, 0.0, lax.add) / _pool(
        jnp.ones(x.shape[:3] + (1,), x.dtype), window, stride or window, padding, 0.0, lax.add),
    global_avg_pool2d=lambda x: jnp.mean(x, axis=(1, 2)),
    dense=lambda x, w, b: x @ w + b,
)


def _run(kind, n):
    """(images/s, first loss, has all-gather) for `kind` on the first n devices."""
    model = MODELS[kind]
    dtype = jnp.dtype(args.dtype)
    mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
    params = model.init_params(jax.random.PRNGKey(0), args.image_size, args.width_multiplier, args.num_classes)
    if kind == "jax_mps":
        opt = mps.optim.rmsprop(0.045, decay=0.9, eps=1.0)
        xent = mps.softmax_cross_entropy
    else:
        opt = optax.rmsprop(0.045, decay=0.9, eps=1.0)
        xent = lambda lg, y: optax.softmax_cross_entropy_with_integer_labels(lg, y).mean()

    def loss_fn(p, x, y):
        return xent(model.inception_v3(model._Net(p, args.width_multiplier, dtype), x, args.num_classes), y)

    @jax.jit
    def step(state, x, y):
        p, s = state
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        if kind == "jax_mps":
            return opt.apply(p, g, s), loss
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    rng = np.random.default_rng(0)
    batch = n * args.batch_per_device
    data = NamedSharding(mesh, P("data"))
    x = jax.device_put(rng.standard_normal((batch, args.image_size, args.image_size, 3), np.float32), data)
    y = jax.device_put(rng.integers(0, args.num_classes, batch).astype(np.int32), data)
    state = jax.device_put((params, opt.init(params)), NamedSharding(mesh, P()))
    gather = "all-gather" in step.lower(state, x, y).compile().as_text()
    state, loss = step(state, x, y)
    first = float(loss)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, loss = step(state, x, y)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), first, gather


MODELS = {"jax_mps": _load_model("inception_mps", mps), "xla": _load_model("inception_xla", XLA_OPS)}


def main():
    n = args.devices or jax.device_count()
    if jax.device_count() < n:
        sys.exit(f"--devices {n}: only {jax.device_count()} devices")
    print(f"InceptionV3 {args.image_size}x{args.image_size}, width x{args.width_multiplier}, {args.dtype}, "
          f"{args.batch_per_device} images per device, devices: {jax.devices()[0].device_kind} x {n}")
    out = {}
    for kind in ("jax_mps", "xla"):
        rows = {k: _run(kind, k) for k in sorted({1, n})}
        ips1 = rows[1][0]
        for k, (ips, loss, gather) in rows.items():
            eff = ips / (k * ips1)
            out[f"{kind}_{k}"] = dict(images_per_s=ips, per_device=ips / k, efficiency=eff, first_loss=loss,
                                      all_gather=gather)
            print(f"{kind:8s} {k} device(s): {ips:9.1f} images/s, {ips / k:8.1f} per device, "
                  f"scaling efficiency {eff:6.1%}, first loss {loss:.4f}" + (", all-gather in HLO" if gather else ""))
        if not all(np.isfinite(r[1]) for r in rows.values()):
            sys.exit(f"{kind}: non-finite loss")
    if out[f"jax_mps_{n}"]["all_gather"]:
        sys.exit("jax_mps: the sharded step all-gathers activations")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
