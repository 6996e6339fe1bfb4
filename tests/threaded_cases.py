"""Ops at sizes above the kernels' parallel thresholds, checked against tests/reference.py.
Not collected on its own (no test_ prefix): tests/test_threads.py runs it in a subprocess with
OMP_NUM_THREADS=2, so the multi-threaded paths of the kernels run in the suite."""
import jax
import jax.numpy as jnp
import numpy as np

import jax_mps as mps
import reference as ref
from helpers import assert_close, check_fwd_and_grads


def _n(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_dense_large_gemm():  # > kSmallGemm multiply-adds: oneDNN on every thread
    x, w, b = _n((128, 256)), _n((256, 128), 1) * 0.1, _n((128,), 2)
    check_fwd_and_grads(lambda *a: mps.dense(*a, activation="relu"),
                        lambda *a: ref.conv_dense(*a, activation="relu"), (x, w, b), rtol=2e-4, atol=2e-4)


def test_conv_im2col_backward():  # small-channel conv: im2col chunks spread over threads
    x, w = _n((8, 24, 24, 3)), _n((3, 3, 3, 8), 1) * 0.3
    check_fwd_and_grads(lambda *a: mps.conv2d(*a, activation="tanh"),
                        lambda *a: ref.conv_conv2d(*a, activation="tanh"), (x, w), rtol=2e-4, atol=2e-4)


def test_batch_norm_large():  # > 2^19 elements: parallel statistics and gradient sums
    x, s, b = _n((16, 32, 32, 36)), _n((36,), 1), _n((36,), 2)
    check_fwd_and_grads(lambda *a: mps.batch_norm(*a)[0], lambda *a: ref.norm_batch_norm(*a)[0], (x, s, b),
                        rtol=2e-4, atol=2e-4)


def test_pooling_large():  # > 2^20 window reads
    x = _n((4, 64, 64, 32))
    check_fwd_and_grads(lambda a: mps.max_pool2d(a, 2), lambda a: ref.pool_max(a, 2), (x,))
    check_fwd_and_grads(lambda a: mps.avg_pool2d(a, 3, 1, "SAME"), lambda a: ref.pool_avg(a, 3, 1, "SAME"), (x,))


def test_dropout_large():  # > 2^18 elements: chunks over threads; the mask must not depend on them
    key = jax.random.key(3)
    x = jnp.ones((300_001,), jnp.float32)
    y = mps.dropout(key, x, 0.25)
    keep = ref.dropout_keep_mask(jax.random.key_data(key), x.size, 0.25)
    assert_close(y, np.where(keep, 1 / 0.75, 0.0), 1e-6, 0)


def test_softmax_cross_entropy_large():  # N * D > 2^18: rows over threads
    x, labels = _n((1024, 300)), jnp.asarray(np.random.default_rng(1).integers(0, 300, 1024), jnp.int32)
    check_fwd_and_grads(lambda a: mps.softmax_cross_entropy(a, labels),
                        lambda a: ref.loss_softmax_cross_entropy(a, labels), (x,), rtol=2e-4, atol=1e-5)


def test_lstm_batch_chains():  # B >= 16: batch slices run as parallel chains
    leaves, tree = jax.tree.flatten(mps.init_lstm(jax.random.key(0), 8, 16, 1, True))
    x = _n((32, 10, 8))

    def run(f):  # flat arguments (x, *weights), so every weight's gradient is compared
        return lambda a, *w: f(a, jax.tree.unflatten(tree, w))

    check_fwd_and_grads(run(lambda a, p: mps.lstm(a, p)[0]), run(lambda a, p: ref.rnn_reference("lstm", a, p)[0]),
                        (x, *leaves), rtol=2e-4, atol=2e-4)


def test_adam_large_leaf():  # > one 2^15 chunk per leaf: chunks over threads
    p = {"w": _n((70_000,)), "b": _n((5,), 1)}
    g = {"w": _n((70_000,), 2), "b": _n((5,), 3)}
    opt = mps.optim.adam(1e-2)
    upd, _ = opt.update(g, opt.init(p), p)
    st = {"count": jnp.int32(0), "mu": jax.tree.map(jnp.zeros_like, p), "nu": jax.tree.map(jnp.zeros_like, p)}
    want, _ = ref.optim_step("adam", p, g, st, 1e-2)
    jax.tree.map(lambda a, b, c: assert_close(a + c, b, 1e-5, 1e-6), upd, want, p)
