import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jax_mps as mps
import reference as ref
from helpers import assert_close, check_fwd_and_grads

REDUCTIONS = ["none", "sum", "mean", "sum_by_nonzero_weights"]
ELEMENTWISE = ["sigmoid_cross_entropy", "mean_squared_error", "mean_absolute_error", "huber_loss", "hinge_loss",
               "kl_divergence"]
SHAPES = [(1,), (3, 5), (2, 3, 4), (1, 7), (5, 1, 3)]


def _rng(seed):
    return np.random.default_rng(seed)


def _weights(n, seed, zeros=True):
    w = _rng(seed).uniform(0.2, 2.0, n).astype(np.float32)
    if zeros and n > 1:
        w[::2] = 0.0
    return jnp.asarray(w)


def _inputs(name, shape, seed=0):
    r = _rng(seed)
    p = r.normal(0, 1.5, shape).astype(np.float32)
    if name == "sigmoid_cross_entropy":
        t = r.uniform(0, 1, shape)
    elif name == "hinge_loss":
        t = r.choice([-1.0, 1.0], shape)
        p[np.abs(1 - np.abs(p)) < 0.05] += 0.1  # keep off the kink at t * p == 1
    elif name == "kl_divergence":
        flat = r.normal(size=(shape[0], int(np.prod(shape[1:]))))
        t = np.exp(flat) / np.exp(flat).sum(1, keepdims=True)
        t = t.reshape(shape)
    else:
        t = r.normal(0, 1.5, shape)
    return jnp.asarray(p), jnp.asarray(t.astype(np.float32))


def _mps(name, **kw):
    return lambda p, t, w=None: getattr(mps, name)(p, t, weights=w, **kw)


def _ref(name, **kw):
    return lambda p, t, w=None: getattr(ref, "loss_" + name)(p, t, weights=w, **kw)


@pytest.mark.parametrize("int_labels,ls,reduction,weighted",
                         list(itertools.product([True, False], [0.0, 0.1, 1.0], REDUCTIONS, [False, True])))
def test_softmax_cross_entropy(int_labels, ls, reduction, weighted):
    n, c = [(1, 3), (5, 10), (7, 13), (4, 1)][(int(int_labels) + 2 * REDUCTIONS.index(reduction)) % 4]
    r = _rng(n * c)
    logits = jnp.asarray(r.normal(0, 2, (n, c)).astype(np.float32))
    if int_labels:
        labels = jnp.asarray(r.integers(0, c, n).astype(np.int32))
    else:
        labels = jnp.asarray(r.dirichlet(np.ones(c), n).astype(np.float32))
    kw = dict(label_smoothing=ls, reduction=reduction)
    args = (logits, labels) + ((_weights(n, 1),) if weighted else ())
    argnums = tuple(i for i in range(len(args)) if not (i == 1 and int_labels))
    check_fwd_and_grads(_mps("softmax_cross_entropy", **kw), _ref("softmax_cross_entropy", **kw), args,
                        argnums=argnums)


@pytest.mark.parametrize("name,reduction,weighted", list(itertools.product(ELEMENTWISE, REDUCTIONS, [False, True])))
def test_elementwise(name, reduction, weighted):
    shape = SHAPES[(ELEMENTWISE.index(name) + REDUCTIONS.index(reduction)) % len(SHAPES)]
    p, t = _inputs(name, shape)
    kw = dict(reduction=reduction)
    if name == "huber_loss":
        kw["delta"] = 0.7 if weighted else 1.0
    args = (p, t) + ((_weights(shape[0], 2),) if weighted else ())
    check_fwd_and_grads(_mps(name, **kw), _ref(name, **kw), args)


@pytest.mark.parametrize("name", ELEMENTWISE + ["softmax_cross_entropy", "softmax_cross_entropy_int"])
def test_check_grads(name):
    if name.startswith("softmax"):
        logits = jnp.asarray(_rng(3).normal(size=(3, 4)).astype(np.float32))
        labels = jnp.array([0, 3, 1]) if name.endswith("int") else jax.nn.softmax(logits[::-1] * 2)
        w = _weights(3, 4, zeros=False)
        check_grads(lambda x, w: mps.softmax_cross_entropy(x, labels, weights=w, label_smoothing=0.2),
                    (logits, w), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
        if not name.endswith("int"):
            check_grads(lambda y: mps.softmax_cross_entropy(logits, y), (labels,), order=1, modes=["rev"],
                        atol=1e-2, rtol=1e-2)
        return
    p, t = _inputs(name, (3, 4), seed=5)
    w = _weights(3, 4, zeros=False)
    f = getattr(mps, name)
    if name in ("hinge_loss", "mean_absolute_error", "huber_loss"):  # kinks: keep finite differences one-sided
        check_grads(lambda p, w: f(p, t, weights=w), (p, w), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-3)
    else:
        check_grads(lambda p, t, w: f(p, t, weights=w, reduction="sum"), (p, t, w), order=1, modes=["rev"],
                    atol=1e-2, rtol=1e-2)


def test_matches_optax_and_torch_conventions():
    r = _rng(7)
    x = jnp.asarray(r.normal(size=(6, 5)).astype(np.float32))
    y = jnp.asarray(r.integers(0, 5, 6))
    assert_close(mps.softmax_cross_entropy(x, y, reduction="none"),
                 optax.softmax_cross_entropy_with_integer_labels(x, y))
    smooth = optax.smooth_labels(jax.nn.one_hot(y, 5), 0.3)
    assert_close(mps.softmax_cross_entropy(x, y, label_smoothing=0.3, reduction="none"),
                 optax.softmax_cross_entropy(x, smooth))
    t = jnp.asarray(r.uniform(size=(6, 5)).astype(np.float32))
    assert_close(mps.sigmoid_cross_entropy(x, t), optax.sigmoid_binary_cross_entropy(x, t).mean())
    assert_close(mps.huber_loss(x, t, delta=0.5), optax.huber_loss(x, t, delta=0.5).mean())
    p = jax.nn.softmax(t)
    assert_close(mps.kl_divergence(jax.nn.log_softmax(x), p, reduction="none"),
                 optax.kl_divergence(jax.nn.log_softmax(x), p))


def test_kl_zero_target_and_zero_weights():
    lp = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    t = jnp.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    assert_close(mps.kl_divergence(lp, t, reduction="none"), ref.loss_kl_divergence(lp, t, reduction="none"))
    g = jax.grad(mps.kl_divergence, argnums=(0, 1))(lp, t)
    assert bool(jnp.all(jnp.isfinite(g[0])))
    # w.r.t. the target: NaN where it is 0 (d/dt xlogy(t, t)), as optax and torch
    g_ref = jax.grad(lambda a, b: optax.kl_divergence(a, b).mean(), argnums=(0, 1))(lp, t)
    assert_close(g[0], g_ref[0])
    assert_close(g[1], g_ref[1])
    assert bool(jnp.all(jnp.isnan(g[1]) == (t == 0)))
    # Every weight zero: sum_by_nonzero_weights is defined as 0 (no NaN), gradients too.
    z = jnp.zeros((2,))
    f = lambda x, w: mps.mean_squared_error(x, t, weights=w, reduction="sum_by_nonzero_weights")  # noqa: E731
    assert float(f(lp, z)) == 0.0
    gx, gw = jax.grad(f, argnums=(0, 1))(lp, z)
    assert not jnp.any(gx) and bool(jnp.all(jnp.isfinite(gw)))


def test_jit_vmap_value_and_grad():
    r = _rng(9)
    x = jnp.asarray(r.normal(size=(3, 4, 5)).astype(np.float32))
    y = jnp.asarray(r.integers(0, 5, (3, 4)).astype(np.int32))
    t = jnp.asarray(r.normal(size=(3, 4, 5)).astype(np.float32))
    w = _weights(4, 1)
    for red in REDUCTIONS:
        f = jax.jit(jax.vmap(lambda a, b: mps.softmax_cross_entropy(a, b, weights=w, reduction=red)))
        assert_close(f(x, y), jax.vmap(lambda a, b: ref.loss_softmax_cross_entropy(a, b, weights=w, reduction=red))(x, y))
        g = jax.vmap(jax.grad(lambda a, b: mps.mean_absolute_error(a, b, reduction=red).sum()))(x, t)
        assert_close(g, jax.vmap(jax.grad(lambda a, b: ref.loss_mean_absolute_error(a, b, reduction=red).sum()))(x, t))
    # Batched weights too (not foldable -> one call per element).
    ws = jnp.stack([w, w * 2, w + 1])
    f = jax.vmap(lambda a, b, w: mps.huber_loss(a, b, weights=w, reduction="none"))
    assert_close(f(x, t, ws), jax.vmap(lambda a, b, w: ref.loss_huber_loss(a, b, weights=w, reduction="none"))(x, t, ws))
    v, g = jax.jit(jax.value_and_grad(lambda a: mps.softmax_cross_entropy(a, y[0], label_smoothing=0.1)))(x[0])
    rv, rg = jax.value_and_grad(lambda a: ref.loss_softmax_cross_entropy(a, y[0], label_smoothing=0.1))(x[0])
    assert_close(v, rv)
    assert_close(g, rg)


@pytest.mark.parametrize("dt", [jnp.float16, jnp.bfloat16])
def test_low_precision(dt):
    r = _rng(11)
    x = jnp.asarray(r.normal(size=(4, 6)).astype(np.float32))
    y = jnp.array([0, 5, 2, 1])
    out = mps.softmax_cross_entropy(x.astype(dt), y)
    assert out.dtype == dt
    assert_close(out.astype(jnp.float32), ref.loss_softmax_cross_entropy(x, y), rtol=2e-2, atol=2e-2)
    g = jax.grad(lambda a: mps.mean_squared_error(a, x.T.reshape(4, 6).astype(dt)).astype(jnp.float32))(x.astype(dt))
    assert g.dtype == dt
    assert_close(g.astype(jnp.float32), jax.grad(ref.loss_mean_squared_error)(x, x.T.reshape(4, 6)), rtol=2e-2, atol=2e-2)


def test_bad_input():
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="reduction"):
        mps.mean_squared_error(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"target.*\(3, 4\)"):
        mps.mean_squared_error(x, jnp.ones((3, 5)))
    with pytest.raises(ValueError, match=r"weights.*\(3,\)"):
        mps.hinge_loss(x, x, weights=jnp.ones((4,)))
    with pytest.raises(TypeError, match="float32"):
        mps.mean_absolute_error(x.astype(jnp.int32), x)
    with pytest.raises(TypeError, match="weights"):
        mps.mean_absolute_error(x, x, weights=jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="rank >= 1"):
        mps.huber_loss(jnp.float32(1), jnp.float32(1))
    with pytest.raises(ValueError, match="delta"):
        mps.huber_loss(x, x, delta=0.0)
    with pytest.raises(ValueError, match=r"logits.*rank 2"):
        mps.softmax_cross_entropy(jnp.ones((2, 3, 4)), jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match=r"labels.*\(3,\)"):
        mps.softmax_cross_entropy(x, jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match=r"labels.*\(3, 4\)"):
        mps.softmax_cross_entropy(x, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"class ids in \[0, 4\)"):
        mps.softmax_cross_entropy(x, jnp.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"class ids"):
        mps.softmax_cross_entropy(x, jnp.array([0, -1, 1]))
    with pytest.raises(ValueError, match="label_smoothing"):
        mps.softmax_cross_entropy(x, jnp.array([0, 1, 1]), label_smoothing=1.5)
    # Concrete 0-d arrays are accepted as the numbers they hold.
    ids = jnp.array([0, 1, 1])
    assert_close(mps.softmax_cross_entropy(x, ids, label_smoothing=jnp.array(0.1)),
                 mps.softmax_cross_entropy(x, ids, label_smoothing=0.1))
    assert_close(mps.huber_loss(x, 2 * x, delta=np.float32(0.5)), mps.huber_loss(x, 2 * x, delta=0.5))
    with pytest.raises(ValueError, match="log_pred"):
        mps.kl_divergence(jnp.float32(0), jnp.float32(0))


def test_cpp_validates(backend):
    x = jnp.ones((3, 4))
    out = (jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((0,), jnp.float32))
    w = jnp.zeros((0,), jnp.float32)

    def fwd(p, t, w, out=out, **kw):
        attrs = dict(kind=np.int64(0), reduction=np.int64(2), param=np.float32(0))
        attrs.update(kw)
        return jax.ffi.ffi_call("jax_mps_loss_fwd", out)(p, t, w, **attrs)

    # An out-of-range label that Python could not see (traced) is caught by the runtime: no OOB read.
    # The CPU raises; on a GPU the labels are device data, so that sample's loss is NaN instead.
    bad = lambda: jax.jit(lambda y: mps.softmax_cross_entropy(x, y, reduction="none"))(  # noqa: E731
        jnp.array([0, 7, 1])).block_until_ready()
    if backend == "cuda":
        assert np.isnan(np.asarray(bad())).tolist() == [False, True, False]
    else:
        with pytest.raises(Exception, match="out of range"):
            bad()
    with pytest.raises(Exception, match="unknown reduction"):
        fwd(x, jnp.array([0, 1, 2], jnp.int32), w, reduction=np.int64(9))
    with pytest.raises(Exception, match="unknown loss kind"):
        fwd(x, x, w, kind=np.int64(42))
    with pytest.raises(Exception, match="target must have shape"):
        fwd(x, jnp.ones((3, 5)), w, kind=np.int64(2))
    with pytest.raises(Exception, match="weights"):
        fwd(x, x, jnp.ones((2,)), kind=np.int64(2))
    with pytest.raises(Exception, match="label_smoothing"):
        fwd(x, x, w, param=np.float32(2))
    with pytest.raises(Exception, match="output must have 3"):
        fwd(x, x, w, reduction=np.int64(0), kind=np.int64(2))
    with pytest.raises(Exception, match="lse must have 0 or 3"):
        fwd(x, x, w, out=(out[0], jax.ShapeDtypeStruct((2,), jnp.float32)))
