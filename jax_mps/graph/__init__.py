"""`mps.graph`: route any JAX model's network ops to the runtime by rewriting its jaxpr.

    fast = mps.graph.optimize(loss_fn)             # same signature and outputs as loss_fn
    print(mps.graph.explain(loss_fn, params, x))   # what became of each op

`optimize` traces `fn` once per input structure, shapes and dtypes (and values of non-array
arguments), rewrites the jaxpr (see _rewrite.py) and evaluates the rewritten jaxpr on every call.
The rewritten ops are jax_mps primitives, i.e. custom_vjps, so `grad` of the result runs our
backward kernels; `jit` and `vmap` apply to the rewritten jaxpr as to any JAX code.
"""
from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.extend import core as jcore

from ._report import Report
from ._rewrite import Options, Rewriter

__all__ = ["optimize", "explain", "Report"]


def _is_array(x):
    return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.core.Tracer, jax.ShapeDtypeStruct))


def _spec(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    aval = jax.typeof(x) if not isinstance(x, (np.ndarray, np.generic)) else None
    if aval is None:
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=getattr(aval, "weak_type", False))


def _check_options(**flags):
    for k, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"optimize: `{k}` must be a bool, got {v!r}")
    return Options(**flags)


def _trace(fn, opts, args, kwargs):
    """(rewritten ClosedJaxpr, output treedef, report, cacheable) for these arguments."""
    leaves, tree = jax.tree.flatten((args, kwargs))
    dyn = [_is_array(l) for l in leaves]
    out_tree = []

    def flat(*dyn_leaves):
        it = iter(dyn_leaves)
        full = [next(it) if d else l for l, d in zip(leaves, dyn)]
        a, k = jax.tree.unflatten(tree, full)
        out = fn(*a, **k)
        out_leaves, t = jax.tree.flatten(out)
        out_tree.append(t)
        return out_leaves

    specs = [_spec(l) for l, d in zip(leaves, dyn) if d]
    closed = jax.make_jaxpr(flat)(*specs)
    report = Report()
    rw = Rewriter(opts, report)
    new = jax.make_jaxpr(lambda *a: rw.run(closed.jaxpr, closed.consts, a))(*specs)
    cacheable = not any(isinstance(c, jax.core.Tracer) for c in closed.consts)
    return new, out_tree[0], report, cacheable


def _key(args, kwargs):
    leaves, tree = jax.tree.flatten((args, kwargs))
    parts = []
    for l in leaves:
        if _is_array(l):
            s = _spec(l)
            parts.append(("a", tuple(s.shape), str(s.dtype), bool(s.weak_type)))
        else:  # by type and value: 2 == 2.0 and 0.0 == -0.0 would share a trace that differs
            parts.append(("s", type(l), l, math.copysign(1.0, l) if isinstance(l, float) else None))
    key = (tree, tuple(parts))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def optimize(fn, *, convert=True, fuse=True, concat=True):
    """Return `fn` with its network ops rewritten to jax_mps primitives (see the module docstring).

    convert: convolutions (1-D/2-D, any dimension numbers; input dilation as a transposed
      convolution), dense dot_generals, max/sum reduce_windows (average pools) and activations of
      the runtime's list become jax_mps primitives.
    fuse: conv/dense + per-channel bias add + activation become one call; batch norm followed by
      an activation becomes one call.
    concat: a last-axis (channel) concatenation fed by float32 batch norms (fused or not) is
      written in place: each batch norm writes its channel slice of one buffer (the runtime's
      output aliasing), the other inputs are copied into theirs, the backward reads the slices;
      no `concatenate` remains. Concatenations without a batch-norm input stay XLA's.
    """
    if not callable(fn):
        raise TypeError(f"optimize: `fn` must be callable, got {type(fn).__name__}")
    opts = _check_options(convert=convert, fuse=fuse, concat=concat)
    cache: dict = {}

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        key = _key(args, kwargs)
        entry = cache.get(key) if key is not None else None
        if entry is None:
            entry = _trace(fn, opts, args, kwargs)
            if key is not None and entry[3]:
                cache[key] = entry
        new, out_tree, _, _ = entry
        dyn = [l for l in jax.tree.leaves((args, kwargs)) if _is_array(l)]
        dyn = [jax.numpy.asarray(l) if isinstance(l, (np.ndarray, np.generic)) else l for l in dyn]
        return jax.tree.unflatten(out_tree, jcore.jaxpr_as_fun(new)(*dyn))

    wrapped.cache_size = lambda: len(cache)
    return wrapped


def explain(fn, *example_args, convert=True, fuse=True, concat=True, **example_kwargs):
    """Report of what `optimize(fn, ...)` does to each op of `fn` traced at `example_args`
    (arrays or jax.ShapeDtypeStruct). `str(report)` is a table; `report.counts` the totals."""
    if not callable(fn):
        raise TypeError(f"explain: `fn` must be callable, got {type(fn).__name__}")
    opts = _check_options(convert=convert, fuse=fuse, concat=concat)
    return _trace(fn, opts, example_args, example_kwargs)[2]
