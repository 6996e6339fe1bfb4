"""jax_mps.flax layers against their flax.nnx namesakes: parameters copied with
nnx.update(ours, nnx.state(theirs, nnx.Param)), then outputs and gradients compared."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_mps.flax as mf
from helpers import assert_close


def _rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def _pair(name, *args, **kwargs):
    ours = getattr(mf, name)(*args, **kwargs, rngs=nnx.Rngs(1))
    theirs = getattr(nnx, name)(*args, **kwargs, rngs=nnx.Rngs(2))
    nnx.update(ours, nnx.state(theirs, nnx.Param))
    return ours, theirs


def _compare(ours, theirs, x, rtol=2e-4, atol=2e-5, **call):
    """Outputs, and gradients w.r.t. the parameters and the input of a random projection."""
    out = jax.tree.leaves(ours(x, **call))
    ref = jax.tree.leaves(theirs(x, **call))
    for a, b in zip(out, ref):
        assert_close(a, b, rtol, atol, "forward")
    cts = [_rand(50 + i, r.shape) for i, r in enumerate(ref)]

    def grads(m):
        g, p, rest = nnx.split(m, nnx.Param, ...)

        def f(p, x, rest):  # rest (batch statistics) traced too, so nnx may update it inside
            return sum(jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(nnx.merge(g, p, rest)(x, **call)), cts))

        return jax.grad(f, (0, 1, 2), allow_int=True)(p, x, rest)[:2]

    (gp, gx), (gp0, gx0) = grads(ours), grads(theirs)
    assert_close(gx, gx0, rtol, atol, "grad x")
    jax.tree.map(lambda a, b: assert_close(a, b, rtol, atol, "grad params"), gp, gp0)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=(3, 3)),
    dict(kernel_size=(3, 2), strides=2, padding="VALID", use_bias=False),
    dict(kernel_size=(3, 3), padding=((1, 2), (0, 1)), kernel_dilation=2, feature_group_count=2),
    dict(kernel_size=(3,), strides=2),                          # 1-D
    dict(kernel_size=(3, 3), padding="CIRCULAR"),               # Flax's own code, optimized
    dict(kernel_size=(3,), padding="CAUSAL"),
])
def test_conv(kw):
    ours, theirs = _pair("Conv", 4, 6, **kw)
    nsp = 1 if isinstance(kw["kernel_size"], tuple) and len(kw["kernel_size"]) == 1 else 2
    x = _rand(0, (2, 9, 4) if nsp == 1 else (2, 9, 8, 4))
    _compare(ours, theirs, x)


def test_conv_batch_dims():
    ours, theirs = _pair("Conv", 3, 5, (3, 3))
    _compare(ours, theirs, _rand(0, (2, 3, 6, 6, 3)))
    _compare(ours, theirs, _rand(0, (6, 6, 3)))


@pytest.mark.parametrize("kw", [dict(kernel_size=(3, 3), strides=2), dict(kernel_size=(2, 3), padding="VALID"),
                                dict(kernel_size=(3, 3), strides=(2, 1), padding=((1, 1), (2, 0)), use_bias=False)])
def test_conv_transpose(kw):
    ours, theirs = _pair("ConvTranspose", 4, 3, **kw)
    _compare(ours, theirs, _rand(0, (2, 5, 6, 4)))


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 5)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_linear(shape, use_bias):
    ours, theirs = _pair("Linear", 5, 7, use_bias=use_bias)
    _compare(ours, theirs, _rand(0, shape))


@pytest.mark.parametrize("kw", [dict(), dict(use_scale=False, use_bias=False, momentum=0.9, epsilon=1e-3)])
def test_batch_norm(kw):
    ours, theirs = _pair("BatchNorm", 5, **kw)
    x = _rand(0, (4, 3, 3, 5)) * 2 + 1
    _compare(ours, theirs, x, use_running_average=False)
    for _ in range(2):  # running averages as nnx.BatchNorm
        ours(x, use_running_average=False)
        theirs(x, use_running_average=False)
    assert_close(ours.mean[...], theirs.mean[...], 1e-5, 1e-6)
    assert_close(ours.var[...], theirs.var[...], 1e-5, 1e-6)
    _compare(ours, theirs, x, use_running_average=True)


def test_batch_norm_axis_out_of_range_as_flax():
    ours, theirs = _pair("BatchNorm", 5, axis=-5)  # nnx does not wrap it; neither may we
    _compare(ours, theirs, _rand(0, (4, 3, 3, 5)), use_running_average=False)


def test_dropout():
    d = mf.Dropout(0.25, rngs=nnx.Rngs(0))
    x = jnp.ones((200, 100))
    y = d(x)
    keep = np.asarray(y != 0)
    assert abs(keep.mean() - 0.75) < 0.02
    np.testing.assert_allclose(np.asarray(y)[keep], 1 / 0.75, rtol=1e-6)
    g = jax.grad(lambda x: (d(x, rngs=jax.random.key(3)) * 2).sum())(x)
    y3 = d(x, rngs=jax.random.key(3))
    np.testing.assert_allclose(np.asarray(g), np.asarray(y3) * 2, rtol=1e-6)
    assert (d(x, deterministic=True) == x).all()
    b = mf.Dropout(0.5, broadcast_dims=(1,), rngs=nnx.Rngs(0))(x)  # Flax's own code: one mask per row
    with pytest.raises(ValueError, match="no `rngs`"):
        mf.Dropout(0.5)(x)
    with pytest.raises(TypeError, match="number"):  # float("0.5") would take it; Flax raises
        mf.Dropout("0.5", rngs=nnx.Rngs(0))(x)
    assert all(len(set(np.asarray(r).tolist())) == 1 for r in b[:10])


@pytest.mark.parametrize("cell", ["OptimizedLSTMCell", "GRUCell"])
def test_cells_step_by_step(cell):
    ours, theirs = _pair(cell, 4, 6)
    x = _rand(0, (3, 4))
    carry = theirs.initialize_carry((3, 4), nnx.Rngs(0))
    carry = jax.tree.map(lambda c: c + 0.3, carry)
    for a, b in zip(jax.tree.leaves(ours(carry, x)), jax.tree.leaves(theirs(carry, x))):
        assert_close(a, b, 2e-5, 2e-6)


@pytest.mark.parametrize("cell", ["OptimizedLSTMCell", "GRUCell"])
@pytest.mark.parametrize("call", [dict(), dict(return_carry=True), dict(time_major=True),
                                  dict(reverse=True, keep_order=True, return_carry=True)])
def test_rnn_one_call(cell, call):
    c_ours, c_theirs = _pair(cell, 4, 6)
    ours, theirs = mf.RNN(c_ours), nnx.RNN(c_theirs)
    x = _rand(0, (5, 3, 4) if call.get("time_major") else (3, 5, 4))
    _compare(ours, theirs, x, **call)
    g, st = nnx.split(ours)
    text = jax.jit(lambda st, x: nnx.merge(g, st)(x, **call)).lower(st, x).as_text()
    assert text.count("@jax_mps_rnn_fwd") == 1 and "while" not in text


def test_rnn_seq_lengths():
    c_ours, c_theirs = _pair("OptimizedLSTMCell", 4, 6)
    ours, theirs = mf.RNN(c_ours), nnx.RNN(c_theirs)
    x, lens = _rand(0, (3, 5, 4)), jnp.array([5, 2, 3])
    (c, y), (c0, y0) = ours(x, seq_lengths=lens, return_carry=True), theirs(x, seq_lengths=lens, return_carry=True)
    jax.tree.map(lambda a, b: assert_close(a, b, 2e-5, 2e-6), c, c0)
    mask = (jnp.arange(5)[None, :] < lens[:, None])[..., None]
    assert_close(jnp.where(mask, y, 0), jnp.where(mask, y0, 0), 2e-5, 2e-6)
    assert (jnp.where(mask, 0, y) == 0).all()


@pytest.mark.parametrize("cell", ["OptimizedLSTMCell", "GRUCell"])
@pytest.mark.parametrize("xdt, cell_dtype", [(jnp.bfloat16, None), (jnp.int32, None), (jnp.float32, jnp.bfloat16)])
def test_rnn_dtypes_as_flax(cell, xdt, cell_dtype):
    # Flax's cell promotes the input with the float32 params and carry: its output and carry are
    # float32, whatever the input dtype (a bfloat16 cell dtype rounds only its dense layers).
    c_ours, c_theirs = _pair(cell, 4, 6, dtype=cell_dtype)
    x = (_rand(0, (3, 5, 4)) * 3).astype(xdt)
    (c, y), (c0, y0) = mf.RNN(c_ours)(x, return_carry=True), nnx.RNN(c_theirs)(x, return_carry=True)
    rtol, atol = (2e-5, 2e-6) if cell_dtype is None else (3e-2, 1e-2)  # bfloat16 gates: ~1 ulp
    for a, b in zip(jax.tree.leaves((c, y)), jax.tree.leaves((c0, y0))):
        assert a.dtype == b.dtype == jnp.float32
        assert_close(a, b, rtol, atol)


@pytest.mark.parametrize("shape", [(3, 0, 4), (0, 5, 4)])
def test_rnn_empty_as_flax(shape):
    c_ours, c_theirs = _pair("GRUCell", 4, 6)
    (c, y), (c0, y0) = mf.RNN(c_ours)(jnp.ones(shape), return_carry=True), nnx.RNN(c_theirs)(jnp.ones(shape), return_carry=True)
    assert y.shape == y0.shape and c.shape == c0.shape


def test_dropout_rate_one_as_flax():
    assert (mf.Dropout(1.0)(jnp.ones(4)) == 0).all()  # no rngs needed, none drawn
    rngs = nnx.Rngs(0)
    d = mf.Dropout(1.0, rngs=rngs)
    before = int(d.rngs.count[...])
    d(jnp.ones(4))
    assert int(d.rngs.count[...]) == before


@pytest.mark.parametrize("name, args, x", [("Linear", (3, 4), (2, 3)), ("Conv", (3, 4, (3, 3)), (1, 5, 5, 3)),
                                           ("ConvTranspose", (3, 4, (3, 3)), (1, 5, 5, 3))])
def test_precision_argument(name, args, x):
    # A layer's own precision overrides jax.default_matmul_precision, as in Flax's lax call (HIGHEST:
    # full float32 on CUDA); None follows it.
    for config, precision, code in (("default", jax.lax.Precision.HIGHEST, 1), ("highest", jax.lax.Precision.DEFAULT, 0),
                                    ("highest", None, 1), ("default", None, 0)):
        m = getattr(mf, name)(*args, precision=precision, rngs=nnx.Rngs(0))
        with jax.default_matmul_precision(config):
            text = jax.jit(lambda v: m(v)).lower(jnp.ones(x)).as_text()
        assert f"precision = {code} : i64" in text, (config, precision)
    with pytest.raises(ValueError, match="Precision argument"):  # as lax / nnx
        getattr(mf, name)(*args, precision="bogus", rngs=nnx.Rngs(0))(jnp.ones(x))


def test_checkpoint_state_loads_into_ours():
    class Net(nnx.Module):
        def __init__(self, mod, rngs):
            self.conv = mod.Conv(3, 4, (3, 3), rngs=rngs)
            self.bn = mod.BatchNorm(4, rngs=rngs)
            self.fc = mod.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.fc(jax.nn.relu(self.bn(self.conv(x), use_running_average=True)).mean((1, 2)))

    theirs, ours = Net(nnx, nnx.Rngs(0)), Net(mf, nnx.Rngs(1))
    nnx.update(ours, nnx.state(theirs))  # params and batch statistics
    x = _rand(0, (2, 5, 5, 3))
    assert_close(ours(x), theirs(x), 2e-5, 2e-6)
