"""Every distinct convolution of InceptionV3 (batch 8, 299x299x3) and of the TF-tutorial MNIST CNN
(batch 128: conv5x5x32 SAME on 28x28x1, conv5x5x64 SAME on 14x14x32), forward and forward+backward:
jax_mps vs XLA-native JAX (jitted lax.conv_general_dilated) vs PyTorch (CPU, F.conv2d on
channels_last tensors).

Run: OMP_NUM_THREADS=2 python benchmarks/bench_conv_layers.py [--reps N] [--only SUBSTR] [--quick]
                                                              [--cpu-time] [--json PATH]
The InceptionV3 layers are read off examples/inception_v3.py (a shape-only trace of its model that
records every conv_bn call), deduplicated; column n is how many times each occurs in the model.
Every layer is conv + bias + relu (fused in jax_mps; InceptionV3 itself has no bias, its batch norm
follows the conv, but this isolates the convolution as in issue 14). fwd+bwd is value_and_grad of
<y, ct> w.r.t. x, w and b; a layer on the model's input image takes no dx. One process; each case
is checked against XLA on all sides, warmed up, then timed interleaved in blocks (benchmarks/
_harness.py); prints medians, the ratios xla/mps and torch/mps (> 1: jax_mps faster) and per model
the sum over its layers weighted by n. torch.set_num_threads(OMP_NUM_THREADS); XLA's threads come
from XLA_FLAGS. --quick: a handful of representative layers, few reps (a smoke run).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
from typing import NamedTuple

# First: _harness sets the OMP_NUM_THREADS default before jax_mps loads its runtime.
from _harness import CONV_PERMS, add_timing_args, bench_case, setup, torch, torch_conv, xla_conv

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_mps as mps


class Layer(NamedTuple):
    model: str
    batch: int
    h: int
    w: int
    cin: int
    cout: int
    kh: int
    kw: int
    stride: int
    padding: str
    data_input: bool  # the model's input image: no dx

    @property
    def name(self):
        return (f"{self.model} B{self.batch} {self.h}x{self.w}x{self.cin}->{self.cout} "
                f"{self.kh}x{self.kw}/{self.stride} {self.padding}")


def inception_layers(batch=8, size=299):
    """The conv layers of examples/inception_v3.py in model order, from a shape-only trace."""
    examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
    sys.path.insert(0, examples)  # as when the example runs as a script (it imports train_cnn)
    spec = importlib.util.spec_from_file_location("inception_v3", os.path.join(examples, "inception_v3.py"))
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    layers = []

    class Recorder(ex._Net):
        def conv_bn(self, x, cout, kernel, stride=1, padding="SAME"):
            kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
            n, h, w, cin = x.shape
            layers.append(Layer("inception", n, h, w, cin, self.ch(cout), kh, kw, stride, padding, not layers))
            return super().conv_bn(x, cout, kernel, stride, padding)

    net = Recorder(None)
    jax.eval_shape(lambda x: ex.inception_v3(net, x), jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    return layers


def mnist_layers(batch=128):
    return [Layer("mnist", batch, 28, 28, 1, 32, 5, 5, 1, "SAME", True),
            Layer("mnist", batch, 14, 14, 32, 64, 5, 5, 1, "SAME", False)]


# --quick: (model, h, cin, cout, kh, kw, stride) of the issue-14 layers and one per other kind
# (1x7, stride 2, 8x8 1x3).
QUICK = {("mnist", 14, 32, 64, 5, 5, 1), ("inception", 147, 32, 64, 3, 3, 1), ("inception", 35, 64, 96, 3, 3, 1),
         ("inception", 17, 128, 128, 1, 7, 1), ("inception", 35, 288, 384, 3, 3, 2),
         ("inception", 8, 384, 384, 1, 3, 1)}


def case(layer, rng):
    """(jax args, grad argnums, mps fn, xla fn, torch fn) of conv + bias + relu.

    Small integers in x and w, and bias in Z + 1/2, make the conv exact in float32 in any summation
    order and never 0 before the relu: with normal data a pre-activation within rounding of 0 gets
    its relu mask flipped on one side and the gradients differ by ~1e-3 of their max."""
    f = lambda *s: jnp.asarray(rng.integers(-2, 3, size=s), jnp.float32)  # noqa: E731
    L = layer
    a = (f(L.batch, L.h, L.w, L.cin), f(L.kh, L.kw, L.cin, L.cout), f(L.cout) + 0.5)
    pads = lax.padtype_to_pads((L.h, L.w), (L.kh, L.kw), (L.stride, L.stride), L.padding)
    assert all(lo == hi for lo, hi in pads), f"{L.name}: torch's conv2d takes symmetric padding only"
    return (a, (1, 2) if L.data_input else (0, 1, 2),
            lambda x, w, b: mps.conv2d(x, w, b, stride=L.stride, padding=L.padding, activation="relu"),
            lambda x, w, b: xla_conv(x, w, b, L.padding, True, L.stride),
            torch_conv(tuple(lo for lo, _ in pads), True, L.stride))


def main():
    ap = argparse.ArgumentParser()
    add_timing_args(ap, reps=None)
    ap.add_argument("--only", metavar="SUBSTR", help="only the layers whose name contains SUBSTR")
    ap.add_argument("--quick", action="store_true", help="a few representative layers, few reps")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args()
    # Blocks of `block` runs after `warmup` runs of each side: the big layers take 0.1-1 s a run.
    block, warmup = (2, 1) if args.quick else (5, 3)
    if args.reps is None:
        args.reps = 4 if args.quick else 30
    threads = setup(args)

    counts = collections.Counter(inception_layers() + mnist_layers())  # insertion (model) order
    layers = [L for L in counts
              if (not args.quick or (L.model, L.h, L.cin, L.cout, L.kh, L.kw, L.stride) in QUICK)
              and (args.only is None or args.only in L.name)]
    n_inc = sum(c for L, c in counts.items() if L.model == "inception")
    print(f"{len(counts)} distinct convolutions ({n_inc} in InceptionV3, 2 in the MNIST CNN); {len(layers)} run")
    print(f"medians of {max(args.reps // block, 1) * block}; ratio = other time / jax_mps time (> 1: jax_mps faster)")
    print(f"{'layer':40s} {'n':>2s} {'pass':8s} {'mps ms':>9s} {'xla ms':>9s} {'torch ms':>9s} "
          f"{'xla/mps':>7s} {'torch/mps':>9s}")
    results = []
    tot = collections.defaultdict(float)  # (model, kind, side) -> sum of n * median
    rng = np.random.default_rng(0)
    for L in layers:
        a, argnums, fm, fx, ft = case(L, rng)
        for kind in ("fwd", "fwd+bwd"):
            med = bench_case(L.name, kind, a, argnums, fm, fx, ft, CONV_PERMS, args.reps, block=block,
                             warmup=warmup, channels_last=True)
            med = {k: v / 1e3 for k, v in med.items()}
            for side, t in med.items():
                tot[L.model, kind, side] += counts[L] * t
            m, t = med["mps"], med.get("torch")
            results.append({**L._asdict(), "name": L.name, "count": counts[L], "pass": kind,
                            "mps_ms": m, "xla_ms": med["xla"], "torch_ms": t,
                            "xla/mps": med["xla"] / m, "torch/mps": t / m if t is not None else None})
            tcol, rcol = (f"{t:9.3f}", f"{t / m:9.2f}") if t is not None else (f"{'-':>9s}", f"{'-':>9s}")
            print(f"{L.name:40s} {counts[L]:2d} {kind:8s} {m:9.3f} {med['xla']:9.3f} {tcol} "
                  f"{med['xla'] / m:7.2f} {rcol}", flush=True)
    for model in dict.fromkeys(L.model for L in layers):
        ran = sum(counts[L] for L in layers if L.model == model)
        total = sum(c for L, c in counts.items() if L.model == model)
        for kind in ("fwd", "fwd+bwd"):
            m, x, t = (tot.get((model, kind, s)) for s in ("mps", "xla", "torch"))
            tcol, rcol = (f"{t:9.3f}", f"{t / m:9.2f}") if t is not None else (f"{'-':>9s}", f"{'-':>9s}")
            print(f"{f'{model}: sum x n ({ran}/{total} convs)':43s} {kind:8s} {m:9.3f} {x:9.3f} {tcol} "
                  f"{x / m:7.2f} {rcol}")
    if args.json:
        meta = {"clock": "cpu" if args.cpu_time else "wall", "omp_num_threads": threads,
                "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
                "torch": torch.__version__ if torch is not None else None, "reps": args.reps, "block": block,
                "device_kind": jax.devices()[0].device_kind, "torch_memory_format": "channels_last"}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "layers": results}, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
