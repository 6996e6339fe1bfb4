"""Shared test helpers: compare a function and all its gradients with a reference."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def assert_close(a, b, rtol=1e-4, atol=1e-5, what=""):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)


def check_fwd_and_grads(f, ref, args, argnums=None, rtol=1e-4, atol=1e-5, seed=0):
    """f and ref agree on outputs and on the VJP of a random cotangent w.r.t. `argnums`.

    Both run under jax.jit: one compile per function instead of one per eager op and shape
    (the suite's time is mostly XLA compiles)."""
    if argnums is None:
        argnums = tuple(range(len(args)))
    out, ref_out = jax.jit(f)(*args), jax.jit(ref)(*args)
    jax.tree.map(lambda a, b: assert_close(a, b, rtol, atol, "forward"), out, ref_out)
    key = jax.random.key(seed)
    leaves, tdef = jax.tree.flatten(ref_out)
    cts = [jax.random.normal(jax.random.fold_in(key, i), l.shape, l.dtype) for i, l in enumerate(leaves)]
    ct = jax.tree.unflatten(tdef, cts)

    def loss(fn):
        def g(*a):
            o = fn(*a)
            return sum(jnp.vdot(x, c) for x, c in zip(jax.tree.leaves(o), jax.tree.leaves(ct)))
        return jax.jit(jax.grad(g, argnums=argnums))

    got, want = loss(f)(*args), loss(ref)(*args)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, rtol, atol, f"grad wrt arg {argnums[i]}")
