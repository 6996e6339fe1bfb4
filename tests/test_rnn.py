import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_mps as mps
import reference as ref
from helpers import assert_close

INIT = {"lstm": mps.init_lstm, "gru": mps.init_gru, "tanh": mps.init_rnn, "relu": mps.init_rnn}


def _run(cell, x, params, h0=None, c0=None, seq_lengths=None, time_major=False):
    """jax_mps in the reference's (y, h_n[, c_n]) form."""
    kw = dict(seq_lengths=seq_lengths, time_major=time_major)
    if cell == "lstm":
        y, (h, c) = mps.lstm(x, params, h0, c0, **kw)
        return y, h, c
    if cell == "gru":
        return mps.gru(x, params, h0, **kw)
    return mps.rnn(x, params, h0, activation=cell, **kw)


def _ref(cell, *args, **kw):
    y, h, c = ref.rnn_reference(cell, *args, **kw)
    return (y, h, c) if cell == "lstm" else (y, h)


def _case(cell, L, bidir, T, B, I, H, states, lens, time_major, seed=0):
    rng = np.random.default_rng(seed)
    D = 2 if bidir else 1
    params = INIT[cell](jax.random.key(seed), I, H, L, bidir)
    if cell == "relu":  # keep relu RNNs from blowing up over long sequences
        params = jax.tree.map(lambda a: a * 0.5, params)
    x = jnp.asarray(rng.normal(size=(T, B, I) if time_major else (B, T, I)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(L * D, B, H)) * 0.5, jnp.float32) if states else None
    c0 = jnp.asarray(rng.normal(size=(L * D, B, H)) * 0.5, jnp.float32) if states and cell == "lstm" else None
    if lens == "mixed":  # 0, 1, T and values between
        lens = jnp.asarray([[0, 1, T][b % 3] if b < 3 else rng.integers(0, T + 1) for b in range(B)], jnp.int32)
    elif lens == "full":
        lens = jnp.full((B,), T, jnp.int32)
    return params, x, h0, c0, lens


def _tree_close(a, b, rtol, atol, what):
    jax.tree.map_with_path(lambda p, u, v: assert_close(u, v, rtol, atol, f"{what}{jax.tree_util.keystr(p)}"), a, b)


def _check(cell, params, x, h0, c0, lens, time_major, rtol=2e-4, atol=2e-5):
    """Forward and the VJP of a random cotangent w.r.t. x, params, h0 (and c0) against the reference."""
    kw = dict(seq_lengths=lens, time_major=time_major)
    # Everything under jit: one compile per case instead of eager op-by-op scans.
    out = jax.jit(lambda *a: _run(cell, *a, **kw))(x, params, h0, c0)
    want = jax.jit(lambda *a: _ref(cell, *a, **kw))(x, params, h0, c0)
    _tree_close(out, want, rtol, atol, "forward")
    leaves, tdef = jax.tree.flatten(want)
    ct = jax.tree.unflatten(tdef, [jax.random.normal(jax.random.key(7 + i), l.shape) for i, l in enumerate(leaves)])

    def grad(fn):
        def loss(x, params, h0, c0):
            return sum(jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(fn(x, params, h0, c0)), jax.tree.leaves(ct)))
        args = (x, params, h0, c0)
        argnums = tuple(i for i, a in enumerate(args) if a is not None)
        return jax.jit(jax.grad(loss, argnums=argnums))(*args)

    _tree_close(grad(lambda *a: _run(cell, *a, **kw)), grad(lambda *a: _ref(cell, *a, **kw)), rtol, atol, "grad")


# (L, bidirectional, T, B, I, H, h0/c0 given, seq_lengths, time_major): wide in attributes, small in size.
GRID = [
    (1, False, 1, 1, 3, 5, False, None, False),
    (1, True, 5, 4, 3, 6, True, "mixed", False),
    (2, False, 6, 17, 9, 8, False, "full", True),
    (2, True, 7, 5, 4, 6, True, "mixed", True),
    (3, True, 4, 3, 5, 3, True, "mixed", False),
    (3, False, 3, 2, 2, 7, False, "mixed", True),
    (1, False, 50, 3, 4, 5, True, "mixed", False),
    (2, True, 5, 17, 4, 6, True, "mixed", False),  # B >= 16: two threads run separate batch slices
]


# Every grid row for the LSTM, a covering subset for the other cells (keeps the file fast).
CASES = ([("lstm", c) for c in GRID] + [("gru", GRID[i]) for i in (0, 1, 3, 4, 6, 7)]
         + [("tanh", GRID[i]) for i in (1, 3, 5)] + [("relu", GRID[i]) for i in (0, 2, 4)])


@pytest.mark.parametrize("cell,cfg", CASES, ids=lambda c: c if isinstance(c, str) else "L{}{}_T{}B{}I{}H{}_{}_{}_{}".format(
    c[0], "bi" if c[1] else "uni", *c[2:6], "h0" if c[6] else "noh0", c[7], "tm" if c[8] else "bm"))
def test_matches_reference(cell, cfg):
    L, bidir, T, B, I, H, states, lens, tm = cfg
    params, x, h0, c0, lens = _case(cell, L, bidir, T, B, I, H, states, lens, tm)
    _check(cell, params, x, h0, c0, lens, tm)


def test_relu_nan_as_torch():
    # A NaN input poisons its sample's outputs and the weight gradients; torch's relu RNN passes
    # the gradient through a NaN activation, so the sample's dx stays finite (jax.nn.relu's: 0).
    params, x, h0, c0, lens = _case("relu", 1, False, 5, 3, 3, 4, False, None, False, seed=11)
    x = x.at[0, 2, 1].set(jnp.nan)
    _check("relu", params, x, h0, c0, lens, False)
    dx = jax.grad(lambda x: mps.rnn(x, params, activation="relu")[0].sum())(x)
    assert np.isfinite(np.asarray(dx)).all()

@pytest.mark.parametrize("cell", ["lstm", "gru", "tanh", "relu"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_w_hh_zero_state(cell, bad):
    # With the default zero state the CPU skips the first step's recurrent GEMM; 0 * NaN and 0 * inf
    # must still poison that step's gate column, as the GEMM (lax, torch) does.
    params, x, h0, c0, lens = _case(cell, 1, True, 4, 3, 3, 4, False, None, False, seed=13)
    params[0][1]["w_hh"] = params[0][1]["w_hh"].at[1, 2].set(bad)
    _check(cell, params, x, h0, c0, lens, False)


@pytest.mark.parametrize("cell", ["lstm", "gru", "tanh", "relu"])
def test_check_grads(cell):
    params, x, h0, c0, lens = _case(cell, 2, True, 3, 2, 3, 2, True, None, False, seed=3)
    lens = jnp.asarray([3, 2], jnp.int32)
    if cell == "lstm":
        f = lambda x, p, h0, c0: _run(cell, x, p, h0, c0, seq_lengths=lens)
        args = (x, params, h0, c0)
    else:
        f = lambda x, p, h0: _run(cell, x, p, h0, seq_lengths=lens)
        args = (x, params, h0)
    check_grads(f, args, order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("cell", ["lstm", "gru", "tanh", "relu"])
def test_implicit_zero_state_backward(cell):
    # Without h0 / c0 the backward skips each chain's last recurrent GEMM (dh0 is unread): the
    # gradients of x and the weights are those of passing the zeros explicitly (dh0 computed).
    params, x, _, _, lens = _case(cell, 2, True, 5, 4, 3, 4, False, "mixed", False, seed=5)
    zeros = jnp.zeros((4, 4, 4), jnp.float32)

    def loss(x, p, given):
        state = dict(h0=zeros, c0=zeros if cell == "lstm" else None) if given else dict(h0=None, c0=None)
        out = _run(cell, x, p, state["h0"], state["c0"], seq_lengths=lens)
        return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))

    g = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    _tree_close(g(x, params, False), g(x, params, True), 1e-6, 1e-7, "grad")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_semantics(cell):
    # Outputs past each length are exactly zero; length 0 gives h_n = h0; the reverse direction of a
    # sequence equals running the reversed valid prefix.
    T, B, I, H = 6, 3, 2, 4
    params, x, h0, c0, _ = _case(cell, 1, True, T, B, I, H, True, None, False)
    lens = jnp.asarray([0, 3, 6], jnp.int32)
    out = _run(cell, x, params, h0, c0, seq_lengths=lens)
    y, hn = out[0], out[1]
    assert np.all(np.asarray(y[0]) == 0) and np.all(np.asarray(y[1, 3:]) == 0)
    assert_close(hn[:, 0], h0[:, 0], 0, 0)
    if cell == "lstm":
        assert_close(out[2][:, 0], c0[:, 0], 0, 0)
    # Sequence 1 alone, truncated to its length, gives the same outputs and states.
    c_one = None if c0 is None else c0[:, 1:2]
    one = _run(cell, x[1:2, :3], params, h0[:, 1:2], c_one)
    assert_close(y[1:2, :3], one[0], 1e-5, 1e-6)
    assert_close(hn[:, 1:2], one[1], 1e-5, 1e-6)


def test_init():
    p = mps.init_lstm(jax.random.key(0), 5, 7, num_layers=2, bidirectional=True)
    assert len(p) == 2 and len(p[0]) == 2
    assert p[0][0]["w_ih"].shape == (5, 28) and p[1][1]["w_ih"].shape == (14, 28)
    assert p[0][1]["w_hh"].shape == (7, 28) and p[1][0]["b_ih"].shape == (28,) and p[1][0]["b_hh"].shape == (28,)
    bound = 1 / np.sqrt(7)
    leaves = np.concatenate([np.ravel(a) for a in jax.tree.leaves(p)])
    assert np.abs(leaves).max() <= bound and np.abs(leaves).max() > 0.9 * bound
    assert abs(leaves.mean()) < 0.05
    g = mps.init_gru(jax.random.key(1), 3, 4, dtype=jnp.bfloat16)
    assert g[0][0]["w_hh"].shape == (4, 12) and g[0][0]["w_hh"].dtype == jnp.bfloat16
    r = mps.init_rnn(jax.random.key(2), 3, 4, num_layers=3, activation="relu")
    assert len(r) == 3 and r[2][0]["w_ih"].shape == (4, 4)
    # Distinct keys per tensor.
    assert not np.allclose(p[0][0]["w_ih"][:5, :7], p[0][1]["w_ih"][:5, :7])


def test_jit_vmap_value_and_grad_low_precision():
    params, x, h0, c0, lens = _case("lstm", 2, True, 4, 3, 3, 4, True, "mixed", False)
    f = jax.jit(lambda x, p, h0, c0, lens: mps.lstm(x, p, h0, c0, seq_lengths=lens))
    y, (hn, cn) = f(x, params, h0, c0, lens)
    want = ref.rnn_reference("lstm", x, params, h0, c0, lens)
    assert_close(y, want[0], 2e-4, 2e-5)
    assert_close(cn, want[2], 2e-4, 2e-5)
    # vmap over an extra leading axis of x (one runtime call per element).
    xs = jnp.stack([x, 2 * x])
    yv = jax.vmap(lambda xx: mps.lstm(xx, params, seq_lengths=lens)[0])(xs)
    for i in range(2):
        assert_close(yv[i], ref.rnn_reference("lstm", xs[i], params, seq_lengths=lens)[0], 2e-4, 2e-5)
    # value_and_grad under jit w.r.t. params only.
    loss = lambda p: jnp.sum(mps.gru(x, p, seq_lengths=lens)[0] ** 2)
    gp = mps.init_gru(jax.random.key(1), 3, 4)
    v, g = jax.jit(jax.value_and_grad(loss))(gp)
    rv, rg = jax.jit(jax.value_and_grad(lambda p: jnp.sum(ref.rnn_reference("gru", x, p, seq_lengths=lens)[0] ** 2)))(gp)
    assert_close(v, rv, 2e-4, 2e-5)
    _tree_close(g, rg, 2e-4, 2e-5, "grad")
    for dt in (jnp.float16, jnp.bfloat16):
        pl = jax.tree.map(lambda a: a.astype(dt), params)
        y, (hn, cn) = mps.lstm(x.astype(dt), pl, seq_lengths=lens)
        assert y.dtype == dt and hn.dtype == dt and cn.dtype == dt
        assert_close(y.astype(jnp.float32), ref.rnn_reference("lstm", x, params, seq_lengths=lens)[0], 3e-2, 3e-2)
        gx = jax.grad(lambda xx: jnp.sum(mps.lstm(xx, pl)[0].astype(jnp.float32)))(x.astype(dt))
        assert gx.dtype == dt and np.all(np.isfinite(np.asarray(gx, np.float32)))


def test_bad_input():
    p = mps.init_lstm(jax.random.key(0), 3, 4, num_layers=2)
    x = jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match="rank 3"):
        mps.lstm(jnp.ones((5, 3)), p)
    with pytest.raises(TypeError, match="float32"):
        mps.lstm(jnp.ones((2, 5, 3), jnp.int32), p)
    with pytest.raises(ValueError, match=r"params\[0\]\[0\]\['w_ih'\].*\(3, 16\)"):
        mps.lstm(jnp.ones((2, 5, 6)), p)  # I mismatch with params
    with pytest.raises(ValueError, match=r"h0.*\(2, 2, 4\)"):
        mps.lstm(x, p, h0=jnp.ones((1, 2, 4)))
    with pytest.raises(ValueError, match=r"c0.*\(2, 2, 4\)"):
        mps.lstm(x, p, c0=jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"seq_lengths.*\[0, 5\]"):
        mps.lstm(x, p, seq_lengths=jnp.asarray([6, 1]))
    with pytest.raises(ValueError, match=r"seq_lengths.*\[0, 5\]"):
        mps.lstm(x, p, seq_lengths=np.asarray([-1, 1]))
    with pytest.raises(TypeError, match="seq_lengths.*integer"):
        mps.lstm(x, p, seq_lengths=jnp.asarray([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"seq_lengths.*\(2,\)"):
        mps.lstm(x, p, seq_lengths=jnp.asarray([1, 2, 3]))
    # Malformed parameter trees.
    with pytest.raises(TypeError, match="params"):
        mps.lstm(x, p[0][0])
    with pytest.raises(TypeError, match="params"):
        mps.lstm(x, [p[0][0]])
    with pytest.raises(ValueError, match="keys"):
        mps.lstm(x, [[{"w_ih": p[0][0]["w_ih"]}]])
    with pytest.raises(ValueError, match="direction"):
        mps.lstm(x, [p[0], p[1] * 2])
    with pytest.raises(ValueError, match=r"w_hh.*\(4, 16\)"):
        mps.lstm(x, [[dict(p[0][0], w_hh=jnp.ones((4, 12)))]])
    with pytest.raises(ValueError, match=r"w_ih.*\(3, 12\)"):
        mps.gru(x, p)  # LSTM params given to a GRU
    with pytest.raises(ValueError, match="activation"):
        mps.rnn(x, mps.init_rnn(jax.random.key(0), 3, 4), activation="sigmoid")
    with pytest.raises(ValueError, match="hidden_size"):
        mps.init_lstm(jax.random.key(0), 3, 0)


def test_cpp_validates(backend):
    # The runtime re-checks: lengths out of range under jit (not concrete at trace time) and
    # inconsistent shapes/attributes through a raw ffi_call give errors, not crashes.
    p = mps.init_rnn(jax.random.key(0), 3, 4)
    x = jnp.ones((2, 5, 3))
    bad = lambda: jax.block_until_ready(jax.jit(lambda l: mps.rnn(x, p, seq_lengths=l))(jnp.asarray([9, 1])))  # noqa: E731
    if backend == "cuda":
        # On a GPU the lengths are device data: the bad sequence's outputs and state are NaN instead.
        y, hn = bad()
        assert np.isnan(np.asarray(y[0])).all() and np.isfinite(np.asarray(y[1])).all()
        assert np.isnan(np.asarray(hn[:, 0])).all() and np.isfinite(np.asarray(hn[:, 1])).all()
    else:
        with pytest.raises(Exception, match=r"seq_lengths\[0\] = 9"):
            bad()
    w = [p[0][0][k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in [(2, 5, 4), (1, 2, 4), (0,), (2 * 5 * 8,)]]
    call = lambda *a, **kw: jax.ffi.ffi_call("jax_mps_rnn_fwd", specs)(*a, **{
        k: np.int64(v) for k, v in dict(dict(cell=2, num_layers=1, num_dirs=1, hidden=4, time_major=0, precision=0), **kw).items()})
    h0, c0, lens = jnp.zeros((1, 2, 4)), jnp.zeros((0,)), jnp.asarray([5, 5], jnp.int32)
    jax.block_until_ready(call(x, h0, c0, lens, *w))  # consistent: runs
    with pytest.raises(Exception, match="weight"):
        jax.block_until_ready(call(x, h0, c0, lens, w[1], w[0], w[2], w[3]))
    with pytest.raises(Exception, match="weight arrays"):
        jax.block_until_ready(call(x, jnp.zeros((2, 2, 4)), c0, lens, *w, num_layers=2))
    with pytest.raises(Exception, match="h0"):
        jax.block_until_ready(call(x, h0, c0, lens, *w, hidden=5))
    with pytest.raises(Exception, match="cell"):
        jax.block_until_ready(call(x, h0, c0, lens, *w, cell=7))
    with pytest.raises(Exception, match="precision"):
        jax.block_until_ready(call(x, h0, c0, lens, *w, precision=2))


@pytest.mark.parametrize("setting, want", [("default", "0"), ("tensorfloat32", "0"), ("highest", "1"),
                                           ("float32", "1")])
def test_precision_follows_default_matmul_precision(setting, want):
    # The float32 GEMMs' precision (TF32 allowed or full float32 on CUDA) is read at trace time
    # from jax.default_matmul_precision and reaches both passes.
    p = mps.init_lstm(jax.random.key(0), 3, 4)
    x = jnp.ones((2, 5, 3))
    with jax.default_matmul_precision(setting):
        text = jax.jit(jax.value_and_grad(lambda x: jnp.sum(mps.lstm(x, p)[0]))).lower(x).as_text()
    assert re.findall(r"precision = (\d+) : i64", text) == [want, want]
