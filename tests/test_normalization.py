import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_mps as mps
import reference as ref
from helpers import assert_close, check_fwd_and_grads

TOL = dict(rtol=2e-4, atol=2e-4)
ACTS = [None, "relu", "relu6", ("leaky_relu", {"alpha": 0.2}), ("elu", {"alpha": -0.5}), "sigmoid",
        "hard_sigmoid", "tanh", "softplus", "softsign", "gelu", ("gelu", {"approximate": True})]
SHAPES = [(1, 3), (5, 7), (3, 4, 9), (2, 3, 5, 13), (1, 1, 1, 4), (2, 5, 3, 64)]


def _check(f, r, args):
    # jit both sides: one compile per case instead of op-by-op dispatch of the reference.
    check_fwd_and_grads(jax.jit(f), jax.jit(r), args, **TOL)


def _arr(shape, seed, loc=0.0, scale=1.0):
    return jnp.asarray((np.random.default_rng(seed).normal(loc, scale, shape)).astype(np.float32))


def _params(c, seed=1):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.uniform(0.5, 1.5, c).astype(np.float32)) * jnp.where(jnp.arange(c) % 3 == 0, -1, 1),
            jnp.asarray(r.normal(size=c).astype(np.float32)))


def _stats(c, seed=2):
    r = np.random.default_rng(seed)
    return jnp.asarray(r.normal(size=c).astype(np.float32)), jnp.asarray(r.uniform(0.3, 2.0, c).astype(np.float32))


# ---- batch_norm (training) ----

@pytest.mark.parametrize("shape,epsilon", list(zip(SHAPES, [1e-5, 0.1, 1e-3, 1e-5, 0.1, 1e-5])))
def test_batch_norm(shape, epsilon):
    x = _arr(shape, 0, loc=2.0)
    s, b = _params(shape[-1])
    # Cotangents on y, mean and var all flow back (check_fwd_and_grads draws one per output).
    _check(lambda x, s, b: mps.batch_norm(x, s, b, epsilon=epsilon),
           lambda x, s, b: ref.norm_batch_norm(x, s, b, epsilon=epsilon), (x, s, b))


@pytest.mark.parametrize("act", ACTS)
def test_batch_norm_activation(act):
    x = _arr((6, 3, 11), 3)
    s, b = _params(11)
    _check(lambda x, s, b: mps.batch_norm(x, s, b, activation=act),
           lambda x, s, b: ref.norm_batch_norm(x, s, b, activation=act), (x, s, b))


@pytest.mark.parametrize("which", [1, 2])
def test_batch_norm_stat_cotangents_alone(which):
    # Gradient through the mean or the var output only (y unused): exact, not dropped.
    x = _arr((4, 5, 6), 4, loc=1.0)
    s, b = _params(6)
    w = _arr((6,), 5)
    f = lambda fn: jax.grad(lambda x: jnp.sum(fn(x, s, b)[which] * w))(x)  # noqa: E731
    assert_close(f(mps.batch_norm), f(ref.norm_batch_norm), **TOL)


def test_batch_norm_single_row_no_nan():
    # One element per channel: var = 0, y = bias; nothing may be NaN, forward or backward.
    x = _arr((1, 5), 0)
    s, b = _params(5)
    y, m, v = mps.batch_norm(x, s, b)
    assert_close(y, jnp.broadcast_to(b, (1, 5)), atol=1e-5)
    assert_close(m, x[0])
    assert_close(v, jnp.zeros(5))
    check_fwd_and_grads(mps.batch_norm, ref.norm_batch_norm, (x, s, b), **TOL)
    g = jax.grad(lambda *a: sum(jnp.sum(o) for o in mps.batch_norm(*a)), argnums=(0, 1, 2))(x, s, b)
    assert all(bool(jnp.all(jnp.isfinite(t))) for t in g)


def test_batch_norm_large_offset_accuracy():
    # Two-pass / blocked variance: a large common offset must not wreck the variance.
    x = _arr((300, 40, 8), 6, loc=1000.0, scale=0.01)
    s, b = _params(8)
    y, m, v = mps.batch_norm(x, s, b, epsilon=0.0)
    xd = np.asarray(x, np.float64).reshape(-1, 8)
    assert_close(m, xd.mean(0), rtol=1e-6)
    assert_close(v, xd.var(0), rtol=1e-4, atol=0)
    yd = (xd - xd.mean(0)) / np.sqrt(xd.var(0)) * np.asarray(s) + np.asarray(b)
    assert_close(y.reshape(-1, 8), yd, rtol=1e-3, atol=1e-3)


def test_batch_norm_check_grads():
    x = _arr((3, 2, 5), 7)
    s, b = _params(5)
    check_grads(lambda x, s, b: mps.batch_norm(x, s, b, activation="tanh"), (x, s, b), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)


# ---- batch_norm_inference ----

@pytest.mark.parametrize("shape,epsilon", list(zip(SHAPES, [0.5, 1e-5, 1e-5, 0.1, 1e-3, 1e-5])))
def test_batch_norm_inference(shape, epsilon):
    x = _arr(shape, 0)
    s, b = _params(shape[-1])
    m, v = _stats(shape[-1])
    _check(lambda *a: mps.batch_norm_inference(*a, epsilon=epsilon),
           lambda *a: ref.norm_batch_norm_inference(*a, epsilon=epsilon), (x, s, b, m, v))


@pytest.mark.parametrize("act", ACTS)
def test_batch_norm_inference_activation(act):
    x = _arr((4, 3, 10), 3)
    s, b = _params(10)
    m, v = _stats(10)
    _check(lambda *a: mps.batch_norm_inference(*a, activation=act),
           lambda *a: ref.norm_batch_norm_inference(*a, activation=act), (x, s, b, m, v))


def test_batch_norm_inference_check_grads():
    x = _arr((3, 5), 7)
    s, b = _params(5)
    m, v = _stats(5)
    check_grads(mps.batch_norm_inference, (x, s, b, m, v), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


# ---- instance_norm ----

@pytest.mark.parametrize("shape,epsilon", [((1, 1, 3), 1e-5), ((2, 5, 7), 0.1), ((3, 4, 5, 9), 1e-5),
                                           ((1, 2, 3, 4, 5), 1e-3), ((2, 6, 7, 64), 1e-5)])
def test_instance_norm(shape, epsilon):
    x = _arr(shape, 0, loc=-1.0)
    s, b = _params(shape[-1])
    _check(lambda x, s, b: mps.instance_norm(x, s, b, epsilon=epsilon),
           lambda x, s, b: ref.norm_instance_norm(x, s, b, epsilon=epsilon), (x, s, b))


def test_instance_norm_check_grads():
    x = _arr((2, 3, 4), 7)
    s, b = _params(4)
    check_grads(mps.instance_norm, (x, s, b), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


# ---- local_response_norm ----

@pytest.mark.parametrize("size,alpha,beta,k,shapes", [
    (5, 1e-4, 0.75, 1.0, [(7,), (2, 3, 4, 17)]), (1, 0.5, 0.5, 2.0, [(3, 1), (4, 9)]),
    (3, 1.0, 1.3, 0.5, [(1,), (5, 3, 6)]), (7, 2.0, -0.25, 1.0, [(4, 9), (2, 3, 4, 17)]),
    (21, 0.3, 0.75, 1.0, [(3, 1), (5, 3, 6)])])
def test_local_response_norm(size, alpha, beta, k, shapes):
    for shape in shapes:
        x = _arr(shape, 0, scale=2.0)
        _check(lambda x: mps.local_response_norm(x, size, alpha, beta, k),
               lambda x: ref.norm_local_response_norm(x, size, alpha, beta, k), (x,))


def test_local_response_norm_window_past_channels():
    # A window wider than 2C - 1 sums every channel: size 10**9 + 1 costs what size 2C + 1 does and
    # equals it with alpha scaled to the same alpha / size.
    x = _arr((2, 3, 7), 3)
    big, small = 10 ** 9 + 1, 15
    f = lambda x, n, a: mps.local_response_norm(x, n, a, 0.75, 1.0)  # noqa: E731
    _check(lambda x: f(x, big, 0.5), lambda x: f(x, small, 0.5 * small / big), (x,))


def test_local_response_norm_check_grads():
    check_grads(lambda x: mps.local_response_norm(x, 3, 0.5, 0.75, 1.0), (_arr((2, 3, 6), 7),), order=1,
                modes=["rev"], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("special", [1e10, 1e18, np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("size", [3, 5])
def test_local_response_norm_one_special_channel(special, size):
    # A huge, inf or NaN channel reaches only the channels whose window holds it, forward and
    # backward (a running window sum carried it into every later channel: inf - inf, or the
    # huge square's cancellation). jnp's reference gives NaN exactly where we must.
    c, j = 16, 5
    x = _arr((2, 3, c), 0).at[..., j].set(special)
    w = _arr((2, 3, c), 1)
    f = lambda x: mps.local_response_norm(x, size, 0.5, 0.75, 1.0)  # noqa: E731
    r = lambda x: ref.norm_local_response_norm(x, size, 0.5, 0.75, 1.0)  # noqa: E731
    vjp = lambda fn, x: jax.grad(lambda x: jnp.sum(fn(x) * w.astype(x.dtype)))(x)  # noqa: E731
    y, g = jax.jit(f)(x), jax.jit(lambda x: vjp(f, x))(x)
    assert_close(y, jax.jit(r)(x), **TOL)
    assert_close(g, jax.jit(lambda x: vjp(r, x))(x), **TOL)
    far = np.abs(np.arange(c) - j) > size // 2
    far_g = np.abs(np.arange(c) - j) > 2 * (size // 2)  # dx_j reads the windows of j's window
    assert np.all(np.isfinite(np.asarray(y)[..., far])) and np.all(np.isfinite(np.asarray(g)[..., far_g]))
    if np.isfinite(special):
        # Relative accuracy down to the tiny values around the huge channel, against the
        # reference in float64 (float32's own gradient there underflows to denormals).
        with jax.enable_x64(True):
            x64, w64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (x, w))
            r64 = lambda x: ref.norm_local_response_norm(x, size, 0.5, 0.75, 1.0)  # noqa: E731
            y64 = np.asarray(r64(x64))
            g64 = np.asarray(jax.grad(lambda x: jnp.sum(r64(x) * w64))(x64))
        assert_close(y, y64, rtol=1e-5, atol=0)
        assert_close(g, g64, rtol=2e-4, atol=1e-7 * np.abs(g64[..., far_g]).max())


# ---- transformations, dtypes ----

def test_jit_value_and_grad():
    x = _arr((4, 3, 6), 0)
    s, b = _params(6)

    def loss(fn):
        return lambda x, s, b: jnp.sum(fn(x, s, b)[0] ** 2) + jnp.sum(fn(x, s, b)[2])

    v1, g1 = jax.jit(jax.value_and_grad(loss(mps.batch_norm), argnums=(0, 1, 2)))(x, s, b)
    v2, g2 = jax.value_and_grad(loss(ref.norm_batch_norm), argnums=(0, 1, 2))(x, s, b)
    assert_close(v1, v2, **TOL)
    for a, c in zip(g1, g2):
        assert_close(a, c, **TOL)


def test_vmap_batch_norm_per_element():
    # Statistics per vmapped element (no folding into the batch), batched and unbatched params.
    x = _arr((3, 4, 5, 6), 0)
    s, b = _params(6)
    sb = jnp.stack([s, 2 * s, -s])
    for in_axes, args in [((0, None, None), (x, s, b)), ((0, 0, None), (x, sb, b))]:
        got = jax.vmap(mps.batch_norm, in_axes=in_axes)(*args)
        want = jax.vmap(ref.norm_batch_norm, in_axes=in_axes)(*args)
        for a, c in zip(got, want):
            assert_close(a, c, **TOL)
    f = lambda fn: jax.grad(lambda x: jnp.sum(jax.vmap(fn, (0, None, None))(x, s, b)[0] ** 3))(x)  # noqa: E731
    assert_close(f(mps.batch_norm), f(ref.norm_batch_norm), **TOL)


def test_vmap_folded_ops():
    x = _arr((3, 2, 5, 6), 1)
    s, b = _params(6)
    m, v = _stats(6)
    sb = jnp.stack([s, 2 * s, -s])
    cases = [
        (lambda x, s: mps.instance_norm(x, s, b), lambda x, s: ref.norm_instance_norm(x, s, b), (0, None), (x, s)),
        (lambda x, s: mps.instance_norm(x, s, b), lambda x, s: ref.norm_instance_norm(x, s, b), (0, 0), (x, sb)),
        (lambda x, s: mps.batch_norm_inference(x, s, b, m, v), lambda x, s: ref.norm_batch_norm_inference(x, s, b, m, v),
         (0, None), (x, s)),
        (lambda x, s: mps.local_response_norm(x * s, 3, 0.5), lambda x, s: ref.norm_local_response_norm(x * s, 3, 0.5),
         (0, None), (x, s)),
        (lambda x, s: mps.local_response_norm(x[0, 0] * s, 3, 0.5),
         lambda x, s: ref.norm_local_response_norm(x[0, 0] * s, 3, 0.5), (0, None), (x, s)),
    ]
    for fn, rf, axes, args in cases:
        got = jax.vmap(fn, axes)(*args)
        assert_close(got, jax.vmap(rf, axes)(*args), **TOL)
        gf = lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(jax.vmap(f, axes)(*a))), argnums=(0, 1))(*args)  # noqa
        for a, c in zip(gf(fn), gf(rf)):
            assert_close(a, c, **TOL)


@pytest.mark.parametrize("dt", [jnp.float16, jnp.bfloat16])
def test_low_precision(dt):
    x = _arr((4, 3, 8), 0)
    s, b = _params(8)
    m, v = _stats(8)
    y, mean, var = mps.batch_norm(x.astype(dt), s, b)
    assert y.dtype == mean.dtype == var.dtype == dt
    tol = dict(rtol=5e-2, atol=5e-2)
    assert_close(y.astype(jnp.float32), ref.norm_batch_norm(x, s, b)[0], **tol)
    assert mps.batch_norm_inference(x.astype(dt), s, b, m, v).dtype == dt
    assert mps.instance_norm(x.astype(dt), s.astype(dt), b).dtype == dt
    assert_close(mps.local_response_norm(x.astype(dt), 3, 0.5).astype(jnp.float32),
                 ref.norm_local_response_norm(x, 3, 0.5), **tol)
    g = jax.grad(lambda x: jnp.sum(mps.batch_norm(x, s, b)[0] ** 2))(x.astype(dt))
    assert g.dtype == dt


# ---- bad input ----

def test_bad_input():
    x = jnp.ones((4, 3))
    s = b = jnp.ones((3,))
    with pytest.raises(ValueError, match="rank >= 2"):
        mps.batch_norm(jnp.ones((3,)), s, b)
    with pytest.raises(ValueError, match=r"`scale` must have shape \(3,\)"):
        mps.batch_norm(x, jnp.ones((4,)), b)
    with pytest.raises(ValueError, match=r"`bias` must have shape \(3,\)"):
        mps.batch_norm(x, s, jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="epsilon"):
        mps.batch_norm(x, s, b, epsilon=-1e-5)
    with pytest.raises(ValueError, match="epsilon"):
        mps.batch_norm(x, s, b, epsilon=float("nan"))
    with pytest.raises(ValueError, match="unknown activation"):
        mps.batch_norm(x, s, b, activation="swish")
    with pytest.raises(ValueError, match="at least one element"):
        mps.batch_norm(jnp.ones((0, 3)), s, b)
    with pytest.raises(TypeError, match="float32"):
        mps.batch_norm(x.astype(jnp.int32), s, b)
    with pytest.raises(TypeError, match="scale"):
        mps.batch_norm(x, jnp.ones((3,), jnp.int32), b)
    with pytest.raises(ValueError, match=r"`var` must have shape \(3,\)"):
        mps.batch_norm_inference(x, s, b, s, jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"`mean` must have shape \(3,\)"):
        mps.batch_norm_inference(x, s, b, jnp.ones(()), s)
    with pytest.raises(ValueError, match="epsilon"):
        mps.batch_norm_inference(x, s, b, s, s, epsilon=-1.0)
    with pytest.raises(ValueError, match="rank >= 3"):
        mps.instance_norm(x, s, b)
    with pytest.raises(ValueError, match="scale"):
        mps.instance_norm(jnp.ones((2, 4, 3)), jnp.ones((4,)), b)
    with pytest.raises(ValueError, match="epsilon"):
        mps.instance_norm(jnp.ones((2, 4, 3)), s, b, epsilon="big")
    for size in (4, 0, -1, 2.0, True):
        with pytest.raises(ValueError, match="size"):
            mps.local_response_norm(x, size=size)
    with pytest.raises(ValueError, match="alpha"):
        mps.local_response_norm(x, alpha=-1.0)
    with pytest.raises(ValueError, match="k"):
        mps.local_response_norm(x, k=0.0)
    with pytest.raises(ValueError, match="beta"):
        mps.local_response_norm(x, beta=float("inf"))
    with pytest.raises(ValueError, match="rank >= 1"):
        mps.local_response_norm(jnp.float32(1.0))
    # Concrete 0-d arrays are numbers too (np.float32, jnp.array); a traced one cannot be compiled in.
    want = mps.batch_norm(x, s, b, epsilon=1e-3)[0]
    for eps in (np.float32(1e-3), np.array(1e-3), jnp.array(1e-3)):
        assert_close(mps.batch_norm(x, s, b, epsilon=eps)[0], want)
    assert_close(mps.local_response_norm(x, alpha=jnp.array(1e-4), beta=np.array(0.75), k=jnp.float32(1)),
                 mps.local_response_norm(x))
    with pytest.raises(TypeError, match="epsilon.*static"):
        jax.jit(lambda e: mps.batch_norm(x, s, b, epsilon=e)[0])(1e-3)
    with pytest.raises(ValueError, match="epsilon"):
        mps.batch_norm(x, s, b, epsilon=jnp.ones(2))


def test_cpp_validates():
    # The runtime re-checks what Python already checked: inconsistent shapes/attributes give an error.
    x = jnp.ones((4, 3))
    c = jax.ShapeDtypeStruct((3,), jnp.float32)
    y = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    bn = dict(epsilon=np.float32(1e-5), act=np.int64(0), alpha=np.float32(0))
    with pytest.raises(Exception, match="scale must have shape"):
        jax.ffi.ffi_call("jax_mps_batch_norm_fwd", (y, c, c, c))(x, jnp.ones((5,)), jnp.ones((3,)), **bn)
    with pytest.raises(Exception, match="epsilon"):
        jax.ffi.ffi_call("jax_mps_batch_norm_fwd", (y, c, c, c))(x, jnp.ones((3,)), jnp.ones((3,)),
                                                               **{**bn, "epsilon": np.float32(-1)})
    with pytest.raises(Exception, match="unknown activation code"):
        jax.ffi.ffi_call("jax_mps_batch_norm_fwd", (y, c, c, c))(x, jnp.ones((3,)), jnp.ones((3,)),
                                                               **{**bn, "act": np.int64(42)})
    with pytest.raises(Exception, match="result"):
        jax.ffi.ffi_call("jax_mps_batch_norm_fwd", (y, c, jax.ShapeDtypeStruct((99,), jnp.float32), c))(
            x, jnp.ones((3,)), jnp.ones((3,)), **bn)
    with pytest.raises(Exception, match="from its output"):
        v3 = jnp.ones((3,))
        jax.ffi.ffi_call("jax_mps_batch_norm_bwd", (y, c, c))(
            x, v3, v3, v3, v3, x, x, v3, v3, act=np.int64(10), alpha=np.float32(0), from_output=np.int64(1))
    with pytest.raises(Exception, match="rank >= 3"):
        jax.ffi.ffi_call("jax_mps_instance_norm_fwd", (y, y, y))(x, jnp.ones((3,)), jnp.ones((3,)),
                                                                epsilon=np.float32(1e-5))
    with pytest.raises(Exception, match="size must be a positive odd"):
        jax.ffi.ffi_call("jax_mps_local_response_norm_fwd", y)(x, size=np.int64(4), alpha=np.float32(1e-4),
                                                               beta=np.float32(0.75), k=np.float32(1))
    with pytest.raises(Exception, match="dy must have shape"):
        jax.ffi.ffi_call("jax_mps_local_response_norm_bwd", y)(x, jnp.ones((2, 3)), size=np.int64(3),
                                                               alpha=np.float32(1e-4), beta=np.float32(0.75),
                                                               k=np.float32(1))


# ---- half precision: float32 statistics and pre-activation in the backward ----

def test_half_activation_derivative_from_float32_preactivation():
    # z = 6 - 2^-11 < 6, but its float16 output is exactly 6: relu6's derivative must come from z.
    x = jnp.full((1, 1), 6.0, jnp.float16)
    one, zero = jnp.ones(1, jnp.float16), jnp.zeros(1, jnp.float16)
    mean = jnp.full((1,), 2.0 ** -11, jnp.float16)
    f = lambda x: mps.batch_norm_inference(x, one, zero, mean, one, epsilon=0.0, activation="relu6")  # noqa
    assert float(f(x)[0, 0]) == 6.0
    assert float(jax.grad(lambda x: f(x).astype(jnp.float32).sum())(x)[0, 0]) == 1.0


@pytest.mark.parametrize("dt", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_half_activation_near_kink(dt, train):
    # z spread within a few output ulps of relu6's kink at 6: which side each z is on decides the
    # gradient, and the output rounding would move many of them onto the kink.
    x = _arr((64, 8), 3).astype(dt)
    s, b = jnp.full((8,), 0.01), jnp.full((8,), 6.0)
    m, v = _stats(8)
    if train:
        f = lambda x, s, b: mps.batch_norm(x, s, b, activation="relu6")[0]  # noqa: E731
        r = lambda x, s, b: ref.norm_batch_norm(x, s, b, activation="relu6")[0]  # noqa: E731
    else:
        f = lambda x, s, b: mps.batch_norm_inference(x, s, b, m, v, activation="relu6")  # noqa: E731
        r = lambda x, s, b: ref.norm_batch_norm_inference(x, s, b, m, v, activation="relu6")  # noqa: E731
    w = _arr((64, 8), 4).astype(dt).astype(jnp.float32)  # the same cotangent on both sides
    gx, gs, gb = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * w), argnums=(0, 1, 2))(x, s, b)
    rx, rs, rb = jax.grad(lambda *a: jnp.sum(r(*a) * w), argnums=(0, 1, 2))(x.astype(jnp.float32), s, b)
    assert gs.dtype == gb.dtype == jnp.float32  # float32 parameters stay float32 with half x
    assert_close(gb, rb, rtol=1e-5, atol=1e-5)
    assert_close(gs, rs, rtol=1e-3, atol=1e-3 * float(jnp.abs(rs).max()))
    assert_close(gx.astype(jnp.float32), rx, rtol=2e-2, atol=1e-2 * float(jnp.abs(rx).max()))


@pytest.mark.parametrize("which", ["batch_norm", "instance_norm"])
def test_half_backward_statistics_float32(which):
    # bfloat16 x around 100 +- 2: the backward's mean and rstd rounded to bfloat16 (ulp 0.5 at 100)
    # shifted dx by several % of its size; in float32 only dx's own rounding remains (~0.4%).
    x = _arr((8, 16, 12), 5, loc=100.0, scale=2.0).astype(jnp.bfloat16)
    s, b = _params(12)
    # A cotangent with a mean (as sum(y) has): the mean's error enters dx through sum(dz).
    w = (1.0 + _arr(x.shape, 6)).astype(jnp.bfloat16).astype(jnp.float32)
    if which == "batch_norm":
        f, r = (lambda x: mps.batch_norm(x, s, b)[0]), (lambda x: ref.norm_batch_norm(x, s, b)[0])
    else:
        f, r = (lambda x: mps.instance_norm(x, s, b)), (lambda x: ref.norm_instance_norm(x, s, b))
    g = jax.grad(lambda x: jnp.sum(f(x).astype(jnp.float32) * w))(x)
    want = jax.grad(lambda x: jnp.sum(r(x) * w))(x.astype(jnp.float32))
    assert g.dtype == jnp.bfloat16
    assert_close(g.astype(jnp.float32), want, rtol=0, atol=1e-2 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("dt", [jnp.float16, jnp.bfloat16])
def test_half_x_float32_params(dt):
    # float32 scale / bias / mean / var with half x are used unrounded and get float32 gradients
    # (not half ones widened); a parameter of the other half type is widened; outputs are x's dtype.
    x = _arr((6, 5, 7), 7, loc=0.5).astype(dt)
    xf = x.astype(jnp.float32)
    s, b = _params(7)
    m, v = _stats(7)
    w = _arr(x.shape, 8).astype(dt).astype(jnp.float32)  # the same cotangent on both sides
    y, mean, var = mps.batch_norm(x, s, b)
    assert y.dtype == mean.dtype == var.dtype == dt
    assert_close(y.astype(jnp.float32), ref.norm_batch_norm(xf, s, b)[0], rtol=1e-2, atol=1e-2)
    other = jnp.bfloat16 if dt == jnp.float16 else jnp.float16
    cases = [(lambda *a: mps.batch_norm(*a)[0], lambda *a: ref.norm_batch_norm(*a)[0], (x, s, b)),
             (mps.batch_norm_inference, ref.norm_batch_norm_inference, (x, s, b.astype(other), m, v)),
             (mps.instance_norm, ref.norm_instance_norm, (x, s, b.astype(dt)))]
    for fn, rf, args in cases:
        out = fn(*args)
        assert out.dtype == dt
        assert_close(out.astype(jnp.float32), rf(xf, *args[1:]), rtol=1e-2, atol=1e-2)
        grads = jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * w), argnums=range(1, len(args)))(*args)
        want = jax.grad(lambda *a: jnp.sum(rf(xf, *a) * w), argnums=range(len(args) - 1))(
            *(a.astype(jnp.float32) for a in args[1:]))
        for gp, wp, a in zip(grads, want, args[1:]):
            assert gp.dtype == a.dtype
            tol = 1e-4 if a.dtype == jnp.float32 else 1e-2  # float32 gradients are not rounded to half
            assert_close(gp.astype(jnp.float32), wp, rtol=tol, atol=tol * float(jnp.abs(wp).max()))
