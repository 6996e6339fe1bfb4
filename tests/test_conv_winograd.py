"""The CPU's Winograd F(2x2, 3x3) path for 3x3 stride-1 convolutions (csrc/cpu/winograd.cc):
forward, input and weight gradients against lax's convolution over shapes that exercise partial
tiles, padding of every kind and channel counts off the vector width; JAX_MPS_WINOGRAD=1 forces it
onto these small shapes, and one layer of InceptionV3's size takes it by the size rule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_mps as mps
import reference as ref
from helpers import check_fwd_and_grads

pytestmark = pytest.mark.cpu_only

TOL = dict(rtol=2e-4, atol=2e-4)


def _r(shape, seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv("JAX_MPS_WINOGRAD", "1")  # read by the runtime on every call


# (x shape, output channels, padding, bias, activation): odd and even sizes (partial tiles),
# asymmetric and oversized padding, 1 channel up to more than one vector of them.
CASES = [
    ((2, 7, 9, 16), 24, "SAME", True, "relu"),
    ((3, 8, 8, 32), 16, "VALID", False, None),
    ((1, 5, 6, 17), 19, ((2, 0), (1, 2)), True, "relu"),
    ((2, 13, 11, 48), 64, "SAME", True, "gelu"),
    ((1, 4, 4, 16), 16, "VALID", True, "tanh"),
    ((1, 3, 3, 5), 3, ((3, 3), (3, 4)), True, "relu6"),        # padding beyond the kernel
    ((2, 6, 5, 1), 2, "SAME", False, ("leaky_relu", {"alpha": 0.1})),
    ((1, 1, 1, 8), 8, "SAME", True, "elu"),                     # a single pixel
    ((2, 9, 4, 33), 20, ((1, 0), (0, 1)), True, "sigmoid"),
]


@pytest.mark.parametrize("xs,co,padding,bias,act", CASES)
def test_matches_lax(forced, xs, co, padding, bias, act):
    x, w = _r(xs), _r((3, 3, xs[-1], co), 1, 1 / np.sqrt(9 * xs[-1]))
    args = (x, w, _r((co,), 2)) if bias else (x, w)
    kw = dict(padding=padding, activation=act)
    check_fwd_and_grads(lambda *a: mps.conv2d(*a, **kw), lambda *a: ref.conv_conv2d(*a, **kw), args, **TOL)


def test_bfloat16(forced):
    x, w = _r((2, 6, 6, 16)).astype(jnp.bfloat16), _r((3, 3, 16, 16), 1, 0.1).astype(jnp.bfloat16)
    y = mps.conv2d(x, w, activation="relu")
    r = ref.conv_conv2d(x.astype(jnp.float32), w.astype(jnp.float32), activation="relu")
    np.testing.assert_allclose(np.asarray(y, np.float32), r, rtol=2e-2, atol=2e-2)


def test_check_grads(forced):
    x, w, b = _r((1, 5, 4, 3)), _r((3, 3, 3, 2), 1, 0.3), _r((2,), 2)
    check_grads(lambda x, w, b: mps.conv2d(x, w, b, activation="tanh"), (x, w, b), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)


def test_inception_size_takes_it_by_default(monkeypatch):
    """B8 35x35x64 -> 96 (an InceptionV3 layer) is over the size rule: the same numbers as lax with
    the rule on and with Winograd off."""
    monkeypatch.delenv("JAX_MPS_WINOGRAD", raising=False)
    x, w, b = _r((8, 35, 35, 64)), _r((3, 3, 64, 96), 1, 1 / 24), _r((96,), 2)
    kw = dict(padding="SAME", activation="relu")
    # dw sums 9800 products (values ~100): atol at float32 rounding of that scale
    check_fwd_and_grads(lambda *a: mps.conv2d(*a, **kw), lambda *a: ref.conv_conv2d(*a, **kw), (x, w, b),
                        rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "w"])
def test_non_finite_as_lax(forced, value, where):
    """A tile's sums would spread one Inf or NaN over the tile (Inf - Inf); such results are
    recomputed directly, so NaN and Inf land exactly where lax puts them, in every pass."""
    x, w = _r((1, 6, 7, 16)), _r((3, 3, 16, 16), 1, 0.1)
    if where == "x":
        x = x.at[0, 2, 3, 1].set(value)
    else:
        w = w.at[1, 1, 1, 2].set(value)
    ct = _r((1, 6, 7, 16), 3)

    def run(f):
        y, vjp = jax.vjp(lambda x, w: f(x, w, padding="SAME"), x, w)
        return (y, *vjp(ct))

    for got, want in zip(run(mps.conv2d), run(ref.conv_conv2d)):
        got, want = np.asarray(got), np.asarray(want)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], **TOL)


def test_nonfinite_ct(forced):
    x, w = _r((1, 5, 5, 16)), _r((3, 3, 16, 8), 1, 0.1)
    ct = jnp.zeros((1, 5, 5, 8)).at[0, 2, 2, 0].set(jnp.inf)
    got = jax.vjp(lambda x, w: mps.conv2d(x, w), x, w)[1](ct)
    want = jax.vjp(lambda x, w: ref.conv_conv2d(x, w), x, w)[1](ct)
    for g, r in zip(got, want):
        np.testing.assert_array_equal(np.isnan(np.asarray(g)), np.isnan(np.asarray(r)))
        np.testing.assert_array_equal(np.isinf(np.asarray(g)), np.isinf(np.asarray(r)))
