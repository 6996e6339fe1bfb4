import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_mps as mps
import reference as ref
from helpers import assert_close, check_fwd_and_grads


def _x(shape, seed=0):
    # Distinct values: max-pool gradients are then unambiguous (no ties).
    n = int(np.prod(shape))
    v = np.random.default_rng(seed).permutation(n).astype(np.float32)
    return jnp.asarray((v / n - 0.5).reshape(shape) * 4)


SHAPES_2D = [(1, 5, 7, 3), (3, 4, 9, 17), (2, 6, 6, 8)]
# (window, stride, padding): overlapping, stride > window, SAME with stride, explicit, int, rectangular.
GEOMS_2D = [
    (2, None, "VALID"), (3, 1, "VALID"), (3, 2, "SAME"), (2, 3, "VALID"), (2, 1, "SAME"),
    ((2, 3), (1, 2), "SAME"), (3, 2, 1), (3, (2, 1), ((0, 2), (1, 1))), ((1, 2), None, "VALID"), (4, 4, "SAME"),
]
# Each geometry on one shape (cycling batch 1 / odd non-square / C not a multiple of 8): keeps CI short.
CASES_2D = [(SHAPES_2D[i % 3],) + g for i, g in enumerate(GEOMS_2D)]


@pytest.mark.parametrize("shape,window,stride,padding", CASES_2D)
def test_max_pool2d(shape, window, stride, padding):
    check_fwd_and_grads(lambda x: mps.max_pool2d(x, window, stride, padding),
                        lambda x: ref.pool_max(x, window, stride, padding), (_x(shape),))


@pytest.mark.parametrize("shape,window,stride,padding", [(SHAPES_2D[(i + 1) % 3],) + g for i, g in enumerate(GEOMS_2D)])
def test_avg_pool2d(shape, window, stride, padding):
    check_fwd_and_grads(lambda x: mps.avg_pool2d(x, window, stride, padding),
                        lambda x: ref.pool_avg(x, window, stride, padding), (_x(shape),))


# count_include_pad only matters where windows reach into the padding.
@pytest.mark.parametrize("window,stride,padding", [g for g in GEOMS_2D if g[2] != "VALID"])
def test_avg_pool2d_include_pad(window, stride, padding):
    cip = True
    shape = (2, 6, 5, 8)
    check_fwd_and_grads(lambda x: mps.avg_pool2d(x, window, stride, padding, cip),
                        lambda x: ref.pool_avg(x, window, stride, padding, cip), (_x(shape),))


GEOMS_1D = [(2, None, "VALID"), (3, 1, "SAME"), (3, 2, 1), (2, 3, "VALID"), (4, 2, ((3, 0),)), (5, 1, "SAME")]


@pytest.mark.parametrize("shape,window,stride,padding",
                         [((1, 9, 3) if i % 2 else (3, 7, 16),) + g for i, g in enumerate(GEOMS_1D)])
def test_pool1d(shape, window, stride, padding):
    x = _x(shape)
    check_fwd_and_grads(lambda x: mps.max_pool1d(x, window, stride, padding),
                        lambda x: ref.pool_max(x, window, stride, padding), (x,))
    for cip in (False, True):
        check_fwd_and_grads(lambda x: mps.avg_pool1d(x, window, stride, padding, count_include_pad=cip),
                            lambda x: ref.pool_avg(x, window, stride, padding, cip), (x,))


@pytest.mark.parametrize("shape", [(1, 5, 7, 6), (4, 4, 4, 4)])
def test_window_equals_input(shape):
    x = _x(shape)
    w = shape[1:3]
    check_fwd_and_grads(lambda x: mps.max_pool2d(x, w), lambda x: ref.pool_max(x, w), (x,))
    check_fwd_and_grads(lambda x: mps.avg_pool2d(x, w), lambda x: ref.pool_avg(x, w), (x,))
    assert_close(mps.avg_pool2d(x, w)[:, 0, 0], ref.pool_global_avg(x))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 3, 7), (3, 4, 4, 16)])
def test_global_avg_pool2d(shape):
    check_fwd_and_grads(mps.global_avg_pool2d, ref.pool_global_avg, (_x(shape),))


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale,shape", [(1, (2, 3, 5, 17)), (2, (1, 1, 1, 2)), (3, (2, 3, 5, 17)),
                                         ((2, 3), (2, 3, 5, 17)), ((1, 4), (1, 4, 2, 6))])
def test_upsample2d(method, scale, shape):
    check_fwd_and_grads(lambda x: mps.upsample2d(x, scale, method),
                        lambda x: ref.resample_upsample2d(x, scale, method), (_x(shape),))


def test_bilinear_matches_torch_values():
    # torch.nn.functional.interpolate(arange(4).view(1,1,2,2), scale_factor=2, mode="bilinear")
    x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    want = np.array([[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5],
                     [1.5, 1.75, 2.25, 2.5], [2.0, 2.25, 2.75, 3.0]])
    assert_close(mps.upsample2d(x, 2, "bilinear")[0, :, :, 0], want)
    assert_close(mps.upsample2d(x, 2)[0, :, :, 0], np.repeat(np.repeat(np.arange(4.0).reshape(2, 2), 2, 0), 2, 1))


nan, inf = np.nan, np.inf


# torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False) on the CPU, forward and
# the gradient of a cotangent of ones with inf at [1, 1]: an inf reaches only the outputs that read
# it (zero-weight taps included: 0 * inf is NaN), and at scale 1 it stays where it is.
@pytest.mark.parametrize("scale,want_y,want_dx", [
    ((1, 1), [[1, 2, 3], [4, nan, 6], [7, 8, 9]], [[1, 1, 1], [1, nan, 1], [1, 1, 1]]),
    ((1, 2), [[1, 1.25, 1.75, 2.25, 2.75, 3], [nan, nan, nan, nan, nan, 6], [7, 7.25, 7.75, 8.25, 8.75, 9]],
     [[2, 2, 2], [nan, nan, 2], [2, 2, 2]]),
    ((2, 1), [[1, nan, 3], [1.75, nan, 3.75], [3.25, nan, 5.25], [4.75, nan, 6.75], [6.25, nan, 8.25], [7, 8, 9]],
     [[2, nan, 2], [2, nan, 2], [2, 2, 2]]),
])
def test_bilinear_non_finite_as_torch(scale, want_y, want_dx):
    x = jnp.array([[1.0, 2, 3], [4, inf, 6], [7, 8, 9]]).reshape(1, 3, 3, 1)
    y, vjp = jax.vjp(lambda x: mps.upsample2d(x, scale, "bilinear"), x)
    np.testing.assert_allclose(np.asarray(y[0, :, :, 0]), want_y)
    g = np.ones(y.shape, np.float32)
    g[0, 1, 1, 0] = inf
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0][0, :, :, 0]), want_dx)
    # Scale 3's second tap weighs 1.5e-8 (torch's fma-rounded source index), not 0: inf, not NaN.
    x = jnp.array([inf, inf, 0.25, nan]).reshape(1, 1, 4, 1)
    want = [[nan] * 12, [nan] + [inf] * 6 + [nan] * 5]
    np.testing.assert_allclose(np.asarray(mps.upsample2d(x, (2, 3), "bilinear")[0, :, :, 0]), want)


def test_check_grads():
    x = _x((2, 5, 6, 3))
    opts = dict(order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    check_grads(lambda x: mps.max_pool2d(x, 3, 2, "SAME"), (x,), **opts)
    check_grads(lambda x: mps.avg_pool2d(x, 3, 2, "SAME", count_include_pad=True), (x,), **opts)
    check_grads(lambda x: mps.avg_pool2d(x, 2, 1, 1), (x,), **opts)
    check_grads(lambda x: mps.max_pool1d(x[:, 0], 2, 1), (x,), **opts)
    check_grads(lambda x: mps.avg_pool1d(x[:, 0], 3, 2, "SAME"), (x,), **opts)
    check_grads(mps.global_avg_pool2d, (x,), **opts)
    check_grads(lambda x: mps.upsample2d(x, 2, "bilinear"), (x,), **opts)
    check_grads(lambda x: mps.upsample2d(x, (3, 2)), (x,), **opts)


def test_max_ties_and_special_values():
    # Ties route the whole gradient to the first maximum in window order (torch/oneDNN).
    x = jnp.ones((1, 2, 2, 1))
    g = jax.grad(lambda x: mps.max_pool2d(x, 2).sum())(x)
    assert_close(g[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    # -inf inputs: the output is -inf and the gradient still lands on a real element.
    x = jnp.full((1, 2, 2, 1), -jnp.inf)
    assert float(mps.max_pool2d(x, 2, padding="SAME")[0, 0, 0, 0]) == -np.inf
    g = jax.grad(lambda x: mps.max_pool2d(x, 2).sum())(x)
    assert_close(g[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    # NaN propagates, and the gradient goes to the last NaN of the window (torch's argmax).
    x = jnp.array([1.0, jnp.nan, 3.0, 0.0]).reshape(1, 2, 2, 1)
    assert np.isnan(float(mps.max_pool2d(x, 2)[0, 0, 0, 0]))
    x = jnp.array([1.0, jnp.nan, 3.0, jnp.nan, 2.0, 5.0]).reshape(1, 1, 6, 1)
    for c in (1, 6, 37):  # the specialised, the 16/4-lane and the 1..3-lane channel blocks
        xc = jnp.tile(x, (1, 1, 1, c))
        g = jax.grad(lambda x: mps.max_pool2d(x, (1, 6)).sum())(xc)
        np.testing.assert_array_equal(np.asarray(g[0, 0]), np.tile([[0, 0, 0, 1, 0, 0]], (c, 1)).T)
        g = jax.grad(lambda x: mps.max_pool1d(x, 4, 2).sum())(xc[:, 0])
        np.testing.assert_array_equal(np.asarray(g[0]), np.tile([[0, 0, 0, 2, 0, 0]], (c, 1)).T)


# Non-overlapping windows (stride >= window) take the scatter backward: exact tiling, leftover
# rows/columns, gaps between windows, padding on either side, rectangular windows.
DISJOINT_2D = [
    ((2, 8, 6, 6), 2, None, "VALID"), ((1, 6, 9, 16), (2, 3), None, "VALID"), ((2, 7, 9, 3), 2, None, "VALID"),
    ((1, 7, 7, 5), 2, 2, "SAME"), ((2, 6, 7, 6), 3, (3, 4), ((2, 1), (0, 2))),
    ((3, 5, 4, 20), (1, 2), (2, 2), ((0, 0), (1, 1))),
]


@pytest.mark.parametrize("shape,window,stride,padding", DISJOINT_2D)
def test_avg_pool2d_disjoint(shape, window, stride, padding):
    for cip in (False, True):
        check_fwd_and_grads(lambda x: mps.avg_pool2d(x, window, stride, padding, cip),
                            lambda x: ref.pool_avg(x, window, stride, padding, cip), (_x(shape),))


# Runtime channel counts through the 16-, 4- and 1..3-channel register blocks of the max kernel
# (the other tests cover the specialised counts and 17 = 16 + 1).
@pytest.mark.parametrize("c", [7, 38])
def test_max_pool2d_channels(c):
    x = _x((2, 5, 6, c), seed=c)
    f = lambda x: mps.max_pool2d(x, 3, 1, "SAME")
    assert_close(jax.jit(f)(x), ref.pool_max(x, 3, 1, "SAME"))  # primal alone: no argmax
    check_fwd_and_grads(f, lambda x: ref.pool_max(x, 3, 1, "SAME"), (x,))


@pytest.mark.parametrize("c", [6, 37])
def test_max_pool2d_primal_special_values(c):
    # The primal-only kernel (no argmax) keeps NaN propagation, -inf handling and ties.
    x = np.array(_x((2, 6, 5, c), seed=1))
    x[0, 1, 2, :] = np.nan
    x[1, :2, :2, : c // 2 + 1] = -np.inf
    x[1, 4, 3, c - 1] = np.nan
    x = jnp.asarray(x)
    for geo in [(2, None, "VALID"), (3, 1, "SAME"), (3, 2, 1)]:
        got = jax.jit(lambda x: mps.max_pool2d(x, *geo))(x)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref.pool_max(x, *geo)))
    # Ties (the gradient's side is in test_max_ties_and_special_values).
    x = jnp.round(x * 2) / 2
    got = jax.jit(lambda x: mps.max_pool2d(x, 3, 1))(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref.pool_max(x, 3, 1)))


def test_jit_vmap_value_and_grad():
    x = _x((3, 2, 6, 5, 4))
    f = lambda v: mps.max_pool2d(v, 2, 1, "SAME")
    got = jax.jit(jax.vmap(f))(x)
    assert_close(got, jax.vmap(lambda v: ref.pool_max(v, 2, 1, "SAME"))(x))
    g = jax.grad(lambda x: (jax.vmap(f)(x) ** 2).sum())(x)
    g_ref = jax.grad(lambda x: (jax.vmap(lambda v: ref.pool_max(v, 2, 1, "SAME"))(x) ** 2).sum())(x)
    assert_close(g, g_ref)
    for fn, rf in [(lambda v: mps.avg_pool2d(v, 3, 2, 1), lambda v: ref.pool_avg(v, 3, 2, 1)),
                   (mps.global_avg_pool2d, ref.pool_global_avg),
                   (lambda v: mps.upsample2d(v, 2, "bilinear"), lambda v: ref.resample_upsample2d(v, 2, "bilinear")),
                   (lambda v: mps.max_pool1d(v[:, 0], 3, 2), lambda v: ref.pool_max(v[:, 0], 3, 2))]:
        val, gr = jax.jit(jax.value_and_grad(lambda x: (jax.vmap(fn)(x) ** 2).sum()))(x)
        rval, rgr = jax.value_and_grad(lambda x: (jax.vmap(rf)(x) ** 2).sum())(x)
        assert_close(val, rval, rtol=1e-4)
        assert_close(gr, rgr)


@pytest.mark.parametrize("dt", [jnp.float16, jnp.bfloat16])
def test_low_precision(dt):
    x = _x((2, 6, 6, 3))
    for fn, rf in [(lambda v: mps.max_pool2d(v, 2), lambda v: ref.pool_max(v, 2)),
                   (lambda v: mps.avg_pool2d(v, 3, 1, "SAME"), lambda v: ref.pool_avg(v, 3, 1, "SAME")),
                   (mps.global_avg_pool2d, ref.pool_global_avg),
                   (lambda v: mps.upsample2d(v, 2, "bilinear"), lambda v: ref.resample_upsample2d(v, 2, "bilinear"))]:
        y = fn(x.astype(dt))
        assert y.dtype == dt
        assert_close(y.astype(jnp.float32), rf(x), rtol=2e-2, atol=2e-2)
        g = jax.grad(lambda v: fn(v).astype(jnp.float32).sum())(x.astype(dt))
        assert g.dtype == dt
        assert_close(g.astype(jnp.float32), jax.grad(lambda v: rf(v).sum())(x), rtol=2e-2, atol=2e-2)


def test_bad_input():
    x = jnp.ones((2, 5, 5, 3))
    with pytest.raises(ValueError, match=r"`x` must have rank 4"):
        mps.max_pool2d(jnp.ones((5, 5, 3)), 2)
    with pytest.raises(ValueError, match=r"`x` must have rank 3"):
        mps.avg_pool1d(x, 2)
    with pytest.raises(TypeError, match="float32"):
        mps.max_pool2d(jnp.ones((2, 5, 5, 3), jnp.int32), 2)
    with pytest.raises(ValueError, match="`window` entries must be >= 1"):
        mps.max_pool2d(x, 0)
    with pytest.raises(ValueError, match="`window` must be an int or a tuple of 2"):
        mps.max_pool2d(x, (2, 2, 2))
    with pytest.raises(ValueError, match="`stride` entries must be >= 1"):
        mps.avg_pool2d(x, 2, (1, 0))
    with pytest.raises(ValueError, match="`padding` must be 'SAME', 'VALID'"):
        mps.max_pool2d(x, 2, padding="FULL")
    with pytest.raises(ValueError, match="`padding` must be 'SAME', 'VALID'"):
        mps.max_pool2d(x, 2, padding=((1, 1),))
    with pytest.raises(ValueError, match="`padding` entries must be >= 0 and smaller than the window"):
        mps.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="`padding` entries must be >= 0"):
        mps.avg_pool2d(x, 3, padding=((-1, 0), (0, 0)))
    with pytest.raises(ValueError, match=r"`window` \(6, 2\) is larger than the padded input spatial shape \(5, 5\)"):
        mps.max_pool2d(x, (6, 2))
    with pytest.raises(ValueError, match=r"expected window <= \(6,\)"):
        mps.max_pool1d(jnp.ones((1, 4, 2)), 7, padding=1)
    with pytest.raises(TypeError, match="`count_include_pad` must be a bool"):
        mps.avg_pool2d(x, 2, count_include_pad="yes")
    with pytest.raises(ValueError, match="`x` spatial dims must be >= 1"):
        mps.max_pool2d(jnp.ones((1, 0, 4, 2)), 1)
    with pytest.raises(ValueError, match=r"global_avg_pool2d: `x` must have rank 4"):
        mps.global_avg_pool2d(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="`scale` entries must be >= 1"):
        mps.upsample2d(x, 0)
    with pytest.raises(TypeError, match="`scale` must be an int or a tuple of 2"):
        mps.upsample2d(x, 1.5)
    with pytest.raises(ValueError, match="`method` must be 'nearest' or 'bilinear'"):
        mps.upsample2d(x, 2, "bicubic")
    with pytest.raises(ValueError, match=r"upsample2d: `x` must have rank 4"):
        mps.upsample2d(jnp.ones((4, 4)), 2)


def _raw(target, results, *args, **attrs):
    attrs = {k: (np.asarray(v, np.int64) if isinstance(v, tuple) else v) for k, v in attrs.items()}
    return jax.ffi.ffi_call(target, results)(*args, **attrs)


def test_cpp_validation():
    x = jnp.ones((1, 4, 4, 2))
    geo = dict(window=(2, 2), stride=(2, 2), pad_lo=(0, 0), pad_hi=(0, 0))
    f32, i32 = jnp.float32, jnp.int32
    # Output shape inconsistent with the window.
    with pytest.raises(Exception, match="output must have shape"):
        jax.block_until_ready(_raw("jax_mps_max_pool_fwd", (jax.ShapeDtypeStruct((1, 3, 3, 2), f32),
                                                            jax.ShapeDtypeStruct((1, 3, 3, 2), i32)), x, **geo,
                                   with_index=np.int64(1)))
    # Padding as large as the window.
    with pytest.raises(Exception, match="padding must be smaller than the window"):
        jax.block_until_ready(_raw("jax_mps_avg_pool_fwd", jax.ShapeDtypeStruct((1, 3, 3, 2), f32), x,
                                   **dict(geo, pad_lo=(2, 2)), count_include_pad=np.int64(0)))
    # Wrong attribute length.
    with pytest.raises(Exception, match="window must have 2 entries"):
        jax.block_until_ready(_raw("jax_mps_avg_pool_bwd", jax.ShapeDtypeStruct((1, 4, 4, 2), f32),
                                   jnp.ones((1, 2, 2, 2)), **dict(geo, window=(2, 2, 2)),
                                   count_include_pad=np.int64(0)))
    # Out-of-range argmax is ignored, never written out of bounds.
    bad_idx = jnp.full((1, 2, 2, 2), 1 << 30, jnp.int32)
    dx = _raw("jax_mps_max_pool_bwd", jax.ShapeDtypeStruct((1, 4, 4, 2), f32), bad_idx, jnp.ones((1, 2, 2, 2)), **geo)
    assert float(jnp.abs(dx).sum()) == 0.0
    with pytest.raises(Exception, match="output must have shape"):
        jax.block_until_ready(_raw("jax_mps_global_avg_pool2d_fwd", jax.ShapeDtypeStruct((1, 3), f32), x))
    with pytest.raises(Exception, match="method must be 'nearest' or 'bilinear'"):
        jax.block_until_ready(_raw("jax_mps_upsample2d_fwd", jax.ShapeDtypeStruct((1, 8, 8, 2), f32), x,
                                   sh=np.int64(2), sw=np.int64(2), method="cubic"))
    with pytest.raises(Exception, match="output must have shape"):
        jax.block_until_ready(_raw("jax_mps_upsample2d_bwd", jax.ShapeDtypeStruct((1, 4, 4, 2), f32),
                                   jnp.ones((1, 8, 7, 2)), sh=np.int64(2), sw=np.int64(2), method="nearest"))
    # with_index: 1 needs an argmax of y's size, 0 an empty one.
    y_spec = jax.ShapeDtypeStruct((1, 2, 2, 2), f32)
    with pytest.raises(Exception, match="argmax must have the output's shape"):
        jax.block_until_ready(_raw("jax_mps_max_pool_fwd", (y_spec, jax.ShapeDtypeStruct((0,), i32)), x, **geo,
                                   with_index=np.int64(1)))
    with pytest.raises(Exception, match="argmax must be empty when with_index is 0"):
        jax.block_until_ready(_raw("jax_mps_max_pool_fwd", (y_spec, jax.ShapeDtypeStruct((1, 2, 2, 2), i32)), x,
                                   **geo, with_index=np.int64(0)))
    with pytest.raises(Exception, match="with_index must be 0 or 1"):
        jax.block_until_ready(_raw("jax_mps_max_pool_fwd", (y_spec, jax.ShapeDtypeStruct((0,), i32)), x, **geo,
                                   with_index=np.int64(2)))
    y, idx = _raw("jax_mps_max_pool_fwd", (y_spec, jax.ShapeDtypeStruct((0,), i32)), x, **geo,
                  with_index=np.int64(0))
    assert idx.shape == (0,) and float(jnp.abs(y - 1).max()) == 0.0
