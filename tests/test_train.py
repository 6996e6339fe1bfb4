"""jax_mps.train: bounded async dispatch, prefetch, progress, early stop, checkpoint + resume."""
import io
import threading
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_mps as mps

pytest.importorskip("tqdm")
pytest.importorskip("orbax.checkpoint")

N_TRAIN, N_TEST, D, H, C, BS = 256, 128, 8, 16, 3, 32


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(C, D)).astype(np.float32) * 3
    y = rng.integers(0, C, size=n).astype(np.int32)
    x = centers[y] + rng.normal(size=(n, D)).astype(np.float32)
    return x, y


X_TRAIN, Y_TRAIN = _blobs(N_TRAIN, 0)
X_TEST, Y_TEST = _blobs(N_TEST, 1)
OPT = optax.adam(1e-2)


def _init(seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {"w1": jax.random.normal(k1, (D, H)) * 0.3, "b1": jnp.zeros(H),
              "w2": jax.random.normal(k2, (H, C)) * 0.3, "b2": jnp.zeros(C)}
    return params, OPT.init(params)


def _logits(params, x):
    return mps.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _loss(params, x, y):
    p = mps.softmax(_logits(params, x))
    return -jnp.mean(jnp.log(jnp.take_along_axis(p, y[:, None], axis=1) + 1e-9))


@partial(jax.jit, donate_argnums=0)
def _step(state, batch):
    params, opt_state = state
    x, y = batch
    loss, grads = jax.value_and_grad(_loss)(params, x, y)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss


def _batches(epoch):
    perm = np.random.default_rng(epoch).permutation(N_TRAIN)
    return [(X_TRAIN[perm[i:i + BS]], Y_TRAIN[perm[i:i + BS]]) for i in range(0, N_TRAIN, BS)]


@jax.jit
def _eval_step(state, batch):
    x, y = batch
    return {"accuracy": jnp.sum(jnp.argmax(_logits(state[0], x), -1) == y), "count": y.shape[0]}


def _eval(state):
    return mps.train.evaluate(_eval_step, state, [(X_TEST[i:i + 64], Y_TEST[i:i + 64]) for i in range(0, N_TEST, 64)])


def test_fit_trains_and_evaluates():
    state, hist = mps.train.fit(_step, _init(), _batches, epochs=3, eval_fn=_eval, progress=False)
    assert len(hist) == 3 and hist.total_steps == 3 * N_TRAIN // BS
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist[-1]["accuracy"] > 0.9 and hist[-1]["count"] == N_TEST
    assert hist[-1]["samples"] == N_TRAIN and hist[-1]["samples_per_sec"] > 0
    assert not hist.reached_target


def test_early_stop_at_target():
    calls = []

    def eval_fn(state):
        calls.append(1)
        return _eval(state)

    _, hist = mps.train.fit(_step, _init(), _batches, epochs=50, eval_fn=eval_fn, target_accuracy=0.9,
                            progress=False)
    assert hist.reached_target
    assert len(hist) == len(calls) < 50
    assert hist[-1]["accuracy"] >= 0.9
    assert all(a < 0.9 for a in hist["accuracy"][:-1])


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    full, hist_full = mps.train.fit(_step, _init(), _batches, epochs=4, progress=False)
    ckpt = tmp_path / "ckpt"
    _, h1 = mps.train.fit(_step, _init(), _batches, epochs=2, checkpoint_dir=ckpt, progress=False)
    assert h1.resumed_from is None and mps.train.latest_checkpoint(ckpt) == 2
    # A fresh process would start from a fresh init: the checkpoint must win over it.
    resumed, h2 = mps.train.fit(_step, _init(seed=7), _batches, epochs=4, checkpoint_dir=ckpt, progress=False)
    assert h2.resumed_from == 2 and len(h2) == 4 and h2.total_steps == hist_full.total_steps
    np.testing.assert_allclose(h2["loss"], hist_full["loss"], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # The optimizer state comes back with its optax structure (count included).
    assert int(resumed[1][0].count) == hist_full.total_steps
    assert mps.train.latest_checkpoint(ckpt) == 4


def test_resume_after_target_reached_returns_at_once(tmp_path):
    _, h1 = mps.train.fit(_step, _init(), _batches, epochs=50, eval_fn=_eval, target_accuracy=0.9,
                          checkpoint_dir=tmp_path, progress=False)
    calls = []
    _, h2 = mps.train.fit(lambda s, b: calls.append(1), _init(), _batches, epochs=50, eval_fn=_eval,
                          target_accuracy=0.9, checkpoint_dir=tmp_path, progress=False)
    assert h2.reached_target and not calls and len(h2) == len(h1)


def test_save_restore_checkpoint_roundtrip(tmp_path):
    state = _init()
    mps.train.save_checkpoint(tmp_path, 5, state, {"note": "x"})
    restored, meta = mps.train.restore_checkpoint(tmp_path, _init(seed=3))
    assert meta == {"note": "x"}
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError):
        mps.train.restore_checkpoint(tmp_path / "none", state)


@pytest.mark.parametrize("max_in_flight", [1, 2, 3])
def test_on_step_lags_dispatch_by_max_in_flight(max_in_flight):
    # on_step(s) fires when the loop has waited for step s; it must wait for step i - max_in_flight
    # right before dispatching step i, and not earlier (no per-step blocking).
    dispatched, retired_at = [], {}

    def step(state, batch):
        dispatched.append(len(dispatched))
        return _step(state, batch)

    def on_step(s, loss):
        retired_at[s] = len(dispatched)

    n = N_TRAIN // BS
    mps.train.fit(step, _init(), _batches, epochs=2, max_in_flight=max_in_flight, on_step=on_step,
                  progress=False)
    assert sorted(retired_at) == list(range(2 * n))
    for epoch in range(2):
        for s in range(epoch * n, (epoch + 1) * n):
            expected = min(s + max_in_flight, (epoch + 1) * n)  # the epoch's tail drains
            assert retired_at[s] == expected, (s, retired_at[s], expected)


@jax.jit
def _slow_step(state, batch):
    # ~10 ms of real device work so the host can run ahead if it wants to.
    m = state
    for _ in range(8):
        m = jnp.tanh(m @ m) * 0.5
    return m, jnp.sum(m) + jnp.sum(batch)


# The "slow" step is sized for a CPU: an H200 finishes it before the next dispatch, so the
# run-ahead half of the check cannot be observed there.
@pytest.mark.cpu_only
def test_device_never_more_than_two_steps_ahead():
    # Observe real completion with Array.is_ready(): before step i is dispatched, step i-2 is done;
    # and the loop does run ahead (step i-1 is usually still running when step i goes out).
    outs = []
    pending_at_dispatch = []

    def step(state, batch):
        pending_at_dispatch.append([j for j, o in enumerate(outs) if not o.is_ready()])
        state, loss = _slow_step(state, batch)
        outs.append(loss)
        return state, loss

    data = [np.full((4,), i, np.float32) for i in range(30)]
    state0 = jnp.eye(384, dtype=jnp.float32)
    _slow_step(state0, data[0])[1].block_until_ready()  # compile outside the measurement
    mps.train.fit(step, state0, data, epochs=1, progress=False)
    assert len(pending_at_dispatch) == 30
    for i, pending in enumerate(pending_at_dispatch):
        assert all(j >= i - 1 for j in pending), (i, pending)  # at most 2 in flight incl. step i
    assert sum(1 for p in pending_at_dispatch if p) >= 5, "loop blocked on every step"


def test_prefetch_runs_on_a_background_thread():
    threads = []

    def put(b):
        threads.append(threading.current_thread() is threading.main_thread())
        return jax.device_put(b)

    mps.train.fit(_step, _init(), _batches, epochs=1, device_put=put, progress=False)
    assert threads and not any(threads)
    threads.clear()
    mps.train.fit(_step, _init(), _batches, epochs=1, device_put=put, prefetch=0, progress=False)
    assert threads and all(threads)


def test_progress_output():
    buf = io.StringIO()
    mps.train.fit(_step, _init(), _batches, epochs=2, eval_fn=_eval, target_accuracy=2.0, file=buf)
    out = buf.getvalue()
    assert "epoch 1/2" in out and "epoch 2/2" in out
    assert "loss=" in out and "samples/s" in out
    assert "epoch 2: loss" in out and "accuracy" in out
    assert f"{N_TRAIN // BS}/{N_TRAIN // BS}" in out  # the bar knows its total


def test_metrics_dict_and_errors():
    def step(state, batch):
        state, loss = _step(state, batch)
        return state, {"loss": loss, "other": 1.0}

    _, hist = mps.train.fit(step, _init(), _batches, epochs=1, progress=False)
    assert np.isfinite(hist[0]["loss"])
    with pytest.raises(ValueError, match="'loss'"):
        mps.train.fit(lambda s, b: (s, {"l": 1.0}), _init(), _batches, progress=False)
    with pytest.raises(TypeError, match="re-iterable"):
        mps.train.fit(_step, _init(), (b for b in _batches(0)), progress=False)
    with pytest.raises(ValueError, match="max_in_flight"):
        mps.train.fit(_step, _init(), _batches, max_in_flight=0, progress=False)
    with pytest.raises(ValueError, match="eval_fn"):
        mps.train.fit(_step, _init(), _batches, target_accuracy=0.5, progress=False)

    def bad_data(epoch):
        yield _batches(0)[0]
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        mps.train.fit(_step, _init(), bad_data, progress=False)
