import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_mps as mps
import reference as ref
from helpers import assert_close, check_fwd_and_grads

TOL = dict(rtol=2e-4, atol=2e-4)


def _r(shape, seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _check(fn, reffn, x, w, b, **kw):
    args = (x, w) if b is None else (x, w, b)
    check_fwd_and_grads(lambda *a: fn(*a, **kw), lambda *a: reffn(*a, **kw), args, **TOL)


# (x shape, w shape, stride, padding, dilation, groups, bias, activation)
CONV2D = [
    ((1, 5, 7, 3), (3, 3, 3, 5), 1, "SAME", 1, 1, True, None),
    ((2, 9, 6, 4), (3, 2, 4, 6), 2, "SAME", 1, 1, True, "relu"),             # SAME with stride
    ((2, 8, 8, 3), (2, 2, 3, 5), 3, "VALID", 1, 1, False, "tanh"),           # stride > kernel
    ((1, 6, 5, 6), (3, 3, 1, 6), 1, "SAME", 1, 6, True, "gelu"),             # depthwise
    ((2, 7, 7, 6), (3, 3, 3, 4), 1, "VALID", 2, 2, True, ("leaky_relu", {"alpha": 0.2})),
    ((2, 5, 9, 9), (1, 3, 3, 6), (1, 2), ((3, 4), (0, 2)), 1, 3, True, "sigmoid"),  # large explicit pad
    ((2, 3, 4, 512), (1, 1, 512, 6), 1, "SAME", 1, 1, True, "relu"),     # 1x1 over 512+ channels: dense
    ((1, 3, 2, 520), (1, 1, 520, 3), 1, "VALID", 1, 1, False, "tanh"),
    ((4, 64, 65, 32), (1, 1, 32, 64), 1, "SAME", 1, 1, True, "relu"),  # relu grad over 1M+: threaded
    ((8, 64, 65, 16), (1, 1, 16, 8), 1, "VALID", 1, 1, True, "sigmoid"),  # 1x1 over 32k+ pixels: dense
    ((1, 3, 4, 2), (5, 5, 2, 3), 1, 2, 1, 1, True, "softsign"),               # kernel > input dims
    ((2, 6, 6, 5), (3, 3, 5, 7), 1, ((-1, 2), (1, -1)), (2, 1), 1, True, "elu"),  # negative pad crops
    ((1, 10, 3, 4), (4, 1, 4, 4), (2, 1), "SAME", (2, 1), 1, False, "softplus"),
    ((3, 4, 4, 1), (2, 2, 1, 2), (2, 2), "SAME", 1, 1, True, "relu6"),
    # small-channel im2col backward: window rows of 3, 5, 7 and 15 floats take fixed-size copies
    ((3, 9, 8, 1), (5, 5, 1, 6), 1, "SAME", 1, 1, True, "relu"),             # LeNet's first layer
    ((2, 7, 6, 1), (3, 3, 1, 2), 1, "SAME", 1, 1, True, None),
    ((1, 9, 9, 1), (7, 7, 1, 2), 1, ((1, 2), (3, 0)), 1, 1, True, "tanh"),
    ((2, 8, 7, 3), (5, 5, 3, 4), (1, 2), "SAME", 1, 1, False, "relu"),
    ((1, 4, 3, 33), (2, 3, 33, 3), (2, 1), "SAME", 1, 1, True, "relu"),      # Cin >= 32: oneDNN backward
    ((2, 5, 4, 32), (3, 3, 32, 5), 1, ((2, 0), (1, 3)), (1, 2), 1, False, "gelu"),
    # the input cropped away entirely: every output is act(b), and dy still reaches b
    ((1, 4, 1, 2), (3, 1, 2, 2), 1, ((2, 1), (-1, 3)), 1, 1, True, ("leaky_relu", {"alpha": 0.2})),
    ((2, 3, 2, 3), (2, 2, 3, 4), 1, ((-3, 2), (1, 1)), 1, 1, True, None),
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups,bias,act", CONV2D)
def test_conv2d(xs, ws, stride, padding, dilation, groups, bias, act):
    b = _r((ws[-1],), 2) if bias else None
    _check(mps.conv2d, ref.conv_conv2d, _r(xs), _r(ws, 1), b, stride=stride, padding=padding,
           dilation=dilation, groups=groups, activation=act)


@pytest.mark.parametrize("act", [None, "relu", "relu6", "leaky_relu", "elu", ("elu", {"alpha": -0.5}), "sigmoid",
                                 "hard_sigmoid", "tanh", "softplus", "softsign", "gelu",
                                 ("gelu", {"approximate": True})])
def test_conv2d_activations(act):
    _check(mps.conv2d, ref.conv_conv2d, _r((2, 5, 4, 3)), _r((3, 3, 3, 4), 1), _r((4,), 2), activation=act)


CONV1D = [
    ((1, 9, 3), (3, 3, 5), 1, "SAME", 1, 1, True, None),
    ((2, 11, 4), (4, 2, 6), 3, "SAME", 1, 2, True, "relu"),
    ((2, 7, 5), (2, 5, 3), 4, "VALID", 1, 1, False, "gelu"),
    ((1, 8, 6), (3, 1, 6), 1, (2, 1), 2, 6, True, "tanh"),        # depthwise, bare (lo, hi) pair
    ((2, 5, 3), (7, 3, 2), 2, ((4, -1),), 1, 1, True, "softsign"),  # kernel > L, negative hi
    # windows tiling the input (stride = kernel, the activity model's first layer): a dense layer
    ((3, 20, 6), (5, 6, 8), 5, "VALID", 1, 1, True, "relu"),
    ((2, 12, 2), (4, 2, 3), 4, "VALID", 1, 1, False, ("elu", {"alpha": 0.5})),
    ((2, 13, 2), (4, 2, 3), 4, "VALID", 1, 1, True, "relu"),       # a trailing sample left over
    ((2, 12, 2), (4, 2, 3), 4, ((0, 3),), 1, 1, True, None),        # high padding never reached
    ((2, 0, 3), (1, 3, 2), 1, ((2, 2),), 1, 1, True, "relu"),         # no input: padding only
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups,bias,act", CONV1D)
def test_conv1d(xs, ws, stride, padding, dilation, groups, bias, act):
    b = _r((ws[-1],), 2) if bias else None
    rp = (padding,) if isinstance(padding, tuple) and isinstance(padding[0], int) else padding
    x, w = _r(xs), _r(ws, 1)
    args = (x, w) if b is None else (x, w, b)
    kw = dict(stride=stride, dilation=dilation, groups=groups, activation=act)
    check_fwd_and_grads(lambda *a: mps.conv1d(*a, padding=padding, **kw),
                        lambda *a: ref.conv_conv1d(*a, padding=rp, **kw), args, **TOL)


CONVT = [
    ((1, 4, 5, 3), (3, 3, 3, 5), 1, "SAME", 1, True, None),
    ((2, 3, 4, 3), (3, 3, 3, 4), 2, "SAME", 1, True, "relu"),
    ((2, 3, 3, 2), (2, 2, 2, 3), 3, "VALID", 1, True, "sigmoid"),   # stride > kernel: rows no input reaches
    ((1, 5, 3, 4), (4, 2, 4, 3), (2, 1), "VALID", (1, 2), False, "gelu"),
    ((2, 4, 4, 3), (3, 3, 3, 2), 2, 1, 1, True, "tanh"),            # int padding
    ((1, 4, 5, 2), (3, 2, 2, 5), 1, ((3, -1), (-1, 4)), 1, True, ("leaky_relu", {"alpha": 0.1})),
    ((1, 3, 3, 3), (1, 1, 3, 2), 4, ((0, 0), (5, 5)), 1, False, None),  # padding beyond the kernel
    # a crop on one side larger than the core output, the other side grown: grow, then crop
    ((1, 1, 3, 1), (1, 1, 1, 2), 1, ((0, 0), (6, -4)), 1, True, None),
    ((1, 1, 3, 2), (1, 1, 2, 1), 1, ((0, 0), (-4, 6)), 1, True, "relu"),
    ((1, 1, 2, 2), (2, 2, 2, 3), (1, 3), ((1, 5), (5, -2)), (1, 2), True, "tanh"),
    ((1, 3, 1, 2), (4, 1, 2, 2), 2, ((3, 3), (-2, 5)), (2, 1), True, None),
    # an empty input: the strided input has no rows (lax's extent), every output is act(b)
    ((2, 0, 4, 3), (3, 3, 3, 4), 2, "VALID", 1, True, "relu"),
    ((1, 0, 2, 2), (2, 3, 2, 3), (3, 2), ((1, 2), (0, 1)), 1, True, "tanh"),
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,bias,act", CONVT)
def test_conv_transpose2d(xs, ws, stride, padding, dilation, bias, act):
    b = _r((ws[-1],), 2) if bias else None
    _check(mps.conv_transpose2d, ref.conv_conv_transpose2d, _r(xs), _r(ws, 1), b, stride=stride, padding=padding,
           dilation=dilation, activation=act)


@pytest.mark.parametrize("xs,out,bias,act", [((7,), 5, True, None), ((3, 7), 5, True, "relu"),
                                            ((2, 3, 7), 4, False, "gelu"), ((1, 1), 1, True, "softsign"),
                                            ((4, 13), 9, True, ("elu", {"alpha": 0.5})), ((5, 2), 3, True, "softplus")])
def test_dense(xs, out, bias, act):
    b = _r((out,), 2) if bias else None
    _check(mps.dense, ref.conv_dense, _r(xs), _r((xs[-1], out), 1), b, activation=act)


def test_check_grads():
    kw = dict(order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    x, w, b = _r((1, 4, 5, 2)), _r((3, 3, 2, 3), 1), _r((3,), 2)
    check_grads(lambda x, w, b: mps.conv2d(x, w, b, stride=2, activation="tanh"), (x, w, b), **kw)
    check_grads(lambda x, w, b: mps.conv_transpose2d(x, w, b, stride=2, activation="gelu"),
                (x, _r((3, 3, 2, 3), 1), b), **kw)
    check_grads(lambda x, w, b: mps.conv1d(x, w, b, groups=2, activation="sigmoid"),
                (_r((2, 6, 4)), _r((3, 2, 4), 1), _r((4,), 2)), **kw)
    check_grads(lambda x, w, b: mps.dense(x, w, b, activation="tanh"), (_r((3, 4)), _r((4, 2), 1), _r((2,), 2)), **kw)


def test_jit_vmap_value_and_grad():
    x, w, b = _r((3, 2, 6, 5, 3)), _r((3, 3, 3, 4), 1), _r((4,), 2)
    f = jax.jit(jax.vmap(lambda x: mps.conv2d(x, w, b, activation="relu")))
    assert_close(f(x), jax.vmap(lambda x: ref.conv_conv2d(x, w, b, activation="relu"))(x), **TOL)
    # batched weights: not foldable, one call per element
    ws = _r((2, 3, 3, 3, 4), 3)
    got = jax.vmap(lambda w: mps.conv2d(x[0], w, b))(ws)
    assert_close(got, jax.vmap(lambda w: ref.conv_conv2d(x[0], w, b))(ws), **TOL)

    def loss(fn):
        return lambda w, b: jnp.sum(jax.vmap(lambda x: fn(x, w, b, activation="gelu"))(x) ** 2)
    v1, g1 = jax.jit(jax.value_and_grad(loss(mps.conv2d), argnums=(0, 1)))(w, b)
    v2, g2 = jax.value_and_grad(loss(ref.conv_conv2d), argnums=(0, 1))(w, b)
    assert_close(v1, v2, rtol=1e-4)
    for a, c in zip(g1, g2):
        assert_close(a, c, rtol=1e-3, atol=1e-3)
    xd, wd = _r((2, 3, 6)), _r((6, 4), 1)
    assert_close(jax.jit(jax.vmap(mps.dense, in_axes=(0, None)))(xd, wd), jnp.einsum("abi,io->abo", xd, wd), **TOL)


@pytest.mark.parametrize("dt", [jnp.float16, jnp.bfloat16])
def test_low_precision(dt):
    x, w, b = _r((1, 5, 5, 3)), _r((3, 3, 3, 4), 1, 0.3), _r((4,), 2)
    for fn, rf, ww in [(mps.conv2d, ref.conv_conv2d, w), (mps.conv_transpose2d, ref.conv_conv_transpose2d, w)]:
        y = fn(x.astype(dt), ww.astype(dt), b.astype(dt), accumulate="float16")
        assert y.dtype == dt
        assert_close(y.astype(jnp.float32), rf(x, ww, b), rtol=5e-2, atol=5e-2)
        g = jax.grad(lambda w: jnp.sum(fn(x.astype(dt), w, b.astype(dt)).astype(jnp.float32)))(ww.astype(dt))
        assert g.dtype == dt
    y = mps.dense(x.astype(dt), w[0, 0].astype(dt))
    assert y.dtype == dt and y.shape == (1, 5, 5, 4)


# accumulate="float16" on float16 operands: float16 accumulation on CUDA (float32 on the CPU, as
# API.md allows). Documented tolerance (README): with unit-scale outputs (x ~ N(0, 1), w ~ N(0, 1/K)
# for K = KH*KW*Cin terms, here K <= 288), |y - y_ref| <= 3e-2 + 1e-2 |y_ref| against a float32
# computation on the same float16-rounded operands (float16 rounding of the partial sums grows as
# sqrt(K) ulps); the gradients likewise.
F16_ACC_TOL = dict(rtol=1e-2, atol=3e-2)


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d", "dense"])
def test_float16_accumulation(op):
    f16 = jnp.float16
    x = _r((2, 8, 8, 32)).astype(f16)
    if op == "dense":
        w, fn, rf = _r((32, 24), 1, 32 ** -0.5).astype(f16), mps.dense, ref.conv_dense
    else:
        w = _r((3, 3, 32, 24), 1, 288 ** -0.5).astype(f16)
        fn, rf = (mps.conv2d, ref.conv_conv2d) if op == "conv2d" else (mps.conv_transpose2d, ref.conv_conv_transpose2d)
    b = _r((24,), 2).astype(f16)
    up = lambda *a: tuple(v.astype(jnp.float32) for v in a)  # noqa: E731
    y = fn(x, w, b, accumulate="float16")
    assert y.dtype == f16
    assert_close(y, rf(*up(x, w, b)), **F16_ACC_TOL, what=f"{op} forward")
    g = jax.grad(lambda x, w, b: jnp.sum(fn(x, w, b, accumulate="float16").astype(jnp.float32) * y.astype(jnp.float32)),
                 argnums=(0, 1, 2))(x, w, b)
    gr = jax.grad(lambda x, w, b: jnp.sum(rf(x, w, b) * y.astype(jnp.float32)), argnums=(0, 1, 2))(*up(x, w, b))
    for name, a, c in zip(("dx", "dw", "db"), g, gr):
        assert a.dtype == f16
        scale = float(jnp.max(jnp.abs(c)))  # gradients are sums over the batch: compare at their scale
        assert_close(a / scale, c / scale, **F16_ACC_TOL, what=f"{op} {name}")


def _precisions(fn, *args):
    """The `precision` attribute of every runtime call in the lowered forward + backward of fn."""
    grad = jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))
    return re.findall(r"precision = (\d+) : i64", jax.jit(grad).lower(*args).as_text())


@pytest.mark.parametrize("setting, want", [("default", "0"), ("high", "0"), ("tensorfloat32", "0"),
                                           ("bfloat16", "0"), ("highest", "1"), ("float32", "1"),
                                           ("F32_F32_F32", "1")])
def test_precision_follows_default_matmul_precision(setting, want):
    # float32 math on CUDA: TF32 allowed unless jax.default_matmul_precision asks for full float32;
    # read at trace time (context manager or flag) and passed to all three passes.
    x, w = _r((2, 5, 5, 3)), _r((3, 3, 3, 4), 1)
    cases = [(mps.conv2d, x, w), (mps.conv_transpose2d, x, w), (mps.conv1d, x[0], w[0]), (mps.dense, x, w[0, 0])]
    with jax.default_matmul_precision(setting):
        for fn, a, c in cases:
            assert _precisions(fn, a, c) == [want] * 3, fn.__name__


def test_graph_keeps_the_op_precision():
    # mps.graph.optimize gives a converted lax op the precision it was traced with.
    x, w = _r((2, 5, 5, 3)), _r((3, 3, 3, 4), 1)
    conv = lambda p: lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=p)
    for p, want in [(None, "0"), (jax.lax.Precision.HIGHEST, "1")]:
        with jax.default_matmul_precision("default"):
            assert _precisions(mps.graph.optimize(conv(p)), x, w) == [want] * 3, p


def test_float32_precision_on_cuda(backend):
    # float32 on CUDA: TF32 tensor cores by default, as XLA (10-bit mantissa products: ~1e-4 of the
    # output scale here), full float32 under "highest". The CPU always computes in float32.
    if backend != "cuda":
        pytest.skip("TF32 is a CUDA matter")
    x, w = _r((256, 512)), _r((512, 256), 1)
    xc, wc = _r((4, 16, 16, 64)), _r((3, 3, 64, 64), 1)
    cases = [(mps.dense, (x, w), np.asarray(x, np.float64) @ np.asarray(w, np.float64)),
             (mps.conv2d, (xc, wc), np.asarray(ref.conv_conv2d(xc, wc), np.float64))]
    for fn, args, want in cases:
        err = lambda y: float(np.abs(np.asarray(y, np.float64) - want).max() / np.abs(want).max())  # noqa: E731
        with jax.default_matmul_precision("highest"):
            assert err(jax.jit(fn)(*args)) < 2e-6, fn.__name__
        with jax.default_matmul_precision("default"):
            assert err(jax.jit(fn)(*args)) < 5e-3, fn.__name__


def test_bad_input():
    x, w = jnp.ones((2, 5, 5, 4)), jnp.ones((3, 3, 4, 6))
    with pytest.raises(ValueError, match="rank 4"):
        mps.conv2d(x[0], w)
    with pytest.raises(ValueError, match="rank 4"):
        mps.conv2d(x, w[0])
    with pytest.raises(ValueError, match="`w` must have shape"):
        mps.conv2d(x, jnp.ones((3, 3, 3, 6)))
    with pytest.raises(ValueError, match="groups"):
        mps.conv2d(x, jnp.ones((3, 3, 2, 6)), groups=3)
    with pytest.raises(ValueError, match="groups"):
        mps.conv2d(x, w, groups=0)
    with pytest.raises(ValueError, match="`b` must have shape"):
        mps.conv2d(x, w, jnp.ones((5,)))
    with pytest.raises(ValueError, match="stride"):
        mps.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="dilation"):
        mps.conv2d(x, w, dilation=(1, 2, 3))
    with pytest.raises(ValueError, match="padding"):
        mps.conv2d(x, w, padding="FULL")
    with pytest.raises(ValueError, match="padding"):
        mps.conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="output spatial size"):
        mps.conv2d(x, jnp.ones((7, 3, 4, 6)), padding="VALID")
    with pytest.raises(ValueError, match="unknown activation"):
        mps.conv2d(x, w, activation="swish")
    with pytest.raises(ValueError, match="accumulate"):
        mps.conv2d(x, w, accumulate="bfloat16")
    with pytest.raises(TypeError, match="float32"):
        mps.conv2d(x.astype(jnp.int32), w)
    with pytest.raises(ValueError, match="rank 3"):
        mps.conv1d(x, w)
    with pytest.raises(ValueError, match="Cin=4"):
        mps.conv_transpose2d(x, jnp.ones((3, 3, 5, 2)))
    with pytest.raises(ValueError, match="output spatial size"):
        mps.conv_transpose2d(x, w, padding=((0, 0), (-9, 0)))
    with pytest.raises(ValueError, match="< 2\\*\\*31"):  # the kernels take int32 sizes
        mps.conv2d(x, w, stride=2 ** 31)
    with pytest.raises(ValueError, match="< 2\\*\\*31"):
        mps.conv1d(x[0], w[0], dilation=2 ** 64)
    with pytest.raises(ValueError, match="padding"):
        mps.conv2d(x, w, padding=((2 ** 62, 0), (0, 0)))
    with pytest.raises(ValueError, match="too large"):  # XLA would abort the process on this shape
        mps.conv_transpose2d(x, w, stride=10 ** 9)
    with pytest.raises(ValueError, match=r"\(In=4, Out\)"):
        mps.dense(jnp.ones((3, 4)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="rank 2"):
        mps.dense(jnp.ones((3, 4)), jnp.ones((4,)))
    with pytest.raises(ValueError, match="scalar"):
        mps.dense(jnp.float32(1), jnp.ones((1, 2)))
    with pytest.raises(TypeError, match="`w`"):
        mps.dense(jnp.ones((3, 4)), jnp.ones((4, 2), jnp.int32))


def test_numpy_int_attributes():
    # NumPy integers are ints, as in lax (feature_group_count=np.int64(2)).
    x, w = _r((1, 4, 4, 4)), _r((3, 3, 2, 4), 1)
    got = mps.conv2d(x, w, stride=np.int32(1), padding=np.int64(1), groups=np.int64(2))
    assert_close(got, ref.conv_conv2d(x, w, padding=1, groups=2), 1e-5, 1e-5)
    with pytest.raises(ValueError, match="groups"):
        mps.conv2d(x, w, groups=True)


def _attrs(**over):
    a = dict(stride=np.array([1, 1], np.int64), pad_lo=np.array([1, 1], np.int64),
             pad_hi=np.array([1, 1], np.int64), dilation=np.array([1, 1], np.int64), groups=np.int64(1),
             transpose=np.int64(0), act=np.int64(0), alpha=np.float32(0), has_bias=np.int64(1),
             accumulate=np.int64(0), precision=np.int64(0))
    a.update(over)
    return a


def test_cpp_validates():
    x, w, b = jnp.ones((2, 5, 5, 4)), jnp.ones((3, 3, 4, 6)), jnp.ones((6,))
    call = lambda shape, *args, **kw: jax.ffi.ffi_call(  # noqa: E731
        "jax_mps_conv_fwd", jax.ShapeDtypeStruct(shape, jnp.float32))(*args, **_attrs(**kw))
    assert call((2, 5, 5, 6), x, w, b).shape == (2, 5, 5, 6)
    with pytest.raises(Exception, match="output spatial dims"):
        call((2, 4, 5, 6), x, w, b)
    with pytest.raises(Exception, match="groups"):
        call((2, 5, 5, 6), x, w, b, groups=np.int64(4))
    with pytest.raises(Exception, match="b must have shape"):
        call((2, 5, 5, 6), x, w, jnp.ones((3,)))
    with pytest.raises(Exception, match="padding"):
        call((2, 3, 5, 6), x, w, b, pad_lo=np.array([-1, 1], np.int64))
    with pytest.raises(Exception, match="unknown activation"):
        call((2, 5, 5, 6), x, w, b, act=np.int64(42))
    with pytest.raises(Exception, match="2 entries"):
        call((2, 5, 5, 6), x, w, b, stride=np.array([1], np.int64))
    with pytest.raises(Exception, match="cannot be differentiated from its output"):
        jax.ffi.ffi_call("jax_mps_dense_bwd_data", jax.ShapeDtypeStruct((3, 4), jnp.float32))(
            jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones((4, 2)), act=np.int64(10), alpha=np.float32(0),
            from_output=np.int64(1), accumulate=np.int64(0), precision=np.int64(0))
    with pytest.raises(Exception, match="w must have shape"):
        jax.ffi.ffi_call("jax_mps_dense_fwd", jax.ShapeDtypeStruct((3, 2), jnp.float32))(
            jnp.ones((3, 4)), jnp.ones((5, 2)), jnp.ones((2,)), act=np.int64(0), alpha=np.float32(0),
            has_bias=np.int64(1), accumulate=np.int64(0), precision=np.int64(0))
