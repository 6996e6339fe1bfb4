"""The one place that turns a runtime target into a JAX call (so a move to
`jax.extend.core.Primitive` touches only this file).

`call` wraps `jax.ffi.ffi_call` with a vmap rule: when every batched argument is flagged in `fold`
(its leading axis is the op's batch axis) and every result is batch-major, the vmapped axis is
folded into that batch axis and the kernel runs once; otherwise the kernel runs once per vmapped
element (lax.map). The folded call is itself a `call`, so vmap of vmap (and deeper) folds every
level in turn. Buffers travel in their own dtypes: how float16/bfloat16 are computed is each
backend's choice.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _runtime  # noqa: F401  (registers the targets)

def _attr(v):
    if isinstance(v, (bool, np.bool_)):
        return np.int64(v)
    if isinstance(v, (int, np.integer)):
        return np.int64(v)
    if isinstance(v, (float, np.floating)):
        return np.float32(v)
    if isinstance(v, (tuple, list)):
        return np.asarray(v, dtype=np.int64)
    return v  # str, np.ndarray


def call(target: str, results, *args, fold: Sequence[bool] | None = None, **attrs):
    """Run runtime target `target` on `args`; `results` is a ShapeDtypeStruct or a sequence."""
    single = not isinstance(results, (list, tuple))
    specs = [results] if single else list(results)
    attrs = {k: _attr(v) for k, v in attrs.items()}

    def raw(specs, *a):
        return list(jax.ffi.ffi_call(target, list(specs))(*a, **attrs))

    @jax.custom_batching.custom_vmap
    def f(*a):
        return raw(specs, *a)

    @f.def_vmap
    def rule(axis_size, in_batched, *a):
        if fold is not None and all(fold[i] or not b for i, b in enumerate(in_batched)):
            new = []
            for x, b, fl in zip(a, in_batched, fold):
                if fl:
                    if not b:
                        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
                    x = x.reshape((axis_size * x.shape[1],) + x.shape[2:])
                new.append(x)
            big = [jax.ShapeDtypeStruct((axis_size * s.shape[0],) + tuple(s.shape[1:]), s.dtype) for s in specs]
            # Through `call` again (not the raw ffi_call): an outer vmap level then folds in turn.
            outs = call(target, big, *new, fold=fold, **attrs)
            outs = [o.reshape((axis_size, s.shape[0]) + tuple(s.shape[1:])) for o, s in zip(outs, specs)]
            return outs, [True] * len(outs)
        # Not foldable (e.g. batched weights, or a result reduced over the batch): one call per element.
        idx = [i for i, b in enumerate(in_batched) if b]

        def one(xs):
            full = list(a)
            for i, x in zip(idx, xs):
                full[i] = x
            return f(*full)

        outs = jax.lax.map(one, [a[i] for i in idx])
        return list(outs), [True] * len(specs)

    outs = f(*args)
    return outs[0] if single else tuple(outs)


def spec(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(d) for d in shape), dtype)
