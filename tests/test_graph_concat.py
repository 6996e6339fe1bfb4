"""mps.graph's concat pass: channel concatenations of batch norms written in place (the batch
norms write their channel slice of one buffer; other inputs are copied into theirs). Checked
against mps.batch_norm + jnp.concatenate and against the unrewritten model, values and gradients,
with the pass on and off; the optimized step holds no concatenate."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

import jax_mps as mps
from helpers import assert_close
from jax_mps._validate import activation_code
from jax_mps.graph._concat import concat_in_place


def _rand(key, shape, scale=1.0, shift=0.0):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32) * scale + shift


# ---------------------------------------------------------------- the in-place primitive

ACTS = [None, "relu", "tanh", "sigmoid", ("leaky_relu", {"alpha": 0.1}), "gelu"]
ORDERS = ["bn", "bn,copy", "copy,bn,bn", "bn,copy,bn,copy"]


def _members(order, act, lead, key):
    layout, arrays, want = [], [], []
    for j, kind in enumerate(order.split(",")):
        c = 2 + (key + j) % 4
        if kind == "bn":
            x = _rand(key + 10 * j, lead + (c,), 2.0, 1.0)
            s, b = _rand(key + 10 * j + 1, (c,)), _rand(key + 10 * j + 2, (c,))
            eps = 1e-3 if j % 2 else 1e-5
            layout.append(("bn", eps) + activation_code(act, "test"))
            arrays += [x, s, b]
            want.append(("bn", eps))
        else:
            layout.append(("copy",))
            arrays.append(_rand(key + 10 * j, lead + (c,)))
            want.append(("copy",))
    return tuple(layout), arrays, want


def _reference(want, act, arrays):
    outs, stats, k = [], [], 0
    for m in want:
        if m[0] == "bn":
            y, mean, var = mps.batch_norm(*arrays[k:k + 3], epsilon=m[1], activation=act)
            outs.append(y)
            stats.append((mean, var))
            k += 3
        else:
            outs.append(arrays[k])
            k += 1
    return jnp.concatenate(outs, -1), stats


def _loss(fn, ct):
    def loss(*arrays):
        out, stats = fn(*arrays)
        return jnp.vdot(out, ct) + sum(0.3 * m.sum() + 0.7 * v.sum() for m, v in stats)
    return loss


# every order and every activation at least twice, over three leading shapes (a full product adds little)
@pytest.mark.parametrize("order,act,lead", [(ORDERS[k % 4], ACTS[k % 6], [(2, 5, 5), (7,), (3, 4)][k % 3])
                                            for k in range(12)])
def test_concat_in_place_equals_batch_norm_and_concatenate(order, act, lead):
    layout, arrays, want = _members(order, act, lead, len(order) + len(str(act)))
    ours = lambda *a: concat_in_place(layout, list(a))
    ref = lambda *a: _reference(want, act, list(a))
    got, exp = jax.jit(ours)(*arrays), ref(*arrays)
    jax.tree.map(lambda a, b: assert_close(a, b, 1e-6, 1e-6, "forward"), got, exp)
    ct = _rand(99, got[0].shape)
    n = range(len(arrays))
    g1 = jax.jit(jax.grad(_loss(ours, ct), argnums=n))(*arrays)
    g2 = jax.grad(_loss(ref, ct), argnums=n)(*arrays)
    jax.tree.map(lambda a, b: assert_close(a, b, 1e-5, 1e-5, "grad"), g1, g2)


def test_concat_in_place_check_grads_and_vmap():
    layout, arrays, want = _members("bn,copy,bn", "tanh", (3, 2), 5)
    check_grads(lambda *a: concat_in_place(layout, list(a)), arrays, order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
    batched = [jnp.stack([a, 2 * a + 1]) for a in arrays]
    got = jax.vmap(lambda *a: concat_in_place(layout, list(a)))(*batched)
    for k in range(2):
        exp = _reference(want, "tanh", [b[k] for b in batched])
        jax.tree.map(lambda a, b: assert_close(a, b, 1e-6, 1e-6, "vmap"), jax.tree.map(lambda t: t[k], got), exp)


def test_concat_in_place_nan_propagates():
    layout, arrays, _ = _members("bn,copy", "relu", (4,), 1)
    arrays[0] = arrays[0].at[0, 0].set(jnp.nan)
    out, ((mean, var),) = concat_in_place(layout, arrays)
    assert np.isnan(np.asarray(out[:, 0])).all() and np.isnan(mean[0]) and np.isfinite(np.asarray(out[:, 1:])).all()


def test_concat_in_place_rejects():
    layout, arrays, _ = _members("copy", None, (4,), 1)
    with pytest.raises(ValueError, match="batch-norm member"):
        concat_in_place(layout, arrays)
    layout, arrays, _ = _members("bn,copy", None, (4,), 1)
    with pytest.raises(TypeError, match="float32"):
        concat_in_place(layout, [a.astype(jnp.bfloat16) for a in arrays])


# ---------------------------------------------------------------- through mps.graph.optimize

class ConvBN(nn.Module):
    features: int
    kernel: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, padding="SAME", use_bias=False)(x)
        return nn.relu(nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3)(x))


class InceptionBN(nn.Module):
    """An Inception-A-like block in plain flax.linen: three conv-BN-relu branches and a max pool."""

    @nn.compact
    def __call__(self, x):
        a = ConvBN(3)(x)
        b = ConvBN(4, (3, 3))(ConvBN(2)(x))
        c = ConvBN(2)(nn.avg_pool(x, (3, 3), (1, 1), "SAME"))
        p = nn.max_pool(x, (3, 3), (1, 1), "SAME")
        y = jnp.concatenate([a, b, c, p], -1)
        return jnp.concatenate([ConvBN(3)(y), y], -1)  # a block feeding a second concatenation


def _model():
    m = InceptionBN()
    x = _rand(0, (2, 7, 7, 5))
    v = m.init(jax.random.key(1), x)
    ct = _rand(7, (2, 7, 7, 17))

    def loss(params, stats, x):
        y, upd = m.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return jnp.vdot(y, ct) * 0.01, upd
    return loss, (v["params"], v["batch_stats"], x)


@pytest.mark.parametrize("fuse,concat", [(True, True), (True, False), (False, True), (False, False)])
def test_inception_bn_block_every_pass(fuse, concat):
    loss, args = _model()
    fast = mps.graph.optimize(loss, fuse=fuse, concat=concat)
    jax.tree.map(lambda a, b: assert_close(a, b, 2e-4, 2e-5, "forward"), jax.jit(fast)(*args), loss(*args))
    g = lambda f: jax.grad(lambda p, x: f(p, args[1], x)[0], argnums=(0, 1))
    jax.tree.map(lambda a, b: assert_close(a, b, 2e-4, 2e-5, "grad"), jax.jit(g(fast))(args[0], args[2]),
                 g(loss)(args[0], args[2]))
    r = mps.graph.explain(loss, *args, fuse=fuse, concat=concat)
    outcomes = [row[2] for row in r.rows if row[1] == "concatenate"]
    assert outcomes == (["concat eliminated"] * 2 if fuse and concat else ["left to XLA"] * 2), str(r)
    if fuse and concat:
        assert sum("into its channel slice" in row[3] for row in r.rows) == 4, str(r)


def test_inception_bn_block_step_has_no_concatenate():
    loss, (params, stats, x) = _model()
    opt = optax.sgd(0.1)

    @jax.jit
    def step(params, s, x):
        (l, upd), g = jax.value_and_grad(lambda p: mps.graph.optimize(loss)(p, stats, x), has_aux=True)(params)
        u, s = opt.update(g, s, params)
        return optax.apply_updates(params, u), s, l, upd

    lowered = step.lower(params, opt.init(params), x)
    shlo, hlo = lowered.as_text(), lowered.compile().as_text()
    for t in ("batch_norm_fwd_slice", "batch_norm_fwd_into", "batch_norm_bwd_slice"):
        assert f"@jax_mps_{t}" in shlo, t
    assert "stablehlo.concatenate" not in shlo and "concatenate(" not in hlo


def test_nnx_block_with_concat():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.c1, self.c2 = nnx.Conv(3, 4, (1, 1), rngs=rngs), nnx.Conv(3, 2, (3, 3), rngs=rngs)
            self.b1, self.b2 = nnx.BatchNorm(4, rngs=rngs), nnx.BatchNorm(2, rngs=rngs)

        def __call__(self, x):
            return jnp.concatenate([nnx.relu(self.b1(self.c1(x))), nnx.relu(self.b2(self.c2(x))), x], -1)

    graphdef, params, rest = nnx.split(Block(nnx.Rngs(0)), nnx.Param, ...)
    x = _rand(3, (2, 6, 6, 3))

    def loss(params, rest, x):
        m = nnx.merge(graphdef, params, rest)
        return (m(x) ** 2).mean(), nnx.state(m, nnx.BatchStat)

    fast = mps.graph.optimize(loss)
    jax.tree.map(lambda a, b: assert_close(a, b, 2e-4, 2e-5, "forward"), jax.jit(fast)(params, rest, x),
                 loss(params, rest, x))
    g = lambda f: jax.grad(lambda p, r: f(p, r, x)[0], argnums=(0, 1))  # (nnx: rest traced too)
    jax.tree.map(lambda a, b: assert_close(a, b, 2e-4, 2e-5, "grad"), jax.jit(g(fast))(params, rest),
                 g(loss)(params, rest))
    r = mps.graph.explain(loss, params, rest, x)
    assert [row[2] for row in r.rows if row[1] == "concatenate"] == ["concat eliminated"], str(r)


def test_jax_mps_block_with_nested_concat():
    """A block written with jax_mps itself (batch norms with their relu already fused) and an
    Inception-E-like nested concatenation: both concatenations become one in-place group."""
    def conv_bn(x, p):
        y = mps.conv2d(x, p["w"], padding="SAME")
        return mps.batch_norm(y, p["s"], p["b"], epsilon=1e-3, activation="relu")[0]

    def block(ps, x):
        a = conv_bn(x, ps[0])
        b = jnp.concatenate([conv_bn(x, ps[1]), conv_bn(x, ps[2])], -1)
        return jnp.concatenate([a, b, mps.max_pool2d(x, 3, 1, "SAME")], -1)

    ps = [{"w": _rand(10 * k, (3, 3, 3, c), 0.3), "s": _rand(10 * k + 1, (c,)), "b": _rand(10 * k + 2, (c,))}
          for k, c in enumerate((2, 3, 4))]
    x = _rand(3, (2, 6, 6, 3))
    ct = _rand(4, (2, 6, 6, 12))
    loss = lambda ps, x: jnp.vdot(block(ps, x), ct)
    fast = mps.graph.optimize(loss)
    assert_close(jax.jit(fast)(ps, x), loss(ps, x), 1e-5, 1e-5, "forward")
    jax.tree.map(lambda a, b: assert_close(a, b, 1e-5, 1e-5, "grad"), jax.jit(jax.grad(fast, (0, 1)))(ps, x),
                 jax.grad(loss, (0, 1))(ps, x))
    r = mps.graph.explain(loss, ps, x)
    assert [row[2] for row in r.rows if row[1] == "concatenate"] == ["concat eliminated"] * 2, str(r)
    assert "stablehlo.concatenate" not in jax.jit(jax.grad(fast)).lower(ps, x).as_text()
