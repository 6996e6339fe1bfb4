import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mps as mps
import reference as ref
from helpers import assert_close


def _x(shape, seed=0):
    # Non-zero everywhere, so y != 0 exactly where an element is kept.
    x = np.random.default_rng(seed).uniform(0.5, 2.0, shape) * np.random.default_rng(seed + 1).choice([-1, 1], shape)
    return jnp.asarray(x.astype(np.float32))


def _keys():
    return [jax.random.key(0), jax.random.PRNGKey(7), jax.random.key(3, impl="rbg")]


@pytest.mark.parametrize("shape", [(), (1,), (7,), (8,), (3, 5), (2, 3, 4, 5), (1, 33)])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.77])
@pytest.mark.parametrize("k", range(3))
def test_exact_mask_and_grad(shape, rate, k):
    key = _keys()[k]
    x = _x(shape, k)
    kd = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    keep = ref.dropout_keep_mask(kd, x.size, rate).reshape(shape)
    y, vjp = jax.vjp(lambda v: mps.dropout(key, v, rate), x)
    assert_close(y, np.where(keep, np.asarray(x) / (1 - rate), 0.0), rtol=1e-6, atol=0)
    g = _x(shape, 9)
    (dx,) = vjp(g)
    assert_close(dx, np.where(keep, np.asarray(g) / (1 - rate), 0.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", [4096 + 3, 70_001])  # several 512-element chunks and a tail; threads past 32k
def test_grad_many_chunks_nan(n):
    # The backward applies the mask per byte: a dropped element's gradient is 0 even where g is NaN.
    key, rate = jax.random.key(11), 0.4
    keep = ref.dropout_keep_mask(jax.random.key_data(key), n, rate)
    g = np.asarray(_x((n,), 5)).copy()
    g[::7] = np.nan
    _, vjp = jax.vjp(lambda v: mps.dropout(key, v, rate), _x((n,), 4))
    (dx,) = vjp(jnp.asarray(g))
    assert_close(dx, np.where(keep, g / (1 - rate), 0.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_fraction(rate):
    n = 200_000
    y = mps.dropout(jax.random.key(1), jnp.ones((n,)), rate)
    frac = float(jnp.mean(y != 0))
    assert abs(frac - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    # Kept values carry the inverse scale, so the mean is preserved.
    assert abs(float(jnp.mean(y)) - 1.0) < 5 * np.sqrt(rate / (1 - rate) / n)


def test_keys_determine_mask():
    x = jnp.ones((4, 64))
    a = mps.dropout(jax.random.key(5), x, 0.5)
    assert_close(a, mps.dropout(jax.random.key(5), x, 0.5), rtol=0, atol=0)
    assert_close(a, jax.jit(mps.dropout, static_argnums=2)(jax.random.key(5), x, 0.5), rtol=0, atol=0)
    assert_close(a, mps.dropout(jax.random.key_data(jax.random.key(5)), x, 0.5), rtol=0, atol=0)  # raw uint32[2]
    b = mps.dropout(jax.random.key(6), x, 0.5)
    assert bool(jnp.any((a != 0) != (b != 0)))
    # Different positions draw different bits (no repeated rows).
    assert bool(jnp.any((a[0] != 0) != (a[1] != 0)))


def test_grad_uses_forward_mask():
    key = jax.random.key(2)
    x = _x((5, 6))

    def f(v):
        y = mps.dropout(key, v, 0.3)
        return jnp.sum(y * y), y

    (_, y), g = jax.value_and_grad(f, has_aux=True)(x)
    assert_close(g, 2 * y / 0.7, rtol=1e-5, atol=1e-6)
    g2 = jax.jit(jax.grad(lambda v: jnp.sum(mps.dropout(key, v, 0.3))))(x)
    assert_close(g2, (y != 0) / 0.7, rtol=1e-6, atol=0)


def test_vmap():
    x = _x((3, 4, 5))
    key = jax.random.key(4)
    # Unbatched key: every slice gets the mask of a single call (as vmap's definition requires).
    y = jax.jit(jax.vmap(lambda v: mps.dropout(key, v, 0.5)))(x)
    for i in range(3):
        assert_close(y[i], mps.dropout(key, x[i], 0.5), rtol=0, atol=0)
    # Batched keys: one independent mask per key.
    keys = jax.random.split(key, 3)
    y = jax.vmap(lambda k, v: mps.dropout(k, v, 0.5))(keys, x)
    for i in range(3):
        assert_close(y[i], mps.dropout(keys[i], x[i], 0.5), rtol=0, atol=0)
    g = jax.vmap(jax.grad(lambda k, v: jnp.sum(mps.dropout(k, v, 0.5)), argnums=1))(keys, x)
    assert_close(g, (y != 0) * 2.0, rtol=0, atol=0)


def test_identity_zero_and_low_precision():
    x = _x((3, 7))
    key = jax.random.key(0)
    assert mps.dropout(key, x, 0.5, deterministic=True) is x
    assert mps.dropout(key, x, 0.0) is x
    assert not jnp.any(mps.dropout(key, x, 1.0))
    assert not jnp.any(jax.grad(lambda v: jnp.sum(mps.dropout(key, v, 1.0)))(x))
    for dt in (jnp.float16, jnp.bfloat16):
        y = mps.dropout(key, x.astype(dt), 0.25)
        assert y.dtype == dt
        assert_close(y.astype(jnp.float32), mps.dropout(key, x, 0.25), rtol=1e-2, atol=1e-2)


def test_bad_input():
    key = jax.random.key(0)
    x = jnp.ones((2, 3))
    for rate in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="rate"):
            mps.dropout(key, x, rate)
    with pytest.raises(ValueError, match="rate"):
        jax.jit(lambda r: mps.dropout(key, x, r))(0.5)
    with pytest.raises(TypeError, match="rate"):
        mps.dropout(key, x, "0.5")
    with pytest.raises(TypeError, match="float32"):
        mps.dropout(key, jnp.ones((2, 3), jnp.int32), 0.5)
    with pytest.raises(TypeError, match="key"):
        mps.dropout(jnp.zeros((2,), jnp.int32), x, 0.5)
    with pytest.raises(ValueError, match="key"):
        mps.dropout(jnp.zeros((3,), jnp.uint32), x, 0.5)
    with pytest.raises(ValueError, match="single PRNG key"):
        mps.dropout(jax.random.split(key, 2), x, 0.5)


def test_cpp_validates():
    x = jnp.ones((2, 9))
    kd = jnp.zeros((2,), jnp.uint32)
    specs = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((3,), jnp.uint8))
    call = jax.ffi.ffi_call("jax_mps_dropout_fwd", specs)
    with pytest.raises(Exception, match="threshold"):
        call(kd, x, threshold=np.int64(0), scale=np.float32(2))
    with pytest.raises(Exception, match="key data"):
        call(jnp.zeros((3,), jnp.uint32), x, threshold=np.int64(2**31), scale=np.float32(2))
    with pytest.raises(Exception, match="mask must have 3 bytes"):
        jax.ffi.ffi_call("jax_mps_dropout_fwd", (specs[0], jax.ShapeDtypeStruct((2,), jnp.uint8)))(
            kd, x, threshold=np.int64(2**31), scale=np.float32(2))
    with pytest.raises(Exception, match="mask must have"):
        jax.ffi.ffi_call("jax_mps_dropout_bwd", specs[0])(jnp.zeros((1,), jnp.uint8), x, scale=np.float32(2))
