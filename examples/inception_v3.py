"""InceptionV3 built from jax_mps primitives, trained on synthetic data; prints images/s.

    python examples/inception_v3.py --batch-size 32 --steps 20                 # 299x299x3, 1000 classes
    python examples/inception_v3.py --dtype bfloat16 --batch-size 64
    python examples/inception_v3.py --image-size 75 --width-multiplier 0.125 --batch-size 2 --steps 1  # tiny
    python examples/inception_v3.py --devices 8 --batch-size 256 --dtype bfloat16   # data parallel, 8 GPUs

The architecture is that of Szegedy et al. 2016 as in keras.applications.InceptionV3 (no auxiliary
head): every convolution is conv (no bias) + batch norm + relu, the 5 Inception-A/B/C/D/E block
types, global average pooling and a 1000-way dense layer.  Batch norm runs in training mode
(batch statistics; running averages are not needed for a throughput benchmark).  Optimizer: RMSProp
(decay 0.9, eps 1.0) as in the paper, via `mps.optim`.  `--dtype bfloat16` computes in bfloat16
with float32 master weights and a float32 loss.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jax_mps as mps
from train_cnn import make_mesh  # the same --devices mesh (this folder is on sys.path)


class _Net:
    """Collects parameter shapes on a shape-only pass (``params=None``), reads them afterwards."""

    def __init__(self, params=None, width=1.0, dtype=jnp.float32):
        self.params, self.shapes, self.i, self.width, self.dtype = params, {}, 0, width, dtype

    def ch(self, c):
        return max(1, int(round(c * self.width)))

    def _get(self, name, shapes):
        if self.params is None:
            self.shapes[name] = shapes
            return {k: jnp.zeros(s, self.dtype) for k, s in shapes.items()}
        return {k: v.astype(self.dtype) for k, v in self.params[name].items()}

    def conv_bn(self, x, cout, kernel, stride=1, padding="SAME"):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        cout = self.ch(cout)
        name = f"conv{self.i:03d}"
        self.i += 1
        p = self._get(name, {"w": (kh, kw, x.shape[-1], cout), "scale": (cout,), "bias": (cout,)})
        x = mps.conv2d(x, p["w"], stride=stride, padding=padding)
        y, _, _ = mps.batch_norm(x, p["scale"], p["bias"], epsilon=1e-3, activation="relu")
        return y

    def dense(self, x, cout):
        p = self._get("logits", {"w": (x.shape[-1], cout), "b": (cout,)})
        return mps.dense(x, p["w"], p["b"])


def _block_a(n, x, pool_features):
    b1 = n.conv_bn(x, 64, 1)
    b5 = n.conv_bn(n.conv_bn(x, 48, 1), 64, 5)
    b3 = n.conv_bn(n.conv_bn(n.conv_bn(x, 64, 1), 96, 3), 96, 3)
    bp = n.conv_bn(mps.avg_pool2d(x, 3, 1, "SAME"), pool_features, 1)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


def _block_b(n, x):
    b3 = n.conv_bn(x, 384, 3, stride=2, padding="VALID")
    bd = n.conv_bn(n.conv_bn(n.conv_bn(x, 64, 1), 96, 3), 96, 3, stride=2, padding="VALID")
    bp = mps.max_pool2d(x, 3, 2)
    return jnp.concatenate([b3, bd, bp], axis=-1)


def _block_c(n, x, c7):
    b1 = n.conv_bn(x, 192, 1)
    b7 = n.conv_bn(n.conv_bn(n.conv_bn(x, c7, 1), c7, (1, 7)), 192, (7, 1))
    bd = n.conv_bn(x, c7, 1)
    for cout, k in ((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))):
        bd = n.conv_bn(bd, cout, k)
    bp = n.conv_bn(mps.avg_pool2d(x, 3, 1, "SAME"), 192, 1)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


def _block_d(n, x):
    b3 = n.conv_bn(n.conv_bn(x, 192, 1), 320, 3, stride=2, padding="VALID")
    b7 = n.conv_bn(n.conv_bn(n.conv_bn(x, 192, 1), 192, (1, 7)), 192, (7, 1))
    b7 = n.conv_bn(b7, 192, 3, stride=2, padding="VALID")
    bp = mps.max_pool2d(x, 3, 2)
    return jnp.concatenate([b3, b7, bp], axis=-1)


def _block_e(n, x):
    b1 = n.conv_bn(x, 320, 1)
    b3 = n.conv_bn(x, 384, 1)
    b3 = jnp.concatenate([n.conv_bn(b3, 384, (1, 3)), n.conv_bn(b3, 384, (3, 1))], axis=-1)
    bd = n.conv_bn(n.conv_bn(x, 448, 1), 384, 3)
    bd = jnp.concatenate([n.conv_bn(bd, 384, (1, 3)), n.conv_bn(bd, 384, (3, 1))], axis=-1)
    bp = n.conv_bn(mps.avg_pool2d(x, 3, 1, "SAME"), 192, 1)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def inception_v3(n: _Net, x, num_classes=1000):
    """x: (N, H, W, 3) with H, W >= 75 -> logits (N, num_classes) in float32."""
    x = x.astype(n.dtype)
    x = n.conv_bn(x, 32, 3, stride=2, padding="VALID")
    x = n.conv_bn(x, 32, 3, padding="VALID")
    x = n.conv_bn(x, 64, 3)
    x = mps.max_pool2d(x, 3, 2)
    x = n.conv_bn(x, 80, 1, padding="VALID")
    x = n.conv_bn(x, 192, 3, padding="VALID")
    x = mps.max_pool2d(x, 3, 2)
    for pool_features in (32, 64, 64):          # mixed0-2: 35x35 at 299
        x = _block_a(n, x, pool_features)
    x = _block_b(n, x)                           # mixed3: 17x17
    for c7 in (128, 160, 160, 192):             # mixed4-7
        x = _block_c(n, x, c7)
    x = _block_d(n, x)                           # mixed8: 8x8
    for _ in range(2):                           # mixed9-10
        x = _block_e(n, x)
    x = mps.global_avg_pool2d(x)
    return n.dense(x, num_classes).astype(jnp.float32)


def init_params(key, image_size=299, width=1.0, num_classes=1000):
    n = _Net(None, width)
    jax.eval_shape(lambda x: inception_v3(n, x, num_classes),
                   jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    he = jax.nn.initializers.he_normal()
    params = {}
    for k, (name, shapes) in zip(jax.random.split(key, len(n.shapes)), sorted(n.shapes.items())):
        p = {"w": he(k, shapes["w"], jnp.float32)}
        if "scale" in shapes:
            p["scale"] = jnp.ones(shapes["scale"], jnp.float32)
            p["bias"] = jnp.zeros(shapes["bias"], jnp.float32)
        else:
            p["b"] = jnp.zeros(shapes["b"], jnp.float32)
        params[name] = p
    return params


def main(argv=None):
    ap = argparse.ArgumentParser(description="InceptionV3 from jax_mps primitives on synthetic data")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (after 1 warm-up step)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--image-size", type=int, default=299)
    ap.add_argument("--width-multiplier", type=float, default=1.0, help="scales every layer's channels")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.045)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--devices", type=int, default=1, help="data parallel over this many devices "
                    "(on a CPU-only machine they are forced host devices); --batch-size is the global batch")
    args = ap.parse_args(argv)
    if args.image_size < 75:
        ap.error("--image-size must be >= 75 (InceptionV3's smallest input)")
    if args.devices < 1 or args.batch_size % args.devices:
        ap.error("--devices must be >= 1 and divide --batch-size")
    mesh = make_mesh(args.devices)
    dtype = jnp.dtype(args.dtype)

    params = init_params(jax.random.PRNGKey(0), args.image_size, args.width_multiplier, args.num_classes)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    opt = mps.optim.rmsprop(args.lr, decay=0.9, eps=1.0)
    state = (params, opt.init(params))

    def loss_fn(params, x, y):
        logits = inception_v3(_Net(params, args.width_multiplier, dtype), x, args.num_classes)
        return mps.softmax_cross_entropy(logits, y)

    if mesh is None:
        # The graph API's concat pass: each block's batch norms write their channel slices of the
        # block's output in place (no concatenate). Not under a mesh: an in-place concatenation
        # runs unpartitioned there (XLA gathers its inputs).
        loss_fn = mps.graph.optimize(loss_fn)

    @partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        params, opt_state = opt.apply(params, grads, opt_state)
        return (params, opt_state), loss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, args.image_size, args.image_size, 3), np.float32)
    y = rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)
    if mesh is None:
        x, y = jax.device_put(x), jax.device_put(y)
    else:  # the batch split over the devices, the state replicated
        put_batch, put_state = mps.train.data_parallel(mesh)
        (x, y), state = put_batch((x, y)), put_state(state)
    print(f"InceptionV3: {n_params / 1e6:.2f}M parameters, input {args.batch_size}x{args.image_size}x"
          f"{args.image_size}x3, {args.dtype}, {args.devices} device(s), backends {mps.backends()}")

    t0 = time.perf_counter()
    state, loss = train_step(state, (x, y))
    loss = float(loss)
    print(f"compile + first step: {time.perf_counter() - t0:.1f} s, loss {loss:.3f}")

    state, history = mps.train.fit(train_step, state, [(x, y)] * args.steps, epochs=1,
                                   progress=not args.no_progress, desc="InceptionV3")
    rec = history[-1]
    images_per_sec = rec["samples"] / max(rec["seconds"], 1e-9)  # every timed step, already compiled
    print(f"loss {rec['loss']:.3f}; {rec['steps']} steps in {rec['seconds']:.2f} s: "
          f"{images_per_sec:.1f} images/s ({images_per_sec / args.devices:.1f} per device)")
    if not np.isfinite(rec["loss"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
