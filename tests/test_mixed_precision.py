"""Mixed precision: bfloat16 / float16 compute with float32 masters, dynamic loss scaling."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_mps as mps
from helpers import assert_close

MP = mps.mixed_precision


def _init(key):
    k = jax.random.split(key, 2)
    return {"w": jax.random.normal(k[0], (3, 3, 3, 4)) * 0.3, "s": jnp.ones((4,)), "t": jnp.zeros((4,)),
            "d": jax.random.normal(k[1], (4 * 3 * 3, 5)) * 0.2, "db": jnp.zeros((5,))}


def _loss(p, x, y):
    x = x.astype(p["w"].dtype)
    h = mps.conv2d(x, p["w"], activation="relu")
    h, _, _ = mps.batch_norm(h, p["s"], p["t"])
    h = mps.max_pool2d(h, 2)
    return mps.softmax_cross_entropy(mps.dense(h.reshape(h.shape[0], -1), p["d"], p["db"]), y)


def _data():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(8, 6, 6, 3)), jnp.float32), jnp.asarray(rng.integers(0, 5, 8), jnp.int32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_compute_f32_masters(dtype):
    policy = MP.Policy(dtype)
    opt = mps.optim.adam(1e-2)
    x, y = _data()
    scale = MP.DynamicLossScale.create(2.0 ** 8) if dtype == jnp.float16 else MP.NoLossScale()

    @jax.jit
    def step(p, s, sc):
        loss, g = MP.value_and_grad(_loss, policy, sc)(p, x, y)
        assert all(l.dtype == dtype for l in jax.tree.leaves(g))  # the optimizer reads low-precision grads
        p, s, sc = MP.apply(opt, p, g, s, sc)
        return p, s, sc, loss

    @jax.jit
    def step32(p, s):
        loss, g = jax.value_and_grad(_loss)(p, x, y)
        return (*opt.apply(p, g, s), loss)

    p = q = _init(jax.random.key(0))
    s, s32 = opt.init(p), opt.init(q)
    for _ in range(4):
        p, s, scale, loss = step(p, s, scale)
        q, s32, loss32 = step32(q, s32)
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(p))
    assert loss.dtype == jnp.float32
    assert_close(loss, loss32, 5e-2, 5e-2, "loss vs float32 training")
    jax.tree.map(lambda a, b: assert_close(a, b, 5e-2, 5e-2, "params vs float32 training"), p, q)


def test_grad_scale_unscales_in_the_optimizer():
    p = {"a": jnp.linspace(-1, 1, 7), "b": jnp.ones((2, 3))}
    g16 = jax.tree.map(lambda x: (x * 0.1 + 0.3).astype(jnp.float16) * 1024, p)
    for opt, ref in ((mps.optim.adam(1e-2), optax.adam(1e-2)), (mps.optim.sgd(0.1, 0.9), optax.sgd(0.1, 0.9))):
        got, _ = opt.apply(jax.tree.map(jnp.copy, p), g16, opt.init(p), grad_scale=jnp.float32(1 / 1024))
        g32 = jax.tree.map(lambda g: g.astype(jnp.float32) / 1024, g16)
        u, _ = ref.update(g32, ref.init(p), p)
        jax.tree.map(lambda a, b: assert_close(a, b, 1e-6, 1e-6, "unscaled step"), got, optax.apply_updates(p, u))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_grad_scale_with_clip_norm(rule, groups):
    # The global norm is of the unscaled gradients: one dtype group computes it inside the step
    # (internal), two (float16 and bfloat16 grads of float32 params) sum optim_sqnorm calls (external).
    p = {"a": jnp.linspace(-1, 1, 7), "b": jnp.ones((2, 3)), "c": jnp.linspace(0, 2, 5)}
    s = jnp.float32(1 / 512)
    g = jax.tree.map(lambda x: ((x * 0.7 + 0.4) * 512).astype(jnp.float16), p)
    if groups == 2:
        g["c"] = g["c"].astype(jnp.bfloat16)
    make = {"adam": (lambda **k: mps.optim.adam(1e-2, **k), optax.adam(1e-2)),
            "sgd": (lambda **k: mps.optim.sgd(0.1, 0.9, **k), optax.sgd(0.1, 0.9))}[rule]
    opt, ref = make[0](clip_norm=0.5), optax.chain(optax.clip_by_global_norm(0.5), make[1])
    n_sqnorm = jax.jit(opt.apply).lower(p, g, opt.init(p), s).as_text().count("jax_mps_optim_sqnorm_fwd")
    assert n_sqnorm == (0 if groups == 1 else 2)
    got, st = jax.tree.map(jnp.copy, p), opt.init(p)
    pr, sr = p, ref.init(p)
    g32 = jax.tree.map(lambda x: x.astype(jnp.float32) * s, g)
    for _ in range(2):
        got, st = opt.apply(got, g, st, grad_scale=s)
        u, sr = ref.update(g32, sr, pr)
        pr = optax.apply_updates(pr, u)
    jax.tree.map(lambda a, b: assert_close(a, b, 1e-5, 1e-5, "unscaled, clipped step"), got, pr)


@pytest.mark.parametrize("gdt", [jnp.bfloat16, jnp.float16])
def test_optimizer_reads_low_precision_grads_in_one_call(gdt):
    p = {"a": jnp.linspace(-1, 1, 7), "b": jnp.ones((2, 3))}
    g = jax.tree.map(lambda x: (x * 0.1 + 0.3).astype(gdt), p)
    opt, ref = mps.optim.adam(1e-2), optax.adam(1e-2)
    step = jax.jit(lambda p, g, s: opt.update(g, s, p))
    hlo = step.lower(p, g, opt.init(p)).compile().as_text()
    assert hlo.count("custom_call_target=\"jax_mps_optim_step_fwd\"") == 1
    assert "convert" not in hlo  # the kernel reads the low-precision gradients itself
    u, _ = step(p, g, opt.init(p))
    want, _ = ref.update(jax.tree.map(lambda x: x.astype(jnp.float32), g), ref.init(p), p)
    jax.tree.map(lambda a, b: assert_close(a, b, 1e-6, 1e-6, "low-precision grads"), u, want)


def test_dynamic_loss_scale_skips_on_overflow_and_grows():
    policy = MP.Policy(jnp.float16)
    opt = mps.optim.adam(1e-2)
    x, y = _data()
    p0 = _init(jax.random.key(1))

    @jax.jit
    def step(p, s, sc):
        loss, g = MP.value_and_grad(_loss, policy, sc)(p, x, y)
        return (*MP.apply(opt, p, g, s, sc), MP.all_finite(g))

    # 2^30 times the loss overflows float16 on the way back: the step is skipped, the scale halves
    sc = MP.DynamicLossScale.create(2.0 ** 30, growth_interval=2)
    s0 = opt.init(p0)
    p1, s1, sc1, finite = step(p0, s0, sc)
    assert not bool(finite)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), (p1, s1), (p0, s0))
    assert float(sc1.scale) == 2.0 ** 29 and int(sc1.good_steps) == 0

    # a workable scale: two finite steps in a row double it, and the parameters move
    sc = MP.DynamicLossScale.create(2.0 ** 4, growth_interval=2)
    p, s = p0, s0
    scales = []
    for _ in range(3):
        p, s, sc, finite = step(p, s, sc)
        assert bool(finite)
        scales.append((float(sc.scale), int(sc.good_steps)))
    assert scales == [(16.0, 1), (32.0, 0), (32.0, 1)]
    assert int(s.count) == 3
    assert not np.allclose(np.asarray(p["w"]), np.asarray(p0["w"]))


def test_backoff_respects_min_scale_and_validation():
    sc = MP.DynamicLossScale.create(2.0, min_scale=1.0)
    sc = sc.adjust(jnp.asarray(False)).adjust(jnp.asarray(False))
    assert float(sc.scale) == 1.0
    with pytest.raises(ValueError):
        MP.DynamicLossScale.create(0.0)
    with pytest.raises(TypeError):
        MP.Policy(jnp.int32)
