"""mps.graph.optimize on models written without jax_mps: training-step time, plain XLA vs optimized.

    python benchmarks/bench_graph.py                       # both models, defaults below
    python benchmarks/bench_graph.py --model inception --image-size 299 --width 1.0 --batch-size 8

1. The Flax NNX MNIST CNN of examples/train_flax_nnx.py (batch 128): plain vs optimized.
2. InceptionV3 written in plain flax.linen (conv without bias + BatchNorm in training mode + relu,
   Inception blocks with channel concatenations): plain vs optimized vs optimized with
   concat=False vs fuse=False, concat=False (convert only), to show what each pass adds.
Each step is one jitted value_and_grad + optax Adam update; all variants run in one process,
interleaved, and the median over rounds is reported.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jax_mps as mps
from _models import InceptionV3  # InceptionV3 in plain flax.linen (this folder is on sys.path)


def inception_steps(args):
    model = InceptionV3(num_classes=args.num_classes, width=args.width)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch_size, args.image_size, args.image_size, 3), np.float32))
    y = jnp.asarray(rng.integers(0, args.num_classes, args.batch_size).astype(np.int32))
    variables = model.init(jax.random.key(0), x)
    params, stats = variables["params"], variables["batch_stats"]
    opt = optax.adam(1e-3)

    def loss(params, stats, x, y):
        logits, upd = model.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

    def make(f):
        @jax.jit
        def step(params, stats, s, x, y):
            (l, stats), g = jax.value_and_grad(f, has_aux=True)(params, stats, x, y)
            u, s = opt.update(g, s, params)
            return optax.apply_updates(params, u), stats, s, l
        return step

    steps = {"plain XLA": make(loss), "optimized": make(mps.graph.optimize(loss)),
             "optimized concat=False": make(mps.graph.optimize(loss, concat=False)),
             "optimized fuse=False concat=False": make(mps.graph.optimize(loss, fuse=False, concat=False))}
    state = (params, stats, opt.init(params))
    if args.explain:
        print(mps.graph.explain(loss, params, stats, x, y))
    return steps, state, (x, y)


def cnn_steps(args):
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("train_flax_nnx", os.path.join(here, "..", "examples",
                                                                                "train_flax_nnx.py"))
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    from flax import nnx
    graphdef, params = nnx.split(ex.CNN(rngs=nnx.Rngs(0)))
    opt = optax.adam(1e-3)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((args.cnn_batch_size, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.cnn_batch_size).astype(np.int32))

    steps = {"plain XLA": ex.make_step(graphdef, opt, optimized=False),
             "optimized": ex.make_step(graphdef, opt, optimized=True)}
    return steps, (params, opt.init(params)), (x, y)


def bench(name, steps, state, batch, rounds, iters):
    print(f"\n{name}")
    for f in steps.values():  # compile and warm up
        out = f(*state, *batch)
        jax.block_until_ready(out)
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, f in steps.items():
            t = time.perf_counter()
            for _ in range(iters):
                out = f(*state, *batch)
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - t) / iters)
    base = np.median(times["plain XLA"])
    for k, ts in times.items():
        m = np.median(ts)
        print(f"  {k:36s} {m * 1e3:9.2f} ms/step   {base / m:5.2f}x vs plain XLA")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("cnn", "inception", "both"), default="both")
    ap.add_argument("--cnn-batch-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="InceptionV3 batch size")
    ap.add_argument("--image-size", type=int, default=107, help="InceptionV3 input size (>= 75)")
    ap.add_argument("--width", type=float, default=0.5, help="InceptionV3 channel multiplier")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--explain", action="store_true")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, backends {mps.backends()}, {os.cpu_count()} CPUs")
    if args.model in ("cnn", "both"):
        bench(f"Flax NNX MNIST CNN, batch {args.cnn_batch_size}", *cnn_steps(args), args.rounds, args.iters)
    if args.model in ("inception", "both"):
        bench(f"InceptionV3 (flax.linen), batch {args.batch_size}, {args.image_size}x{args.image_size}, "
              f"width {args.width}", *inception_steps(args), args.rounds, args.iters)


if __name__ == "__main__":
    main()
