"""Batch-sharded jit and shard_map over several devices: every primitive's forward and
gradients equal the unsharded ones, a whole training step gives the same parameters, and the
compiled HLO has no all-gather around our calls.

The rest of the suite keeps one device, so this module re-runs itself in a child process
(test_sharded_suite): on the CPU over 4 forced host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4), on CUDA over every GPU where at least 2
are visible (issue 18's run; NVLink multicast off).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

_CHILD = "JAX_MPS_SHARDED_CHILD"

if os.environ.get(_CHILD) != "1":
    def test_sharded_suite(backend):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                   JAX_MPS_TEST_BACKENDS=backend)
        env[_CHILD] = "1"
        if backend == "cpu":
            env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
        else:
            import jax
            if len(jax.devices("cuda")) < 2:
                pytest.skip("needs 2 or more GPUs (issue 18's run)")
            env["NCCL_NVLS_ENABLE"] = "0"
        r = subprocess.run([sys.executable, "-m", "pytest", __file__, "-x", "-q", "-p", "no:cacheprovider"],
                           env=env, cwd=root, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-4000:]
else:
    from functools import partial

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jax_mps as mps
    from helpers import assert_close
    import reference as ref

    NDEV = jax.device_count()
    assert NDEV >= 2 and NDEV % 2 == 0, jax.devices()
    MESH = Mesh(np.array(jax.devices()), ("data",))
    MESH2 = Mesh(np.array(jax.devices()).reshape(2, NDEV // 2), ("a", "b"))
    N = 2 * NDEV  # global batch: 2 samples per device (the per-shard sizes the cases are written for)

    def _rand(shape, seed, dtype=jnp.float32):
        return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)

    def _put(args, batched, mesh=MESH, spec=("data",)):
        # b: 1 -> sharded as `spec`, 0 -> replicated, or a PartitionSpec of its own
        return [jax.device_put(a, NamedSharding(mesh, b if isinstance(b, P) else P(*spec) if b else P()))
                for a, b in zip(args, batched)]

    def _grad_fn(f, n, argnums):
        def loss(*a):
            out = f(*a)
            return sum(jnp.sum(jnp.sin(o.astype(jnp.float32) * (i + 1))) for i, o in enumerate(jax.tree.leaves(out)))
        return jax.value_and_grad(loss, argnums=argnums)

    def _hlo_has_gather(fn, *args):
        return "all-gather" in jax.jit(fn).lower(*args).compile().as_text()

    def check_sharded(f, args, batched, argnums=None, rtol=2e-5, atol=2e-5, mesh=MESH, spec=("data",),
                      no_gather=True):
        """f on batch-sharded args equals f on one device, forward and gradients; no all-gather."""
        if argnums is None:
            argnums = tuple(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))
        sharded = _put(args, batched, mesh, spec)
        want = jax.jit(f)(*args)
        got = jax.jit(f)(*sharded)
        jax.tree.map(lambda a, b: assert_close(a, b, rtol, atol, "forward"), got, want)
        g = _grad_fn(f, len(args), argnums)
        (lw, gw), (lg, gg) = jax.jit(g)(*args), jax.jit(g)(*sharded)
        assert_close(lg, lw, rtol, atol, "loss")
        for i, (a, b) in enumerate(zip(gg, gw)):
            jax.tree.map(lambda u, v: assert_close(u, v, rtol, atol, f"grad wrt arg {argnums[i]}"), a, b)
        if no_gather:
            assert not _hlo_has_gather(g, *sharded), "an all-gather was inserted around a runtime call"

    # ---- convolution and dense ---------------------------------------------------------------

    @pytest.mark.parametrize("act", [None, "relu", "gelu"])
    def test_conv2d(act):
        x, w, b = _rand((N, 7, 7, 3), 0), _rand((3, 3, 3, 5), 1), _rand((5,), 2)
        check_sharded(lambda x, w, b: mps.conv2d(x, w, b, stride=2, activation=act), [x, w, b], [1, 0, 0])

    def test_conv1d_and_transpose():
        x, w = _rand((N, 9, 4), 0), _rand((3, 4, 6), 1)
        check_sharded(lambda x, w: mps.conv1d(x, w, padding="VALID"), [x, w], [1, 0])
        x, w = _rand((N, 4, 4, 3), 2), _rand((3, 3, 3, 2), 3)
        check_sharded(lambda x, w: mps.conv_transpose2d(x, w, stride=2), [x, w], [1, 0])

    def test_dense():
        x, w, b = _rand((N, 6), 0), _rand((6, 3), 1), _rand((3,), 2)
        check_sharded(lambda x, w, b: mps.dense(x, w, b, activation="tanh"), [x, w, b], [1, 0, 0])

    # ---- pooling, resampling, activations ------------------------------------------------------

    def test_pooling():
        x = _rand((N, 6, 6, 3), 0)
        check_sharded(lambda x: mps.max_pool2d(x, 2), [x], [1])
        check_sharded(lambda x: mps.avg_pool2d(x, 3, 1, "SAME"), [x], [1])
        check_sharded(mps.global_avg_pool2d, [x], [1])
        check_sharded(lambda x: mps.upsample2d(x, 2, "bilinear"), [x], [1])
        x1 = _rand((N, 8, 3), 1)
        check_sharded(lambda x: mps.max_pool1d(x, 2), [x1], [1])
        check_sharded(lambda x: mps.avg_pool1d(x, 2), [x1], [1])

    def test_activations():
        x, a = _rand((N, 5, 4), 0), _rand((4,), 1)
        check_sharded(lambda x: mps.activation(x, "elu", alpha=0.5), [x], [1])
        check_sharded(mps.prelu, [x, a], [1, 0])
        check_sharded(lambda x: mps.softmax(x, axis=-1), [x], [1])
        check_sharded(lambda x: mps.log_softmax(x, axis=1), [x], [1])
        # softmax over the batch axis itself cannot be split: it runs unsharded, still correct
        check_sharded(lambda x: mps.softmax(x, axis=0), [x], [1], no_gather=False)

    # ---- normalization -------------------------------------------------------------------------

    @pytest.mark.parametrize("act", [None, "relu", "sigmoid"])
    def test_batch_norm(act):
        x = _rand((N, 3, 3, 4), 0) * 3 + 5  # an offset mean: the variance combination must be stable
        s, b = _rand((4,), 1), _rand((4,), 2)
        check_sharded(lambda x, s, b: mps.batch_norm(x, s, b, activation=act), [x, s, b], [1, 0, 0], rtol=5e-5,
                      atol=5e-5)
        # against the pure-JAX global-batch reference too
        y, m, v = jax.jit(lambda x, s, b: mps.batch_norm(x, s, b, activation=act))(*_put([x, s, b], [1, 0, 0]))
        yr, mr, vr = ref.norm_batch_norm(x, s, b, activation=act)
        for a, r in ((y, yr), (m, mr), (v, vr)):
            assert_close(a, r, 1e-4, 1e-4, "batch_norm vs reference")

    @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
    def test_batch_norm_low_precision(dtype):
        # statistics must stay float32 across shards: a mean rounded to bfloat16 (ulp 0.5 at 100)
        # would shift every normalized value
        x = (_rand((N, 3, 3, 4), 0) + 100).astype(dtype)
        s, b = _rand((4,), 1, dtype), _rand((4,), 2, dtype)
        f = lambda x: mps.batch_norm(x, s, b)
        want, got = jax.jit(f)(x), jax.jit(f)(_put([x], [1])[0])
        for a, c in zip(got, want):
            assert a.dtype == dtype
            assert_close(a.astype(jnp.float32), c.astype(jnp.float32), 2e-2, 2e-2, "low-precision batch norm")

    def test_batch_norm_two_axis_mesh():
        x, s, b = _rand((N, 2, 4), 0), _rand((4,), 1), _rand((4,), 2)
        check_sharded(lambda x, s, b: mps.batch_norm(x, s, b), [x, s, b], [1, 0, 0], mesh=MESH2,
                      spec=(("a", "b"),), rtol=5e-5, atol=5e-5)

    def test_other_norms():
        x, s, b = _rand((N, 3, 3, 4), 0), _rand((4,), 1), _rand((4,), 2)
        m, v = _rand((4,), 3), jnp.abs(_rand((4,), 4)) + 0.5
        check_sharded(lambda x, s, b, m, v: mps.batch_norm_inference(x, s, b, m, v, activation="relu"),
                      [x, s, b, m, v], [1, 0, 0, 0, 0])
        check_sharded(mps.instance_norm, [x, s, b], [1, 0, 0])
        check_sharded(lambda x: mps.local_response_norm(x, 3), [x], [1])

    # ---- losses ---------------------------------------------------------------------------------

    @pytest.mark.parametrize("reduction", ["none", "sum", "mean", "sum_by_nonzero_weights"])
    @pytest.mark.parametrize("weighted", [False, True])
    def test_losses(reduction, weighted):
        logits, target = _rand((N, 5), 0), _rand((N, 5), 1)
        labels = jnp.asarray(np.random.default_rng(2).integers(0, 5, N), jnp.int32)
        w = jnp.asarray([0.0, 1.0, 2.0, 0.0, 0.5, 1.0, 0.0, 3.0], jnp.float32)
        kw = lambda: dict(reduction=reduction)
        if weighted:
            check_sharded(lambda l, y, w: mps.softmax_cross_entropy(l, y, weights=w, label_smoothing=0.1, **kw()),
                          [logits, labels, w], [1, 1, 1])
            check_sharded(lambda p, t, w: mps.huber_loss(p, t, weights=w, **kw()), [logits, target, w], [1, 1, 1])
        else:
            check_sharded(lambda l, y: mps.softmax_cross_entropy(l, y, **kw()), [logits, labels], [1, 1])
            check_sharded(lambda p, t: mps.mean_squared_error(p, t, **kw()), [logits, target], [1, 1])
            check_sharded(lambda p, t: mps.kl_divergence(p, jax.nn.softmax(t), **kw()), [logits, target], [1, 1])

    def test_other_losses():
        p, t = _rand((N, 3, 2), 0), _rand((N, 3, 2), 1)
        check_sharded(lambda p, t: mps.sigmoid_cross_entropy(p, jax.nn.sigmoid(t)), [p, t], [1, 1])
        check_sharded(lambda p, t: mps.mean_absolute_error(p, t, reduction="sum"), [p, t], [1, 1])
        check_sharded(lambda p: mps.hinge_loss(p, jnp.sign(t)), [p], [1])

    def test_loss_all_zero_weights_shard():
        # one shard has only zero weights: its count is 0, the global one is not
        logits, labels = _rand((N, 3), 0), jnp.zeros((N,), jnp.int32)
        w = jnp.asarray([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 1.0], jnp.float32)
        check_sharded(lambda l, w: mps.softmax_cross_entropy(l, labels, weights=w, reduction="sum_by_nonzero_weights"),
                      [logits, w], [1, 1])

    # ---- recurrent --------------------------------------------------------------------------------

    @pytest.mark.parametrize("time_major", [False, True])
    def test_lstm_gru(time_major):
        B, T, I, H = N, 5, 3, 4
        x = _rand((T, B, I) if time_major else (B, T, I), 0)
        p = mps.init_lstm(jax.random.key(0), I, H, num_layers=2, bidirectional=True)
        lens = jnp.asarray([5, 3, 0, 5, 1, 4, 2, 5][:N], jnp.int32)
        xb = [1, 0, P("data")]
        check_sharded(lambda x, p, l: mps.lstm(x, p, seq_lengths=l, time_major=time_major), [x, p, lens], xb,
                      argnums=(0, 1), spec=((None, "data") if time_major else ("data",)))
        pg = mps.init_gru(jax.random.key(1), I, H)
        check_sharded(lambda x, p: mps.gru(x, p, time_major=time_major), [x, pg], [1, 0], argnums=(0, 1),
                      spec=((None, "data") if time_major else ("data",)))

    @pytest.mark.parametrize("shape", [(N, 16), (N, 3, 5, 8), (N, 4)])
    def test_dropout_mask_is_the_global_one(shape):
        # each shard draws its part of the whole mask at the global element indices; (N, 4) has
        # 8 elements per shard: one mask byte each
        x = _rand(shape, 0)
        key = jax.random.key(3)
        check_sharded(lambda x: mps.dropout(key, x, 0.5), [x], [1])
        y = jax.jit(lambda x: mps.dropout(key, x, 0.3))(_put([x], [1])[0])
        keep = ref.dropout_keep_mask(jax.random.key_data(key), x.size, 0.3).reshape(shape)
        assert_close(y, jnp.where(keep, x / 0.7, 0.0), 1e-6, 1e-6, "mask vs reference")

    def test_dropout_offset_must_be_whole_bytes():
        kd = jnp.asarray([1, 2, 4, 0], jnp.uint32)  # key (1, 2), element offset 4
        specs = [jax.ShapeDtypeStruct((8,), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.uint8)]
        with pytest.raises(Exception, match="multiple of 8"):
            jax.block_until_ready(jax.ffi.ffi_call("jax_mps_dropout_offset_fwd", specs)(
                kd, jnp.ones((8,)), threshold=np.int64(2**31), scale=np.float32(2)))

    def test_dropout_partial_bytes_run_unsharded():
        x = _rand((N, 3), 0)  # 6 elements per shard: not whole mask bytes
        check_sharded(lambda x: mps.dropout(jax.random.key(1), x, 0.5), [x], [1], no_gather=False)

    def test_elman_rnn():
        x, p = _rand((N, 4, 3), 0), mps.init_rnn(jax.random.key(2), 3, 5, num_layers=2)
        check_sharded(lambda x, p: mps.rnn(x, p, activation="relu"), [x, p], [1, 0], argnums=(0, 1))

    # ---- shard_map -------------------------------------------------------------------------------

    def test_shard_map_local_blocks_and_axis_name():
        x, s, b = _rand((N, 3, 3, 4), 0) + 2, _rand((4,), 1), _rand((4,), 2)
        w = _rand((3, 3, 4, 4), 3) * 0.3

        def local(x, s, b, w):
            y = mps.conv2d(x, w, activation="relu")
            y, m, v = mps.batch_norm(y, s, b, axis_name="data")
            return y, m, v

        def glob(x, s, b, w):
            return mps.batch_norm(mps.conv2d(x, w, activation="relu"), s, b)

        sm = jax.shard_map(local, mesh=MESH, in_specs=(P("data"), P(), P(), P()),
                           out_specs=(P("data"), P(), P()))
        args = [x, s, b, w]
        got, want = jax.jit(sm)(*args), jax.jit(glob)(*args)
        jax.tree.map(lambda a, c: assert_close(a, c, 5e-5, 5e-5, "shard_map forward"), got, want)
        gg = jax.jit(_grad_fn(sm, 4, (0, 1, 2, 3)))(*args)[1]
        gw = jax.jit(_grad_fn(glob, 4, (0, 1, 2, 3)))(*args)[1]
        # weight gradients of shard_map are per block unless summed: psum them by out_specs P()
        for i, (a, c) in enumerate(zip(gg, gw)):  # sums in another order: float32 rounding differs
            assert_close(a, c, 2e-4, 2e-4, f"shard_map grad {i}")

        # without axis_name the statistics are per block
        blocks = jax.jit(jax.shard_map(lambda x: mps.batch_norm(x, s, b)[1][None], mesh=MESH,
                                       in_specs=P("data"), out_specs=P("data")))(x)
        for i in range(4):
            assert_close(blocks[i], ref.norm_batch_norm(x[2 * i:2 * i + 2], s, b)[1], 1e-5, 1e-5, "block stats")

    # ---- a whole training step -----------------------------------------------------------------------

    def _cnn_init(key):
        k = jax.random.split(key, 3)
        return {"c1": jax.random.normal(k[0], (3, 3, 3, 8)) * 0.3, "b1": jnp.zeros((8,)),
                "s": jnp.ones((8,)), "t": jnp.zeros((8,)),
                "d": jax.random.normal(k[1], (8 * 4 * 4, 10)) * 0.1, "db": jnp.zeros((10,))}

    def _cnn_loss(p, x, y):
        h = mps.conv2d(x, p["c1"], p["b1"], activation="relu")
        h, _, _ = mps.batch_norm(h, p["s"], p["t"], activation="relu")
        h = mps.max_pool2d(h, 2)
        logits = mps.dense(h.reshape(h.shape[0], -1), p["d"], p["db"])
        return mps.softmax_cross_entropy(logits, y)

    def test_gspmd_partitioner_too():
        # jax 0.10-0.12 default to Shardy; the GSPMD path (infer_sharding_from_operands) also works
        jax.config.update("jax_use_shardy_partitioner", False)
        try:
            x, w, b = _rand((N, 6, 6, 3), 0), _rand((3, 3, 3, 4), 1), _rand((4,), 2)
            check_sharded(lambda x, w, b: mps.batch_norm(mps.conv2d(x, w), w[0, 0, 0], b)[0], [x, w, b], [1, 0, 0],
                          rtol=5e-5, atol=5e-5)
        finally:
            jax.config.update("jax_use_shardy_partitioner", True)

    def test_training_step_equal_params_and_no_gather():
        opt = mps.optim.adam(1e-2)
        x, y = _rand((N, 8, 8, 3), 0), jnp.asarray(np.arange(N) % 10, jnp.int32)
        p0 = _cnn_init(jax.random.key(0))

        def step(p, s, x, y):
            loss, g = jax.value_and_grad(_cnn_loss)(p, x, y)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, loss

        jstep = jax.jit(step)
        p1, s1 = p0, opt.init(p0)
        for _ in range(3):
            p1, s1, l1 = jstep(p1, s1, x, y)
        rep = NamedSharding(MESH, P())
        p2 = jax.device_put(p0, rep)
        s2 = jax.device_put(opt.init(p0), rep)
        xs, ys = _put([x, y], [1, 1])
        for _ in range(3):
            p2, s2, l2 = jstep(p2, s2, xs, ys)
        assert_close(l2, l1, 1e-5, 1e-5, "loss")
        jax.tree.map(lambda a, b: assert_close(a, b, 1e-4, 1e-5, "params"), p2, p1)
        hlo = jstep.lower(p2, s2, xs, ys).compile().as_text()
        assert "all-gather" not in hlo
        assert "all-reduce" in hlo  # weight gradients and BN statistics are summed across shards

    def test_fit_on_a_mesh_with_mixed_precision():
        mp = mps.mixed_precision
        policy, opt = mp.Policy(jnp.float16), mps.optim.adam(1e-2)
        x, y = _rand((N, 8, 8, 3), 0), jnp.asarray(np.arange(N) % 10, jnp.int32)

        @jax.jit
        def step(state, batch):
            p, s, sc = state
            loss, g = mp.value_and_grad(_cnn_loss, policy, sc)(p, *batch)
            return mp.apply(opt, p, g, s, sc), loss

        def run(mesh):
            p = _cnn_init(jax.random.key(0))
            state = (p, opt.init(p), mp.DynamicLossScale.create(2.0 ** 10, growth_interval=2))
            state, hist = mps.train.fit(step, state, [(x, y)] * 3, progress=False, prefetch=0, mesh=mesh)
            return state, hist

        (p1, _, sc1), _ = run(None)
        (p2, _, sc2), hist = run(MESH)
        assert p2["c1"].sharding.is_fully_replicated
        assert float(sc1.scale) == float(sc2.scale) == 2.0 ** 11
        jax.tree.map(lambda a, b: assert_close(a, b, 1e-2, 1e-2, "params"), p2, p1)
