"""Whole training steps side by side in one process: jax_mps vs XLA-native JAX vs PyTorch, on the
GPU (issue 15) or, with --cpu, the CPU steps of issue 14 at full size.

Each case: every implementation's warm-up steps, then the median of --steps steps, each timed to
completion (block on the JAX results / torch.cuda.synchronize). On the GPU the implementations run
one after the other (each frees its memory first); on the CPU (--rounds, default 10) they take
turns, a slice of the steps each per round, so that the machine's slow drifts (a shared VM moves
10-30%) fall on every implementation alike rather than on whichever ran during them. Writes NAME.json and NAME.md (--name, default gpu)
into --out (default benchmarks/results). Cases a backend cannot run (e.g. jax.experimental.rnn
off cuDNN, or a target the CUDA backend does not implement yet) are recorded with the error
instead of a time. Every JAX training step must trace once (checked).
Cases (--only): lenet, mnist_cnn (the TF-tutorial CNN), activity, lstm, inception.
    python benchmarks/bench_gpu.py --steps 20 [--only lenet,activity,lstm,inception]
    python benchmarks/bench_gpu.py --cpu        # MNIST CNN b128, activity b32, InceptionV3 b8 f32 on the CPU
    python benchmarks/bench_gpu.py --cpu-smoke --out /tmp/gb   # every case at tiny sizes on the CPU
The models besides jax_mps's: XLA native in _gpu_models.py (InceptionV3: flax.linen, _models.py),
PyTorch in _torch_models.py; jax_mps's are those of examples/activity.py and examples/inception_v3.py.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=None,
                help="timed steps per implementation (default 20; --cpu: MNIST CNN 100, activity 300, InceptionV3 20)")
ap.add_argument("--rounds", type=int, default=None,
                help="interleave the implementations in this many rounds (default: 10 with --cpu, else 1 = one after the other)")
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--only", default=None, help="default: lenet,activity,lstm,inception (--cpu: mnist_cnn,activity,inception)")
ap.add_argument("--inception-batch", type=int, default=128)
ap.add_argument("--cpu-smoke", action="store_true",
                help="every case at tiny sizes (batch 2, InceptionV3 at 75x75), 2 steps after 1 warm-up, "
                     "JAX and PyTorch on the CPU: checks that the script runs end to end")
ap.add_argument("--out", default=None, help="default: benchmarks/results (with --cpu-smoke: /tmp/bench_gpu_smoke)")
ap.add_argument("--cpu", action="store_true", help="full-size CPU steps (issue 14), JAX and PyTorch on the CPU")
ap.add_argument("--name", default=None, help="output files: NAME.json and NAME.md in --out (default gpu, --cpu: cpu_steps)")
args = ap.parse_args()
if args.cpu_smoke or args.cpu:
    os.environ["JAX_PLATFORMS"] = "cpu"
if args.cpu_smoke:
    args.steps, args.warmup = 2, 1
args.rounds = args.rounds or (10 if args.cpu else 1)
args.name = args.name or ("cpu_steps" if args.cpu else "gpu")
args.only = args.only or ("mnist_cnn,activity,inception" if args.cpu else "lenet,activity,lstm,inception")
# XLA would otherwise take 75% of the GPU up front and leave PyTorch's InceptionV3 short.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))  # activity.py, inception_v3.py (and its train_cnn)
if args.out is None:
    args.out = "/tmp/bench_gpu_smoke" if args.cpu_smoke else os.path.join(HERE, "results")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import _gpu_models as xm  # noqa: E402
import _mps_models as mm  # noqa: E402
import jax_mps as mps  # noqa: E402

SMOKE, CPU = args.cpu_smoke, args.cpu_smoke or args.cpu
SIZES = {  # case -> sizes; the smoke run keeps the structure, shrinks the numbers
    "lenet": (2,) if SMOKE else (128, 2048),
    "mnist_cnn": (2,) if SMOKE else (128,),
    "activity": (2,) if SMOKE else (32,) if args.cpu else (32, 512),
    "lstm": ((5, 2, 4, 8),) if SMOKE else ((20, 32, 64, 200), (100, 64, 256, 256), (50, 256, 512, 1024)),
    "inception": (2, 75) if SMOKE else (8, 299) if args.cpu else (args.inception_batch, 299),  # (batch, image size)
}
INCEPTION_DTYPES = (jnp.float32,) if args.cpu else (jnp.float32, jnp.bfloat16)
TORCH = "PyTorch" if CPU else "PyTorch (cuDNN)"
CPU_STEPS = {"mnist_cnn": 100, "activity": 300, "inception": 20}  # --cpu: timed steps per implementation
RESULTS = []


class Timer:
    """One implementation's step, warmed up on creation; run(n) -> the seconds of n more steps.
    `check` (optional) runs after the timing and raises if the steps were not what they claim."""

    def __init__(self, step, sync, check=None):
        self.step, self.sync, self.check = step, sync, check
        for _ in range(args.warmup):
            sync(step())

    def run(self, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.sync(self.step())
            times.append(time.perf_counter() - t0)
        return times


def _error(e):
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _free():
    gc.collect()  # the buffers go before the next implementation's; PyTorch's cache back to the device
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


def record(case, key, impls, batch=None):
    """impls: [(impl, fn)], fn() -> Timer or (Timer, note). Times each implementation's steps
    (--steps, or the case key's default): with --rounds 1 one after the other, each freeing its
    memory first, else all set up and taking turns; records the medians. `batch` (images per
    step) adds images/s to the markdown."""
    steps = args.steps or (CPU_STEPS[key] if args.cpu else 20)
    extra = {"batch": batch} if batch else {}
    for group in ([[i] for i in impls] if args.rounds == 1 else [impls]):
        _time(case, group, steps, extra)
        _free()


def _time(case, impls, steps, extra):
    """Sets up `impls` and runs --rounds rounds of a slice of `steps` each (each implementation
    leading in turn); an implementation that fails is recorded with its error and drops out."""
    timers, notes, times = {}, {}, {}

    def fail(impl, e):  # a backend that cannot run the case: keep the reason, go on
        times.pop(impl, None)
        RESULTS.append({"case": case, "impl": impl, "ms": None, "error": _error(e), **extra})
        print(f"{case:42s} {impl:26s}   n/a  ({_error(e)})", flush=True)

    for impl, fn in impls:
        try:
            out = fn()
            timers[impl], notes[impl] = out if isinstance(out, tuple) else (out, None)
            times[impl] = []
        except Exception as e:
            fail(impl, e)
    per = -(-steps // args.rounds)
    for r in range(args.rounds):
        order = list(times)
        for impl in order[r % len(order):] + order[:r % len(order)] if order else []:
            try:
                times[impl] += timers[impl].run(per)
            except Exception as e:
                fail(impl, e)
    for impl in list(times):
        try:
            if timers[impl].check:
                timers[impl].check()
        except Exception as e:
            fail(impl, e)
            continue
        ms = statistics.median(times[impl]) * 1e3
        RESULTS.append({"case": case, "impl": impl, "ms": ms, "steps": len(times[impl]), **extra,
                        **({"note": notes[impl]} if notes.get(impl) else {})})
        print(f"{case:42s} {impl:26s} {ms:9.3f} ms", flush=True)


def jsync(x):
    jax.block_until_ready(x)


def time_state_step(step, state, batch):
    """A Timer of `state, loss = step(state, batch)` jitted with the state donated; the step
    must trace once (a retrace per step would time the compiler)."""
    traces = [0]

    def counted(state, batch):
        traces[0] += 1
        return step(state, batch)
    f = jax.jit(counted, donate_argnums=0)
    st = [state]

    def run():
        st[0], loss = f(st[0], batch)
        return loss

    def check():
        if traces[0] != 1:
            raise RuntimeError(f"the step was traced {traces[0]} times")
    return Timer(run, jsync, check)


def optax_step(loss_fn, opt):
    """(state = (params, opt_state), batch) -> (state, loss) with an optax update."""
    def step(state, batch):
        p, s = state
        loss, g = jax.value_and_grad(loss_fn)(p, *batch)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss
    return step


def torch_env():
    """(torch, device, sync): CUDA on the GPU run, the CPU in the smoke and --cpu runs."""
    import torch
    torch.backends.cudnn.benchmark = True
    dev = "cpu" if CPU else "cuda"
    return torch, dev, (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)


def torch_train_timer(net, opt, x, y, sync, autocast=None):
    """One PyTorch training step: zero_grad, forward (under `autocast`, a dtype), cross entropy, step."""
    import torch

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, autocast) if autocast else contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss
    return Timer(run, sync)


# ---- LeNet-5 (28x28x1, Adam) ----

def mnist_like(batch):
    """Random 28x28x1 images and labels of 10 classes (the timing needs no real digits)."""
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal((batch, 28, 28, 1), np.float32)),
            jnp.asarray(rng.integers(0, 10, batch, dtype=np.int32)))


def bench_lenet(batch):
    case = f"LeNet-5 step, batch {batch} (Adam)"
    x, y = mnist_like(batch)

    def mps_case():
        opt = mps.optim.adam(1e-3)

        def step(state, batch):  # mps.optim: one fused in-place launch per dtype group
            loss, g = jax.value_and_grad(mm.lenet_mps)(state[0], *batch)
            return opt.apply(state[0], g, state[1]), loss
        p = xm.lenet_init(jax.random.key(0))
        return time_state_step(step, (p, opt.init(p)), (x, y))

    def xla_case():
        p, opt = xm.lenet_init(jax.random.key(0)), optax.adam(1e-3)
        return time_state_step(optax_step(xm.lenet_loss, opt), (p, opt.init(p)), (x, y))

    record(case, "lenet", [("jax_mps", mps_case), ("XLA native", xla_case), (TORCH, lambda: torch_lenet(batch))])


def torch_mnist_step_ms(torch, net, batch, dev, sync):
    """A PyTorch training step of `net` on random 28x28x1 images, fused Adam."""
    opt = torch.optim.Adam(net.parameters(), 1e-3, fused=True)
    x = torch.randn(batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    return torch_train_timer(net, opt, x, y, sync)


def torch_lenet(batch):
    torch, dev, sync = torch_env()
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))
    return torch_mnist_step_ms(torch, net.to(dev), batch, dev, sync)


# ---- the TF-tutorial MNIST CNN (28x28x1, dropout 0.4, Adam) ----

def bench_mnist_cnn(batch):
    case = f"MNIST CNN (TF tutorial) step, batch {batch} (Adam)"
    x, y = mnist_like(batch)

    def jax_case(loss_fn, opt, fused):
        def step(state, batch):
            p, s, key = state
            key, sub = jax.random.split(key)
            loss, g = jax.value_and_grad(loss_fn)(p, *batch, sub)
            if fused:
                p, s = opt.apply(p, g, s)
            else:
                u, s = opt.update(g, s, p)
                p = optax.apply_updates(p, u)
            return (p, s, key), loss
        p = xm.cnn_init(jax.random.key(0))
        return time_state_step(step, (p, opt.init(p), jax.random.key(1)), (x, y))

    record(case, "mnist_cnn", [("jax_mps", lambda: jax_case(mm.cnn_mps, mps.optim.adam(1e-3), True)),
                               ("XLA native", lambda: jax_case(xm.cnn_loss, optax.adam(1e-3), False)),
                               (TORCH, lambda: torch_mnist_cnn(batch))])


def torch_mnist_cnn(batch):
    torch, dev, sync = torch_env()
    from _torch_models import mnist_cnn
    net = mnist_cnn(xm.CNN_RATE)
    return torch_mnist_step_ms(torch, net.to(dev), batch, dev, sync)


# ---- the activity classifier (input 2000x6 -> 20 steps of 7 classes, Adam) ----

def bench_activity(batch):
    case = f"activity classifier step, batch {batch} (Adam)"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 2000, 6), np.float32))
    labels = jnp.asarray(rng.integers(0, xm.ACT_CLASSES, batch, dtype=np.int32))
    lr = 2e-3  # activity.Config's

    def mps_case():  # examples/activity.py as it trains: its init, forward, loss and step
        import activity
        cfg = activity.Config()
        if (cfg.hidden, cfg.dropout, cfg.learning_rate, cfg.weight_decay) != (xm.ACT_HIDDEN, xm.ACT_RATE, lr, 0.0):
            raise RuntimeError(f"examples/activity.py's Config is no longer the benchmarked model: {cfg}")
        opt = mps.optim.adam(lr)
        train_step, _ = activity.make_steps(cfg, opt)
        params, bn_stats = activity.init(jax.random.PRNGKey(0), cfg)
        weights = jnp.ones((batch, xm.ACT_STEPS), jnp.float32)  # every window valid
        state = (params, bn_stats, opt.init(params), jax.random.PRNGKey(1))
        return time_state_step(train_step, state, (x, labels, weights))

    def xla_case(cudnn):
        opt = optax.adam(lr)

        def step(state, batch):
            params, bn_stats, s, key = state
            key, sub = jax.random.split(key)
            (loss, bn_stats), g = jax.value_and_grad(xm.activity_loss, has_aux=True)(
                params, bn_stats, *batch, sub, cudnn)
            u, s = opt.update(g, s, params)
            return (optax.apply_updates(params, u), bn_stats, s, key), loss
        params, bn_stats = xm.activity_init(jax.random.PRNGKey(0), cudnn)
        return time_state_step(step, (params, bn_stats, opt.init(params), jax.random.PRNGKey(1)), (x, labels))

    impls = [("jax_mps", mps_case), ("XLA native", lambda: xla_case(False))]
    if not args.cpu:  # cuDNN only
        impls.append(("XLA jax.experimental.rnn", lambda: xla_case(True)))
    record(case, "activity", impls + [(TORCH, lambda: torch_activity(batch, lr))])


def torch_activity(batch, lr):
    torch, dev, sync = torch_env()
    from _torch_models import Activity
    net = Activity(xm.ACT_HIDDEN, xm.ACT_CLASSES, xm.ACT_RATE).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr, fused=True)
    x = torch.randn(batch, 6, 2000, device=dev)
    y = torch.randint(0, xm.ACT_CLASSES, (batch,), device=dev).repeat_interleave(xm.ACT_STEPS)
    return torch_train_timer(net, opt, x, y, sync)


# ---- LSTM forward + backward (one layer, batch-major input) ----

def bench_lstm(T, B, I, H):
    case = f"LSTM fwd+bwd T{T} B{B} I{I} H{H}"
    x = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, I), np.float32))

    def grad_case(loss, params):
        f = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return Timer(lambda: f(params, x), jsync)

    params = mps.init_lstm(jax.random.key(0), I, H)
    record(case, "lstm", [
        ("jax_mps", lambda: grad_case(lambda p, x: jnp.sum(mps.lstm(x, p)[0]), params)),
        ("XLA lax.scan", lambda: grad_case(lambda p, x: jnp.sum(xm.scan_lstm(p[0][0], x)), params)),
        ("XLA jax.experimental.rnn", lambda: grad_case(
            lambda w, x: jnp.sum(xm.cudnn_lstm(w, x, H)), xm.init_cudnn_lstm(jax.random.key(0), I, H))),
        (TORCH, lambda: torch_lstm(T, B, I, H))])


def torch_lstm(T, B, I, H):
    torch, dev, sync = torch_env()
    net = torch.nn.LSTM(I, H, batch_first=True).to(dev)
    x = torch.randn(B, T, I, device=dev, requires_grad=True)

    def run():
        y, _ = net(x)
        y.sum().backward()
        return y
    return Timer(run, sync)


# ---- InceptionV3 (299x299x3, 1000 classes, Adam), float32 and bfloat16 ----

def bench_inception(batch, size, dtype):
    case = f"InceptionV3 step, batch {batch}, {size}x{size}, {jnp.dtype(dtype).name}"
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, size, size, 3), np.float32)
    y_np = rng.integers(0, 1000, batch).astype(np.int32)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)

    def mps_case():  # bfloat16: the mixed-precision path (bf16 compute and grads, f32 masters and state)
        import inception_v3 as ex
        policy, opt = mps.mixed_precision.Policy(dtype), mps.optim.adam(1e-3)

        @mps.graph.optimize  # as examples/inception_v3.py: the blocks' concatenations written in place
        def loss_fn(p, x, y):
            return mps.softmax_cross_entropy(ex.inception_v3(ex._Net(p, 1.0, dtype), x), y)

        def step(state, batch):
            loss, g = mps.mixed_precision.value_and_grad(loss_fn, policy)(state[0], *batch)
            return opt.apply(state[0], g, state[1]), loss
        p = ex.init_params(jax.random.PRNGKey(0), size)
        return time_state_step(step, (p, opt.init(p)), (x, y))

    def xla_case():  # flax.linen, dtype = compute dtype, float32 params (Flax's mixed precision)
        from _models import InceptionV3
        model, opt = InceptionV3(dtype=dtype), optax.adam(1e-3)
        v = model.init(jax.random.PRNGKey(0), x[:1])

        def step(state, batch):
            params, stats, s = state

            def loss_fn(params, stats, x, y):
                logits, upd = model.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]
            (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, *batch)
            u, s = opt.update(g, s, params)
            return (optax.apply_updates(params, u), stats, s), loss
        return time_state_step(step, (v["params"], v["batch_stats"], opt.init(v["params"])), (x, y))

    record(case, "inception", [("jax_mps", mps_case), ("XLA native", xla_case),
                               (TORCH, lambda: torch_inception(x_np, y_np, dtype))], batch)


def torch_inception(x_np, y_np, dtype):
    torch, dev, sync = torch_env()
    from _torch_models import inception_v3
    net, source = inception_v3(1000)
    net = net.to(dev, memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3, fused=True)
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).to(dev).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(y_np).long().to(dev)
    bf16 = jnp.dtype(dtype) == jnp.bfloat16
    timer = torch_train_timer(net, opt, x, y, sync, torch.bfloat16 if bf16 else None)
    return timer, f"{source}, channels_last" + (", autocast bfloat16" if bf16 else "")


def write():
    os.makedirs(args.out, exist_ok=True)
    meta = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "backends": mps.backends(),
            "warmup": args.warmup, "rounds": args.rounds, "cpu_smoke": SMOKE}
    try:
        import torch
        meta["torch"] = torch.__version__
    except ImportError:
        pass
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump({"meta": meta, "results": RESULTS}, f, indent=1)
    cases = list(dict.fromkeys(r["case"] for r in RESULTS))
    order = ["jax_mps", "XLA native", "XLA lax.scan", "XLA jax.experimental.rnn", TORCH]
    impls = sorted(dict.fromkeys(r["impl"] for r in RESULTS), key=lambda i: order.index(i) if i in order else 99)
    where = "CPU smoke run" if SMOKE else f"CPU ({os.cpu_count()} cores)" if CPU else "GPU"
    steps = sorted({r["steps"] for r in RESULTS if r.get("steps")})
    how = f"interleaved in {args.rounds} rounds" if args.rounds > 1 else "one implementation after the other"
    lines = [f"{where}: {meta['device']}, jax {meta['jax']}, median of {'/'.join(map(str, steps))} steps "
             f"after {args.warmup} warm-up, {how} (ms; lower is better; ratio = other / jax_mps; "
             f"img/s for InceptionV3)", "",
             "| case | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    for c in cases:
        row = {r["impl"]: r for r in RESULTS if r["case"] == c}
        base = row.get("jax_mps", {}).get("ms")
        cells = []
        for i in impls:
            r = row.get(i)
            if r is None:
                cells.append("")        # not a comparator of this case
            elif r["ms"] is None:
                cells.append("n/a")     # failed: the reason is in the JSON
            else:
                cell = f"{r['ms']:.3f}" + (f" ({r['ms'] / base:.2f}x)" if i != "jax_mps" and base else "")
                if r.get("batch"):
                    ips = r["batch"] / r["ms"] * 1e3
                    cell += f", {ips:.0f} img/s" if ips >= 100 else f", {ips:.3g} img/s"
                cells.append(cell)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    notes = [f"- {r['case']}, {r['impl']}: {r['note']}" for r in RESULTS if r.get("note")]
    notes += [f"- {r['case']}, {r['impl']}: n/a: {r['error']}" for r in RESULTS if r.get("error")]
    if notes:
        lines += [""] + notes
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    only = set(args.only.split(","))
    if unknown := only - set(SIZES):
        ap.error(f"--only: unknown case(s) {sorted(unknown)}; choose from {sorted(SIZES)}")
    if "lenet" in only:
        for b in SIZES["lenet"]:
            bench_lenet(b)
    if "mnist_cnn" in only:
        for b in SIZES["mnist_cnn"]:
            bench_mnist_cnn(b)
    if "activity" in only:
        for b in SIZES["activity"]:
            bench_activity(b)
    if "lstm" in only:
        for shape in SIZES["lstm"]:
            bench_lstm(*shape)
    if "inception" in only:
        for dtype in INCEPTION_DTYPES:
            bench_inception(*SIZES["inception"], dtype)
    write()


if __name__ == "__main__":
    main()
