"""GPU benchmarks (issue 15), side by side in one process: jax_mps vs XLA-native JAX vs PyTorch.

Each case: warm-up steps, then the median of --steps steps, each timed to completion (block on
the JAX results / torch.cuda.synchronize). Writes benchmarks/results/gpu.json and gpu.md (or
--out). Cases a backend cannot run (e.g. a target the CUDA backend does not implement yet) are
recorded with the error instead of a time.
Run: python benchmarks/bench_gpu.py [--steps 30] [--only lenet,lstm]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--only", default="lenet,lstm")
ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
args = ap.parse_args()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

import jax_mps as mps  # noqa: E402

RESULTS = []


def median_ms(step, sync):
    for _ in range(args.warmup):
        sync(step())
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def record(case, impl, fn):
    try:
        ms = fn()
        RESULTS.append({"case": case, "impl": impl, "ms": ms})
        print(f"{case:42s} {impl:18s} {ms:9.3f} ms", flush=True)
    except Exception as e:  # a backend that cannot run the case: keep the reason, go on
        msg = str(e).splitlines()[0][:200]
        RESULTS.append({"case": case, "impl": impl, "ms": None, "error": msg})
        print(f"{case:42s} {impl:18s}   n/a  ({msg})", flush=True)


def jsync(x):
    jax.block_until_ready(x)


# ---- LeNet-5 (28x28x1, Adam) ----

SHAPES = {"c1": (5, 5, 1, 6), "c2": (5, 5, 6, 16), "d1": (400, 120), "d2": (120, 84), "d3": (84, 10)}


def lenet_init(key):
    p = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        fan_in = int(np.prod(shape[:-1]))
        p[name + "_w"] = jax.random.normal(jax.random.fold_in(key, i), shape) * np.sqrt(2.0 / fan_in)
        p[name + "_b"] = jnp.zeros(shape[-1])
    return p


def lenet_mps(p, x, y):
    h = mps.conv2d(x, p["c1_w"], p["c1_b"], padding="SAME", activation="relu")
    h = mps.max_pool2d(h, 2)
    h = mps.conv2d(h, p["c2_w"], p["c2_b"], padding="VALID", activation="relu")
    h = mps.max_pool2d(h, 2).reshape(x.shape[0], -1)
    h = mps.dense(h, p["d1_w"], p["d1_b"], activation="relu")
    h = mps.dense(h, p["d2_w"], p["d2_b"], activation="relu")
    return mps.softmax_cross_entropy(mps.dense(h, p["d3_w"], p["d3_b"]), y)


def lenet_xla(p, x, y):
    conv = lambda x, w, b, pad: lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    pool = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # noqa: E731
    h = pool(jax.nn.relu(conv(x, p["c1_w"], p["c1_b"], "SAME")))
    h = pool(jax.nn.relu(conv(h, p["c2_w"], p["c2_b"], "VALID"))).reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ p["d1_w"] + p["d1_b"])
    h = jax.nn.relu(h @ p["d2_w"] + p["d2_b"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["d3_w"] + p["d3_b"], y).mean()


def bench_lenet(batch):
    case = f"LeNet-5 step, batch {batch} (Adam)"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch, dtype=np.int32))

    def jax_case(loss_fn, opt, fused):
        p = lenet_init(jax.random.key(0))
        s = opt.init(p)
        if fused:  # mps.optim: one fused in-place launch per dtype group
            def step(p, s):
                loss, g = jax.value_and_grad(loss_fn)(p, x, y)
                p, s = opt.apply(p, g, s)
                return p, s, loss
        else:
            def step(p, s):
                loss, g = jax.value_and_grad(loss_fn)(p, x, y)
                u, s = opt.update(g, s, p)
                return optax.apply_updates(p, u), s, loss
        step = jax.jit(step, donate_argnums=(0, 1))
        st = [p, s]

        def run():
            st[0], st[1], loss = step(st[0], st[1])
            return loss
        return median_ms(run, jsync)

    record(case, "jax_mps", lambda: jax_case(lenet_mps, mps.optim.adam(1e-3), True))
    record(case, "XLA native", lambda: jax_case(lenet_xla, optax.adam(1e-3), False))
    record(case, "PyTorch (cuDNN)", lambda: torch_lenet(batch))


def torch_lenet(batch):
    import torch
    dev = "cuda"
    torch.backends.cudnn.benchmark = True
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10)).to(dev)
    opt = torch.optim.Adam(net.parameters(), 1e-3, fused=True)
    x = torch.randn(batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss
    return median_ms(run, lambda _: torch.cuda.synchronize())


# ---- LSTM forward + backward (one layer, batch-major input) ----

def bench_lstm(T, B, I, H):
    case = f"LSTM fwd+bwd T{T} B{B} I{I} H{H}"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, T, I), np.float32))
    params = mps.init_lstm(jax.random.key(0), I, H)

    def mps_loss(params, x):
        y, _ = mps.lstm(x, params)
        return jnp.sum(y)

    def scan_loss(params, x):
        p = params[0][0]

        def cell(carry, xt):
            h, c = carry
            g = xt @ p["w_ih"] + h @ p["w_hh"] + p["b_ih"] + p["b_hh"]
            i, f, gg, o = jnp.split(g, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h
        z = jnp.zeros((B, H), x.dtype)
        _, ys = lax.scan(cell, (z, z), jnp.swapaxes(x, 0, 1))
        return jnp.sum(ys)

    def jax_case(loss):
        f = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return median_ms(lambda: f(params, x), jsync)

    record(case, "jax_mps", lambda: jax_case(mps_loss))
    record(case, "XLA lax.scan", lambda: jax_case(scan_loss))
    record(case, "PyTorch (cuDNN)", lambda: torch_lstm(T, B, I, H))


def torch_lstm(T, B, I, H):
    import torch
    net = torch.nn.LSTM(I, H, batch_first=True).cuda()
    x = torch.randn(B, T, I, device="cuda", requires_grad=True)

    def run():
        y, _ = net(x)
        y.sum().backward()
        return y
    return median_ms(run, lambda _: torch.cuda.synchronize())


def write():
    os.makedirs(args.out, exist_ok=True)
    meta = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "backends": mps.backends(),
            "steps": args.steps, "warmup": args.warmup}
    try:
        import torch
        meta["torch"] = torch.__version__
    except ImportError:
        pass
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump({"meta": meta, "results": RESULTS}, f, indent=1)
    cases = list(dict.fromkeys(r["case"] for r in RESULTS))
    impls = list(dict.fromkeys(r["impl"] for r in RESULTS))
    lines = [f"GPU: {meta['device']}, jax {meta['jax']}, median of {args.steps} steps after {args.warmup} warm-up "
             f"(ms; lower is better; ratio = other / jax_mps)", "",
             "| case | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    for c in cases:
        row = {r["impl"]: r for r in RESULTS if r["case"] == c}
        base = row.get("jax_mps", {}).get("ms")
        cells = []
        for i in impls:
            ms = row.get(i, {}).get("ms")
            if ms is None:
                cells.append("n/a")
            elif i != "jax_mps" and base:
                cells.append(f"{ms:.3f} ({ms / base:.2f}x)")
            else:
                cells.append(f"{ms:.3f}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    with open(os.path.join(args.out, "gpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    only = set(args.only.split(","))
    if "lenet" in only:
        for b in (128, 2048):
            bench_lenet(b)
    if "lstm" in only:
        for shape in ((20, 32, 64, 200), (100, 64, 256, 256), (50, 256, 512, 1024)):
            bench_lstm(*shape)
    write()


if __name__ == "__main__":
    main()
