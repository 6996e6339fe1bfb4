"""mps.graph.optimize / explain on models written without jax_mps: values and gradients equal the
unrewritten function with every pass on or off, the rewrite applies where it should (explain and
the lowered HLO), and leaves everything else as it was."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

import jax_mps as mps
from helpers import assert_close

PASSES = [dict(convert=c, fuse=f, concat=k) for c, f, k in itertools.product((True, False), repeat=3)]


def _rand(key, shape, scale=1.0):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32) * scale


def _check(fn, args, argnums, rtol=2e-4, atol=2e-5, **opts):
    """optimize(fn) equals fn in value and in the gradient of a random projection of its outputs."""
    fast = mps.graph.optimize(fn, **opts)
    jax.tree.map(lambda a, b: assert_close(a, b, rtol, atol, "forward"), jax.jit(fast)(*args), fn(*args))
    leaves = jax.tree.leaves(fn(*args))
    cts = [_rand(100 + i, l.shape) for i, l in enumerate(leaves)]

    def proj(f):
        return lambda *a: sum(jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(f(*a)), cts))

    got = jax.jit(jax.grad(proj(fast), argnums))(*args)
    want = jax.grad(proj(fn), argnums)(*args)
    jax.tree.map(lambda a, b: assert_close(a, b, rtol, atol, "grad"), got, want)
    return fast


def _outcomes(report, op):
    return [r[2] for r in report.rows if r[1] == op]


# ---------------------------------------------------------------- a plain-lax CNN

def lax_cnn(p, x):
    dn = ("NHWC", "HWIO", "NHWC")
    y = lax.conv_general_dilated(x, p["w1"], (1, 1), "SAME", dimension_numbers=dn)
    y = jax.nn.relu(y + p["b1"])
    y = lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    y = lax.conv_general_dilated(y, p["w2"], (1, 1), ((1, 0), (0, 1)), rhs_dilation=(1, 1), dimension_numbers=dn)
    y = jax.nn.gelu(y + p["b2"].reshape(1, 1, 1, -1), approximate=False)
    y = lax.reduce_window(y, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
    y = y.reshape(y.shape[0], -1)
    y = jax.nn.leaky_relu(y @ p["d"] + p["db"], 0.2)
    return jnp.tanh(y @ p["d2"])


def _lax_params():
    return {"w1": _rand(0, (3, 3, 2, 4), .3), "b1": _rand(1, (4,), .1), "w2": _rand(2, (3, 3, 4, 8), .3),
            "b2": _rand(3, (8,), .1), "d": _rand(4, (32, 16), .3), "db": _rand(5, (16,), .1),
            "d2": _rand(6, (16, 300), .3)}


@pytest.mark.parametrize("opts", PASSES, ids=lambda o: "-".join(k for k, v in o.items() if v) or "none")
def test_lax_cnn_every_pass(opts):
    p, x = _lax_params(), _rand(7, (2, 13, 13, 2))
    _check(lax_cnn, (p, x), (0, 1), **opts)


def test_lax_cnn_explain():
    r = mps.graph.explain(lax_cnn, _lax_params(), _rand(7, (2, 13, 13, 2)))
    details = [row[3] for row in r.rows]
    assert _outcomes(r, "conv_general_dilated") == ["fused", "fused"]
    assert "mps.conv2d + bias + relu" in details and "mps.conv2d + bias + gelu" in details
    assert "mps.dense + bias + leaky_relu(alpha=0.2)" in details
    assert _outcomes(r, "reduce_window_max") == ["converted"] and _outcomes(r, "reduce_window_sum") == ["converted"]
    assert "mps.dense + tanh" in details
    assert r.counts["fused"] == 4 and "conv_general_dilated" in str(r) and "counts:" in str(r)
    off = mps.graph.explain(lax_cnn, _lax_params(), _rand(7, (2, 13, 13, 2)), fuse=False)
    assert "fused" not in off.counts and off.counts["converted"] >= 8
    none = mps.graph.explain(lax_cnn, _lax_params(), _rand(7, (2, 13, 13, 2)), convert=False)
    assert "converted" not in none.counts and "fused" not in none.counts


def test_vmap_and_cache():
    p, x = _lax_params(), _rand(7, (3, 2, 13, 13, 2))
    fast = mps.graph.optimize(lax_cnn)
    assert_close(jax.vmap(fast, (None, 0))(p, x), jax.vmap(lax_cnn, (None, 0))(p, x), 2e-4, 2e-5)
    g = jax.grad(lambda p: jax.vmap(fast, (None, 0))(p, x).sum())(p)
    g0 = jax.grad(lambda p: jax.vmap(lax_cnn, (None, 0))(p, x).sum())(p)
    jax.tree.map(lambda a, b: assert_close(a, b, 2e-4, 2e-5), g, g0)
    f2 = mps.graph.optimize(lax_cnn)
    f2(p, x[0])
    f2(p, x[1])
    assert f2.cache_size() == 1
    f2(p, x[0][:1])
    assert f2.cache_size() == 2
    # Python scalars are keyed by type and sign too: 2 == 2.0 and 0.0 == -0.0 trace differently.
    mul, div = mps.graph.optimize(lambda x, s: x * s), mps.graph.optimize(lambda x, s: x / s)
    xi = jnp.arange(4, dtype=jnp.int32)
    assert mul(xi, 2).dtype == jnp.int32 and mul(xi, 2.0).dtype == jnp.float32
    assert div(jnp.ones(2), 0.0)[0] == jnp.inf and div(jnp.ones(2), -0.0)[0] == -jnp.inf


# ---------------------------------------------------------------- conversion grid

@pytest.mark.parametrize("case", [
    dict(dn=("NHWC", "HWIO", "NHWC"), stride=(2, 1), pad="SAME", rhs=(1, 1), groups=1),
    dict(dn=("NCHW", "OIHW", "NCHW"), stride=(1, 1), pad=((1, 2), (0, 1)), rhs=(2, 1), groups=1),
    dict(dn=("NHWC", "HWIO", "NHWC"), stride=(1, 2), pad="VALID", rhs=(1, 1), groups=2),
    dict(dn=("NHWC", "HWIO", "NCHW"), stride=(1, 1), pad=((-1, 1), (1, 1)), rhs=(1, 2), groups=1),
    dict(dn=("NHWC", "HWIO", "NHWC"), stride=(1, 1), pad=((1, 1), (2, 1)), rhs=(1, 1), groups=1, lhs=(2, 2)),
    dict(dn=("NWC", "WIO", "NWC"), stride=(2,), pad="SAME", rhs=(1,), groups=1),
    dict(dn=("NCW", "OIW", "NCW"), stride=(1,), pad=((2, 1),), rhs=(2,), groups=2),
    dict(dn=("NWC", "WIO", "NWC"), stride=(1,), pad=((1, 1),), rhs=(1,), groups=1, lhs=(3,)),
])
def test_conv_dimension_numbers_and_attributes(case):
    nsp = len(case["stride"])
    cin, cout, g = 4, 6, case["groups"]
    lhs_l, rhs_l, _ = case["dn"]
    x_shape = {"N": 2, "C": cin}
    w_shape = {"O": cout, "I": cin // g}
    sp = (7, 6)[:nsp]
    x = _rand(0, tuple(x_shape.get(c, 0) or sp[lhs_l.replace("N", "").replace("C", "").index(c)]
                       for c in lhs_l))
    ks = (3, 2)[:nsp]
    w = _rand(1, tuple(w_shape.get(c, 0) or ks[rhs_l.replace("O", "").replace("I", "").index(c)]
                       for c in rhs_l), .3)

    def f(x, w):
        return jax.nn.relu(lax.conv_general_dilated(x, w, case["stride"], case["pad"], lhs_dilation=case.get("lhs"),
                                                    rhs_dilation=case["rhs"], dimension_numbers=case["dn"],
                                                    feature_group_count=g))

    _check(f, (x, w), (0, 1))
    r = mps.graph.explain(f, x, w)
    assert _outcomes(r, "conv_general_dilated") == ["fused"], str(r)


@pytest.mark.parametrize("rc", [0, 1])
def test_dense_forms(rc):
    x, w = _rand(0, (2, 3, 5)), _rand(1, (5, 7) if rc == 0 else (7, 5))
    f = lambda x, w: lax.dot_general(x, w, (((2,), (rc,)), ((), ())))
    _check(f, (x, w), (0, 1))
    assert _outcomes(mps.graph.explain(f, x, w), "dot_general") == ["converted"]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NLC"])
@pytest.mark.parametrize("kind", ["max", "avg", "avg_nopad", "sum"])
def test_pool_patterns(layout, kind):
    x = _rand(0, {"NHWC": (2, 9, 8, 3), "NCHW": (2, 3, 9, 8), "NLC": (2, 9, 3)}[layout])
    if layout == "NLC":
        win, st, pad = (1, 3, 1), (1, 2, 1), ((0, 0), (1, 1), (0, 0))
    elif layout == "NHWC":
        win, st, pad = (1, 3, 3, 1), (1, 2, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    else:
        win, st, pad = (1, 1, 3, 2), (1, 1, 2, 2), ((0, 0), (0, 0), (1, 1), (0, 1))
    n = int(np.prod(win))

    def f(x):
        if kind == "max":
            return lax.reduce_window(x, -jnp.inf, lax.max, win, st, pad)
        s = lax.reduce_window(x, 0.0, lax.add, win, st, pad)
        if kind == "avg":
            return s / n
        if kind == "avg_nopad":
            return s / lax.reduce_window(jnp.ones(x.shape), 0.0, lax.add, win, st, pad)
        return s

    _check(f, (x,), (0,))
    r = mps.graph.explain(f, x)
    assert _outcomes(r, "reduce_window_max" if kind == "max" else "reduce_window_sum") == ["converted"], str(r)
    if kind == "avg_nopad":
        assert any("count_include_pad=False" in row[3] for row in r.rows)


def test_flax_pools_and_activations():
    x = _rand(0, (2, 8, 8, 300))
    acts = [jax.nn.relu, jax.nn.relu6, lambda v: jax.nn.leaky_relu(v, 0.1), lambda v: jax.nn.elu(v, 0.5),
            jax.nn.sigmoid, jax.nn.hard_sigmoid, jnp.tanh, jax.nn.softplus, jax.nn.soft_sign,
            lambda v: jax.nn.gelu(v, approximate=False), jax.nn.gelu, lambda v: jnp.where(v >= 0, v, 0.3 * v)]
    names = ["relu", "relu6", "leaky_relu(alpha=0.1)", "elu(alpha=0.5)", "sigmoid", "hard_sigmoid", "tanh",
             "softplus", "softsign", "gelu", "gelu(approximate=True)", "leaky_relu(alpha=0.3)"]
    for act, name in zip(acts, names):
        f = lambda x: nn.avg_pool(nn.max_pool(act(x), (2, 2), (2, 2)), (3, 3), padding="SAME")
        _check(f, (x,), (0,), rtol=1e-3, atol=1e-4)
        r = mps.graph.explain(f, x)
        assert any(row[3].endswith(f"({name})") for row in r.rows), (name, str(r))
        assert r.counts["converted"] == 3, (name, str(r))


# ---------------------------------------------------------------- an unmodified flax.linen model

class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=False, momentum=0.9)(nn.Conv(8, (3, 3), use_bias=False)(x)))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
        x = nn.avg_pool(x, (2, 2))
        x = nn.Dense(32)(x.reshape(x.shape[0], -1))
        return nn.Dense(5)(nn.relu(nn.LayerNorm()(x)))


def test_flax_linen_model():
    m = LinenNet()
    x = _rand(0, (4, 16, 16, 3))
    v = m.init(jax.random.key(0), x)

    def f(params, stats, x):
        y, upd = m.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return y, upd["batch_stats"]

    _check(f, (v["params"], v["batch_stats"], x), (0, 2), rtol=1e-3, atol=1e-4)
    r = mps.graph.explain(f, v["params"], v["batch_stats"], x)
    assert _outcomes(r, "batch norm (written out)") == ["fused"]
    assert _outcomes(r, "conv_general_dilated") == ["converted", "fused"]
    assert _outcomes(r, "dot_general") == ["fused", "converted"] or _outcomes(r, "dot_general") == ["fused", "fused"]
    off = mps.graph.explain(f, v["params"], v["batch_stats"], x, fuse=False)
    assert _outcomes(off, "batch norm (written out)") == ["converted"]


# ---------------------------------------------------------------- an nnx model

class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.c2 = nnx.Conv(8, 8, (3, 3), strides=2, rngs=rngs)
        self.l1 = nnx.Linear(8 * 8 * 8 // 4, 10, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.bn(self.c1(x)))
        x = nn.max_pool(jax.nn.elu(self.c2(x)), (2, 2), (2, 2))
        return self.l1(x.reshape(x.shape[0], -1))


def test_nnx_model_training_loss():
    graphdef, params, rest = nnx.split(NNXNet(nnx.Rngs(0)), nnx.Param, ...)
    x, y = _rand(1, (4, 16, 16, 3)), jnp.array([1, 2, 3, 4])

    def loss(params, rest, x):
        m = nnx.merge(graphdef, params, rest)
        out = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        return out, nnx.state(m, nnx.BatchStat)

    _check(loss, (params, rest, x), (0, 1, 2), rtol=1e-3, atol=1e-4)
    r = mps.graph.explain(loss, params, rest, x)
    assert r.counts["fused"] >= 3, str(r)


# ---------------------------------------------------------------- an Inception block with a concat

def inception_block(p, x):
    dn = ("NHWC", "HWIO", "NHWC")
    conv = lambda x, w, b: jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn) + b)
    b1 = conv(x, p["w1"], p["b1"])
    b3 = conv(conv(x, p["w2"], p["b2"]), p["w3"], p["b3"])
    bp = conv(nn.avg_pool(x, (3, 3), (1, 1), "SAME"), p["w4"], p["b4"])
    return jnp.concatenate([b1, b3, bp], axis=-1)


def test_inception_block():
    p = {"w1": _rand(0, (1, 1, 4, 3), .3), "b1": _rand(1, (3,)), "w2": _rand(2, (1, 1, 4, 2), .3),
         "b2": _rand(3, (2,)), "w3": _rand(4, (3, 3, 2, 5), .3), "b3": _rand(5, (5,)),
         "w4": _rand(6, (1, 1, 4, 2), .3), "b4": _rand(7, (2,))}
    x = _rand(8, (2, 7, 7, 4))
    for opts in PASSES:
        _check(inception_block, (p, x), (0, 1), **opts)
    r = mps.graph.explain(inception_block, p, x)
    assert _outcomes(r, "conv_general_dilated") == ["fused"] * 4
    assert _outcomes(r, "concatenate") == ["left to XLA"]
    assert "channel concat of 3/3 runtime outputs" in str(r)


# ---------------------------------------------------------------- mixed supported and unsupported ops

def mixed(p, x):
    y = lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.silu(y)                                                          # not in the activation list
    z = lax.conv_general_dilated(y[..., None], p["w3"], (1, 1, 1), "SAME",      # 3-D: left to XLA
                                 dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))[..., 0]
    t = z.reshape(z.shape[0], -1, z.shape[-1])
    att = jnp.einsum("bqc,bkc->bqk", t, t)                                      # batched dot: left to XLA
    h = nn.LayerNorm().apply({"params": {"scale": jnp.ones(att.shape[-1]), "bias": jnp.zeros(att.shape[-1])}}, att)
    h = lax.cumsum(h, axis=1)
    h, _ = lax.scan(lambda c, v: (c + jnp.tanh(v), c), jnp.zeros(h.shape[-1]), h[0])
    out = jax.nn.relu(jax.jit(lambda t: t @ p["d"])(t))                         # inside a jit: converted
    return out.sum() + h.sum() + jnp.sort(z.ravel())[:3].sum()


def test_mixed_supported_and_unsupported():
    p = {"w": _rand(0, (3, 3, 2, 4), .3), "w3": _rand(1, (3, 3, 3, 1, 1), .3), "d": _rand(2, (4, 300), .3)}
    x = _rand(3, (2, 5, 5, 2))
    _check(mixed, (p, x), (0, 1), rtol=1e-3, atol=1e-4)
    r = mps.graph.explain(mixed, p, x)
    convs = [row for row in r.rows if row[1] == "conv_general_dilated"]
    assert convs[0][2] == "converted" and convs[1][2] == "left to XLA" and "3-D" in convs[1][3]
    dots = [row for row in r.rows if row[1] == "dot_general"]
    assert any(row[2] == "left to XLA" for row in dots)
    assert any(row[0].endswith("/") and row[2] == "converted" for row in dots), str(r)   # the jit body
    assert any(row[1] == "scan" and row[2] == "left to XLA" for row in r.rows)
    assert r.other_ops["logistic"] == 1  # silu's sigmoid stays XLA's (silu is not a runtime activation)


def test_custom_vjp_and_custom_jvp_bodies():
    @jax.custom_vjp
    def f(x, w):
        return jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))

    def f_fwd(x, w):
        return f(x, w), (x, w)

    def f_bwd(res, g):  # the user's rule: must be used as written
        x, w = res
        return 2 * x * g.sum(), 3 * w * g.sum()

    f.defvjp(f_fwd, f_bwd)

    @jax.custom_jvp
    def h(x):
        return jnp.tanh(x) * 2

    h.defjvp(lambda p, t: (h(p[0]), t[0] * 5))
    x, w = _rand(0, (2, 6, 6, 3)), _rand(1, (3, 3, 3, 4))
    g = lambda x, w: h(f(x, w))
    fast = mps.graph.optimize(g)
    assert_close(fast(x, w), g(x, w), 1e-4, 1e-5)
    gx, gw = jax.grad(lambda x, w: fast(x, w).sum(), (0, 1))(x, w)
    n = 2 * 6 * 6 * 4  # h's rule sends 5 to every output of f
    assert_close(gx, 2 * x * 5 * n, 1e-5, 1e-5)
    assert_close(gw, 3 * w * 5 * n, 1e-5, 1e-5)
    r = mps.graph.explain(g, x, w)
    assert any(row[1] == "conv_general_dilated" and row[2] == "fused" for row in r.rows), str(r)
    text = jax.jit(fast).lower(x, w).as_text()
    assert "jax_mps_conv_fwd" in text and "convolution" not in text


def test_rejected_configuration_is_left_as_it_was():
    # max pool with padding as large as the window: jax_mps rejects it; XLA's op stays.
    x = _rand(0, (1, 6, 6, 2))
    f = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 1, 1), ((0, 0), (2, 2), (0, 0), (0, 0)))
    _check(f, (x,), (0,))
    r = mps.graph.explain(f, x)
    assert _outcomes(r, "reduce_window_max") == ["left to XLA"] and "rejected" in str(r)


def test_bad_options():
    with pytest.raises(TypeError, match="fuse"):
        mps.graph.optimize(lax_cnn, fuse=1)
    with pytest.raises(TypeError, match="callable"):
        mps.graph.optimize(3)
    with pytest.raises(TypeError, match="callable"):
        mps.graph.explain(3, jnp.ones(3))


# ---------------------------------------------------------------- HLO of optimized training steps

def _step_text(loss, params, *batch):
    opt = optax.sgd(0.1)

    @jax.jit
    def step(params, s, *batch):
        l, g = jax.value_and_grad(loss)(params, *batch)
        u, s = opt.update(g, s, params)
        return optax.apply_updates(params, u), s, l

    lowered = step.lower(params, opt.init(params), *batch)
    return lowered.as_text(), lowered.compile().as_text()


def test_hlo_conv_bias_relu_is_one_call():
    def loss(p, x):
        y = jax.nn.relu(lax.conv_general_dilated(x, p["w"], (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"])
        return nn.max_pool(y, (2, 2), (2, 2)).sum()

    p, x = {"w": _rand(0, (3, 3, 2, 4)), "b": _rand(1, (4,))}, _rand(2, (2, 8, 8, 2))
    shlo, hlo = _step_text(mps.graph.optimize(loss), p, x)
    assert shlo.count("@jax_mps_conv_fwd") == 1 and "@jax_mps_activation" not in shlo
    for t in ("conv_bwd_weights", "max_pool_fwd", "max_pool_bwd"):  # no dx: x is not differentiated
        assert f"@jax_mps_{t}" in shlo, t
    for text in (shlo, hlo):
        for op in ("convolution", "reduce_window", "reduce-window", "select_and_scatter", "select-and-scatter"):
            assert op not in text, op


def test_hlo_flax_training_steps():
    m = LinenNet()
    x = _rand(0, (4, 16, 16, 3))
    v = m.init(jax.random.key(0), x)

    def loss(params, stats, x):
        y, upd = m.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return y.sum()

    shlo, hlo = _step_text(mps.graph.optimize(loss), v["params"], v["batch_stats"], x)
    for t in ("conv_fwd", "conv_bwd_data", "batch_norm_fwd", "batch_norm_bwd", "max_pool_bwd", "avg_pool_bwd",
              "dense_fwd", "dense_bwd_weights"):
        assert f"@jax_mps_{t}" in shlo, t
    for text in (shlo, hlo):
        for op in ("convolution", "reduce_window", "reduce-window", "select_and_scatter", "select-and-scatter"):
            assert op not in text, op
    # unoptimized, the same step is XLA's
    shlo0, _ = _step_text(loss, v["params"], v["batch_stats"], x)
    assert "convolution" in shlo0 and "jax_mps" not in shlo0

    graphdef, params, rest = nnx.split(NNXNet(nnx.Rngs(0)), nnx.Param, ...)

    def nloss(params, rest, x):
        return nnx.merge(graphdef, params, rest)(x).sum()

    shlo, hlo = _step_text(mps.graph.optimize(nloss), params, rest, x)
    assert "@jax_mps_conv_fwd" in shlo and "@jax_mps_batch_norm_bwd" in shlo
    for text in (shlo, hlo):
        for op in ("convolution", "reduce_window", "select_and_scatter"):
            assert op not in text, op


@jax.custom_vjp
def _reverse_grad(x):
    return x


_reverse_grad.defvjp(lambda x: (x, None), lambda _, g: (-g,))


@jax.custom_jvp
def _straight_through_relu(x):
    return jnp.maximum(x, 0.0)


_straight_through_relu.defjvp(lambda p, t: (_straight_through_relu(p[0]), t[0]))

# Element-wise code that agrees with an activation on ordinary values (or on values only) but not
# at ties, tiny / huge magnitudes, inf or NaN, or not in its gradient rule: left exactly as written.
LOOKALIKES = {
    "stop_gradient": lambda x: lax.stop_gradient(x) * x,
    "custom_vjp identity": _reverse_grad,
    "custom_jvp relu": _straight_through_relu,
    "clip(-30, 30)": lambda x: jnp.clip(20 * x, -30, 30),
    "maximum(x, 1e-6)": lambda x: jnp.log(jnp.maximum(x, 1e-6)),
    "sigmoid + 1e-6": lambda x: jnp.log(jax.nn.sigmoid(x * 50) + 1e-6),
    "softplus + 1e-6": lambda x: jnp.log(jax.nn.softplus(x * 50) + 1e-6),
    "nan_to_num": jnp.nan_to_num,
    "maximum(x, 0)": lambda x: jnp.maximum(x, 0.0),       # gradient 0.5 at 0 (jax.nn.relu's: 0)
    "where(x > 0)": lambda x: jnp.where(x > 0, x, 0.1 * x),  # gradient 0.1 at 0 (jax.nn.leaky_relu's: 1)
    "clip(0, 6)": lambda x: jnp.clip(x, 0.0, 6.0),
}


@pytest.mark.parametrize("name", list(LOOKALIKES))
def test_lookalike_activations_stay(name):
    f = LOOKALIKES[name]
    x = _rand(0, (16, 32), 4.0).at[0, :4].set(0.0).at[1, :3].set(jnp.array([jnp.nan, jnp.inf, -jnp.inf]))
    fast = mps.graph.optimize(f)
    r = mps.graph.explain(f, x)
    assert not any(row[2] in ("converted", "fused") and row[1] != "custom_jvp_call" and "relu" in row[3]
                   and name in ("maximum(x, 0)", "custom_jvp relu") for row in r.rows), str(r)
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(f(x)), rtol=1e-5, atol=1e-6)
    g = lambda h: jax.grad(lambda v: jnp.sum(jnp.where(jnp.isfinite(x), h(v), 0.0)))(x)
    np.testing.assert_allclose(np.asarray(g(fast)), np.asarray(g(f)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("f", [lambda x: x * 0.99, lambda x: 1.02 * jnp.tanh(x), lambda x: jax.nn.relu(x) * 1.015,
                               lambda x: x * 1.00001])
def test_scaled_activation_keeps_its_scale(f, dtype):
    # A constant scale within the half types' per-point tolerance is not absorbed into the
    # activation (x * 0.99 is not leaky_relu(0.99), whose positive side is unscaled).
    x = jnp.linspace(-4, 4, 512, dtype=dtype)
    assert_close(mps.graph.optimize(f)(x).astype(jnp.float32), f(x).astype(jnp.float32), 1e-2 if dtype != jnp.float32
                 else 1e-6, 0.0)
    assert "leaky_relu" not in str(mps.graph.explain(f, x))


def test_dense_then_stop_gradient_is_not_fused():
    x, w = _rand(0, (8, 16)), _rand(1, (16, 300))
    f = lambda x, w: lax.stop_gradient(x @ w) * (x @ w)
    _check(f, (x, w), (0, 1))
    r = mps.graph.explain(f, x, w)
    assert not any("leaky" in row[3] for row in r.rows), str(r)
