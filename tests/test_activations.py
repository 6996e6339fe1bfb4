import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_mps as mps
import reference as ref
from helpers import assert_close, check_fwd_and_grads

NAMES = ["relu", "relu6", "leaky_relu", "elu", "sigmoid", "hard_sigmoid", "tanh", "softplus", "softsign", "gelu"]
SHAPES = [(1,), (7,), (3, 5), (2, 3, 4, 5), (1, 17, 9, 3)]


def _x(shape, seed=0):
    # Keep clear of the kinks (0, 6, +-3) where one-sided derivatives differ.
    x = np.random.default_rng(seed).uniform(-8, 8, shape).astype(np.float32)
    x[np.abs(x) < 0.05] += 0.1
    for k in (3, 6):
        x[np.abs(np.abs(x) - k) < 0.05] += 0.1
    return jnp.asarray(x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_named(name, shape):
    x = _x(shape)
    check_fwd_and_grads(getattr(mps, name), ref.ACTIVATIONS[name], (x,))


@pytest.mark.parametrize("name,params", [("leaky_relu", {"alpha": 0.3}), ("elu", {"alpha": 0.5}),
                                         ("elu", {"alpha": -0.5}), ("gelu", {"approximate": True})])
def test_params(name, params):
    x = _x((4, 6))
    check_fwd_and_grads(lambda x: mps.activation(x, name, **params),
                        lambda x: ref.ACTIVATIONS[name](x, **params), (x,))


@pytest.mark.parametrize("name", NAMES)
def test_check_grads(name):
    check_grads(getattr(mps, name), (_x((3, 4), 1),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 6)])
def test_prelu(shape):
    x = _x(shape)
    alpha = jnp.linspace(-0.5, 0.5, shape[-1])
    check_fwd_and_grads(mps.prelu, ref.prelu, (x, alpha))
    check_grads(mps.prelu, (x, alpha), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_prelu_vmap_rank1():
    # vmap over rows of a rank-1 x keeps the channel axis whole (the mapped axis becomes rows).
    x, alpha = _x((4, 3)), jnp.array([0.1, -0.2, 0.3])
    for f, r in ((mps.prelu, ref.prelu), (lambda x, a: mps.activation(x, "prelu", alpha=a), ref.prelu)):
        assert_close(jax.vmap(lambda v: f(v, alpha))(x), r(x, alpha))
        g = jax.vmap(jax.grad(lambda v, a: f(v, a).sum(), argnums=(0, 1)), in_axes=(0, None))(x, alpha)
        gr = jax.vmap(jax.grad(lambda v, a: r(v, a).sum(), argnums=(0, 1)), in_axes=(0, None))(x, alpha)
        assert_close(g[0], gr[0])
        assert_close(g[1], gr[1])
        assert_close(jax.vmap(lambda v: f(v, alpha), in_axes=1, out_axes=1)(x.T), r(x, alpha).T)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,axis", [((5,), 0), ((3, 7), -1), ((3, 7), 0), ((2, 3, 4), 1), ((1, 1, 9), -1)])
def test_softmax(fn, shape, axis):
    x = _x(shape)
    check_fwd_and_grads(lambda x: getattr(mps, fn)(x, axis=axis), lambda x: getattr(ref, fn)(x, axis=axis), (x,))


def test_softmax_check_grads():
    check_grads(lambda x: mps.log_softmax(x), (_x((3, 4)),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_jit_vmap_low_precision():
    x = _x((3, 4, 5))
    assert_close(jax.jit(jax.vmap(mps.gelu))(x), ref.ACTIVATIONS["gelu"](x))
    assert_close(jax.vmap(lambda v: mps.softmax(v, axis=0))(x), ref.softmax(x, axis=1))
    for dt in (jnp.float16, jnp.bfloat16):
        y = mps.tanh(x.astype(dt))
        assert y.dtype == dt
        assert_close(y.astype(jnp.float32), jnp.tanh(x), rtol=1e-2, atol=1e-2)
    assert mps.relu(jnp.float32(-2.0)).shape == ()


def test_bad_input():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="unknown activation"):
        mps.activation(x, "swishy")
    with pytest.raises(ValueError, match="unknown parameters"):
        mps.activation(x, "relu", alpha=1.0)
    with pytest.raises(TypeError, match="float32"):
        mps.relu(jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        mps.prelu(x, jnp.ones((4,)))
    with pytest.raises(ValueError, match="axis"):
        mps.softmax(x, axis=2)


def test_cpp_validates():
    # The runtime re-checks what Python already checked: inconsistent attributes give an error.
    x = jnp.ones((2, 3))
    with pytest.raises(Exception, match="unknown activation code"):
        jax.ffi.ffi_call("jax_mps_activation_fwd", jax.ShapeDtypeStruct(x.shape, x.dtype))(
            x, act=np.int64(99), alpha=np.float32(0))
    with pytest.raises(Exception, match="axis"):
        jax.ffi.ffi_call("jax_mps_softmax_fwd", jax.ShapeDtypeStruct(x.shape, x.dtype))(
            x, axis=np.int64(5), log=np.int64(0))
    with pytest.raises(Exception, match="alpha"):
        jax.ffi.ffi_call("jax_mps_prelu_fwd", jax.ShapeDtypeStruct(x.shape, x.dtype))(x, jnp.ones((7,)))


def test_relu_negative_zero_and_subnormals_give_zero():
    x = jnp.array([-1e-45, -1e-39, -0.0, 1.5, jnp.nan], jnp.float32)
    for f in (mps.relu, mps.relu6):
        y = np.asarray(f(x))
        np.testing.assert_array_equal(y[:4], [0.0, 0.0, 0.0, 1.5])
        assert not np.signbit(y[:3]).any() and np.isnan(y[4])


@pytest.mark.parametrize("axis", [0, 1])
def test_softmax_long_axis_accuracy(axis):
    # float32 sums over 50k terms: within jax's accuracy of the float64 result (was ~6e-5 relative)
    x = jax.random.normal(jax.random.key(0), (50001, 3) if axis == 0 else (3, 50001), jnp.float32) * 5
    x64 = np.asarray(x, np.float64)
    e = np.exp(x64 - x64.max(axis, keepdims=True))
    ref = e / e.sum(axis, keepdims=True)
    np.testing.assert_allclose(np.asarray(mps.softmax(x, axis=axis)), ref, rtol=5e-6, atol=0)
