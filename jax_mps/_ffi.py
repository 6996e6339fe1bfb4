"""The one place that turns a runtime target into a JAX call (so a move to
`jax.extend.core.Primitive` touches only this file).

`call` wraps `jax.ffi.ffi_call` with:
- a vmap rule: when every batched argument is flagged in `fold` (its leading axis is the op's
  batch axis) and every result is batch-major, the vmapped axis is folded into that batch axis
  and the kernel runs once; otherwise the kernel runs once per vmapped element (lax.map). The
  folded call is itself a `call`, so vmap of vmap (and deeper) folds every level in turn;
- a sharding rule (`shard`, see _sharding.Rule): which axis of each operand and result is the
  batch axis, so that batch-sharded jit runs the kernel on each local shard (results marked
  SUM are summed across shards with psum).

`composite` is the same for a short composition of kernels whose body needs the batch's mesh
axes itself (batch norm's statistics, reduced losses); `kernel` is the bare call for such bodies.
Buffers travel in their own dtypes: how float16/bfloat16 are computed is each backend's choice.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _runtime  # noqa: F401  (registers the targets)
from . import _sharding

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


def _varying(x) -> frozenset:
    """The shard_map axes over which x varies (its type's vma; `mat.varying` on jax 0.10)."""
    t = jax.typeof(x)
    v = getattr(t, "vma", None)
    if v is None:
        v = getattr(getattr(t, "mat", None), "varying", None)
    return frozenset(v or ())


def _as_varying(x, axes):
    missing = tuple(a for a in axes if a not in _varying(x))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


class custom_vjp:
    """`jax.custom_vjp` whose differentiable float arguments first vary over the same shard_map axes.

    Inside shard_map a weight is invariant while the activations vary; our backward kernels give
    the weight's per-block cotangent. Casting the weight to varying before the custom_vjp makes
    JAX transpose that cast into the psum over blocks, as for its own ops (and the cotangent
    types match the primal ones). Outside shard_map nothing varies and this is jax.custom_vjp.
    """

    def __init__(self, fun, nondiff_argnums=()):
        self._f = jax.custom_vjp(fun, nondiff_argnums=nondiff_argnums)
        self._nondiff = frozenset(nondiff_argnums)
        functools.update_wrapper(self, fun)

    def defvjp(self, fwd, bwd, symbolic_zeros=False):
        self._f.defvjp(fwd, bwd, symbolic_zeros=symbolic_zeros)

    def __call__(self, *args):
        diff = [i for i in range(len(args)) if i not in self._nondiff]
        axes = frozenset().union(*(_varying(x) for i in diff for x in jax.tree.leaves(args[i])))
        if axes:
            axes = tuple(sorted(axes, key=str))
            cast = lambda x: _as_varying(x, axes) if jnp.issubdtype(x.dtype, jnp.inexact) else x
            args = tuple(jax.tree.map(cast, a) if i in diff else a for i, a in enumerate(args))
        return self._f(*args)


def kernel(target: str, specs, *args, aliases=None, **attrs):
    """One runtime call on exactly these shapes (no vmap or sharding rule); returns a list.
    aliases: {operand index: result index} for results written into an operand's buffer."""
    for s in specs:
        # XLA's shape arithmetic is int64: a larger static extent aborts the process when lowered.
        if math.prod(s.shape) * jnp.dtype(s.dtype).itemsize >= 2 ** 62:
            raise ValueError(f"{target.removeprefix('jax_mps_')}: result shape {s.shape} is too large")
    attrs = {k: _attr(v) for k, v in attrs.items()}
    # Inside shard_map (checked types) a call's operands must vary over the same mesh axes, and
    # its results vary over them too (ffi_call's results would otherwise be typed invariant).
    axes = tuple(sorted(frozenset().union(*(_varying(x) for x in args)), key=str))
    args = [_as_varying(x, axes) for x in args]
    outs = jax.ffi.ffi_call(target, list(specs), input_output_aliases=aliases)(*args, **attrs)
    return [_as_varying(o, axes) for o in outs]


def call(target: str, results, *args, fold: Sequence[bool] | None = None, shard: _sharding.Rule | None = None,
         **attrs):
    """Run runtime target `target` on `args`; `results` is a ShapeDtypeStruct or a sequence."""
    def body(axes, specs, *a):
        return _sharding.combine(kernel(target, specs, *a, **attrs), shard, axes)

    return composite(body, results, *args, fold=fold, shard=shard)


def composite(body, results, *args, fold: Sequence[bool] | None = None, shard: _sharding.Rule | None = None,
              axes=None):
    """Run `body(axes, result_specs, *args) -> list` with call's vmap and sharding rules.

    `axes`: the mesh axes the batch is split over when the caller knows them (inside shard_map,
    batch norm's axis_name); otherwise they come from the sharding rule (() when unsharded).
    """
    single = not isinstance(results, (list, tuple))
    specs = [results] if single else list(results)

    def raw(specs, *a):
        if axes is not None:
            return list(body(axes, specs, *a))
        if shard is None:
            return list(body((), specs, *a))
        return _sharding.partitioned(body, shard, a, specs)

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
            # Through `composite` again (not the raw body): an outer vmap level then folds in turn.
            outs = composite(body, big, *new, fold=fold, shard=shard, axes=axes)
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
