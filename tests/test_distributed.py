"""Multi-process data parallelism on JAX's own distributed runtime: two processes on this machine
(jax.distributed.initialize, coordinator on 127.0.0.1) train a small CNN with mps.train.fit on a
mesh over both processes' devices, each reading its half of every batch, and end with the
parameters of one process training on the global batch. On the CPU each process has one CPU
device (gloo collectives); on CUDA, where 2 GPUs are visible, one GPU each (NCCL; issue 18's run).

This file is also the worker: ``python test_distributed.py <process_id> <port> <out.npz>``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

STEPS, BATCH = 3, 8  # global batch; each of the 2 processes reads 4 samples


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS, BATCH, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=(STEPS, BATCH)).astype(np.int32)
    return x, y


def _train(mesh=None, part=slice(None)):
    """Train STEPS steps; with a mesh each process passes only its `part` of every batch."""
    import jax
    import jax.numpy as jnp

    import jax_mps as mps

    k = jax.random.split(jax.random.key(0), 2)
    params = {"c": jax.random.normal(k[0], (3, 3, 3, 8)) * 0.3, "s": jnp.ones((8,)), "t": jnp.zeros((8,)),
              "d": jax.random.normal(k[1], (8 * 4 * 4, 10)) * 0.1, "db": jnp.zeros((10,))}
    opt = mps.optim.adam(1e-2)

    def loss_fn(p, x, y):
        h = mps.conv2d(x, p["c"], activation="relu")
        h, _, _ = mps.batch_norm(h, p["s"], p["t"], activation="relu")
        h = mps.max_pool2d(h, 2)
        return mps.softmax_cross_entropy(mps.dense(h.reshape(h.shape[0], -1), p["d"], p["db"]), y)

    @jax.jit
    def step(state, batch):
        p, s = state
        loss, g = jax.value_and_grad(loss_fn)(p, *batch)
        return opt.apply(p, g, s), loss

    x, y = _data()
    batches = [(x[i][part], y[i][part]) for i in range(STEPS)]
    (params, _), history = mps.train.fit(step, (params, opt.init(params)), batches, progress=False, prefetch=0,
                                         mesh=mesh)
    return {k: np.asarray(jax.experimental.multihost_utils.process_allgather(v, tiled=True)
                          if mesh is not None else v) for k, v in params.items()}, history


def _worker(pid, port, out):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU form; GPUs use NCCL
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import jax.experimental.multihost_utils  # noqa: F401
    from jax.sharding import Mesh

    assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.devices())
    mesh = Mesh(np.array(jax.devices()), ("data",))
    half = BATCH // 2
    params, history = _train(mesh, slice(pid * half, (pid + 1) * half))
    assert history.epochs[0]["samples"] == STEPS * BATCH  # the global batch is counted
    if pid == 0:
        np.savez(out, **params)
    jax.distributed.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path, backend):
    port, out = _free_port(), str(tmp_path / "params.npz")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    envs = [dict(env, JAX_PLATFORMS="cpu")] * 2
    if backend == "cuda":
        import jax
        if len(jax.devices("cuda")) < 2:
            pytest.skip("needs 2 GPUs (issue 18's run)")
        # One GPU per process, the parent's precision (the reference runs here), multicast off.
        prec = jax.config.jax_default_matmul_precision
        envs = [dict(env, CUDA_VISIBLE_DEVICES=str(i), NCCL_NVLS_ENABLE="0",
                     **({"JAX_DEFAULT_MATMUL_PRECISION": str(prec)} if prec else {})) for i in range(2)]
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), out], env=envs[i],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-6000:]
    got = dict(np.load(out))
    want, _ = _train()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
