"""Batch-parallel partitioning of runtime calls (data parallelism on JAX's own machinery).

XLA's partitioner knows nothing about our custom calls: left alone it all-gathers their operands
and runs every call on the whole batch on every device. `partitioned` wraps a runtime call (or a
short composition of calls, e.g. batch norm) in `jax.experimental.custom_partitioning`, with a
`Rule` saying which axis of each operand and result is the batch axis. Under `jax.jit` with
batch-sharded inputs each device then runs the call on its local shard; the body receives the
mesh axes the batch is split over and combines what is reduced over the batch with collectives
(`psum` of weight gradients, batch-norm statistics, loss sums), so results equal the
single-device ones. On one device, and inside `shard_map` (every axis manual), custom_partitioning
runs the body on the local block with `axes=()`; batch norm's `axis_name` passes axes explicitly.

Operands are asked for sharded on the batch axis only (everything else replicated): that is
data parallelism; an operand sharded otherwise is resharded by XLA before the call.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental.custom_partitioning import ArrayMapping, CompoundFactor, SdyShardingRule, custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

__all__ = ["Rule", "partitioned", "combine", "SUM"]

SUM = "sum"  # a result reduced over the batch by summation: psum of the per-shard values


@dataclasses.dataclass(frozen=True)
class Rule:
    """Which axis of each operand / result is the batch axis.

    args: per operand, the batch axis or None (replicated: weights, keys, per-channel vectors).
    results: per result, the batch axis, None (replicated, equal on every shard) or SUM
      (replicated after the psum that `combine` applies in _ffi.call).
    A batch-major flat buffer (a workspace or packed mask whose size is linear in the batch) is a
    batch axis too: it is split into per-shard blocks that only the matching backward reads.
    ok: optional predicate on the shard count (e.g. dropout's packed mask needs whole bytes per
      shard); when it fails, or a batch axis does not divide, the call runs unsharded.
    """
    args: tuple
    results: tuple
    ok: Callable[[int], bool] | None = None


def _batch_axes(rule, arg_shapes, mesh):
    """Mesh axes the batch is sharded over (as the first sharded batch operand has it), or ()."""
    if mesh is None or mesh.empty:
        return ()
    for d, a in zip(rule.args, arg_shapes):
        sh = getattr(a, "sharding", None)
        if d is None or not isinstance(sh, NamedSharding) or d >= len(sh.spec):
            continue
        entry = sh.spec[d]
        if entry is None:
            continue
        axes = (entry,) if isinstance(entry, str) else tuple(entry)
        return axes
    return ()


def _shards(mesh, axes):
    return math.prod(mesh.shape[a] for a in axes) if axes else 1


def _divides(rule, axes, mesh, arg_shapes, result_shapes):
    k = _shards(mesh, axes)
    if k == 1:
        return True
    dims = [(d, a.shape) for d, a in zip(rule.args, arg_shapes)] + \
           [(d, r.shape) for d, r in zip(rule.results, result_shapes)]
    if any(isinstance(d, int) and s[d] % k for d, s in dims):
        return False
    return rule.ok is None or rule.ok(k)


def _spec(ndim, dim, axes):
    if not axes or not isinstance(dim, int):
        return P()
    return P(*[(axes if len(axes) > 1 else axes[0]) if i == dim else None for i in range(ndim)])


def _plan(rule, mesh, arg_shapes, result_shapes):
    axes = _batch_axes(rule, arg_shapes, mesh)
    if axes and not _divides(rule, axes, mesh, arg_shapes, result_shapes):
        axes = ()
    arg_sh = tuple(NamedSharding(mesh, _spec(len(a.shape), d, axes)) for d, a in zip(rule.args, arg_shapes))
    res_sh = tuple(NamedSharding(mesh, _spec(len(r.shape), d, axes)) for d, r in zip(rule.results, result_shapes))
    return axes, arg_sh, res_sh


def _sdy_rule(rule, arg_shapes, result_shapes):
    """Shardy rule: the batch axes share factor `b`; a batch-major flat buffer of size b * w is the
    compound (b, w), so its per-shard blocks keep their sharding from the forward to the backward
    call; every other axis is its own factor."""
    # The batch size: the smallest batch axis (a flat per-sample buffer's is a multiple of it).
    sizes_b = [a.shape[d] for d, a in zip(rule.args, arg_shapes) if d is not None]
    batch = min(sizes_b) if sizes_b else None
    counter = iter(range(1 << 30))
    sizes = {}

    def one(shape, dim):
        dims = []
        for i, s in enumerate(shape):
            if i == dim and s == batch:
                dims.append("b")
            elif i == dim and batch and s % batch == 0 and s > batch:
                w = f"w{next(counter)}"
                sizes[w] = s // batch
                dims.append(CompoundFactor("b", w))
            else:
                dims.append(f"f{next(counter)}")
        return ArrayMapping(*dims)

    ins = tuple(one(a.shape, d) for d, a in zip(rule.args, arg_shapes))
    outs = tuple(one(r.shape, d if isinstance(d, int) else None) for d, r in zip(rule.results, result_shapes))
    return SdyShardingRule(ins, outs, **sizes)


def partitioned(body: Callable, rule: Rule, args: Sequence, result_specs: Sequence):
    """Run `body(axes, local_result_specs, *local_args) -> list of results` batch-partitioned.

    `result_specs` are the global result shapes; the body gets the per-shard ones (batch axes
    divided by the shard count) and must return those. With `axes == ()` it runs unsharded.
    """
    result_specs = list(result_specs)
    if len(rule.args) != len(args) or len(rule.results) != len(result_specs):
        raise AssertionError(f"sharding rule {rule} does not match {len(args)} operands / {len(result_specs)} results")

    def local_specs(axes, mesh):
        k = _shards(mesh, axes) if axes else 1
        out = []
        for d, s in zip(rule.results, result_specs):
            shape = list(s.shape)
            if isinstance(d, int) and k > 1:
                shape[d] //= k
            out.append(jax.ShapeDtypeStruct(tuple(shape), s.dtype))
        return out

    @custom_partitioning
    def f(*a):
        return tuple(body((), result_specs, *a))

    def partition(mesh, arg_shapes, result_shape):
        axes, arg_sh, res_sh = _plan(rule, mesh, arg_shapes, result_shape)

        def lower(*a):
            return tuple(body(axes, local_specs(axes, mesh), *a))

        return mesh, lower, res_sh, arg_sh

    def infer(mesh, arg_shapes, result_shape):  # GSPMD only (Shardy uses the sharding rule)
        return _plan(rule, mesh, arg_shapes, result_shape)[2]

    arg_abstract = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in args]
    f.def_partition(partition=partition, infer_sharding_from_operands=infer,
                    sharding_rule=_sdy_rule(rule, arg_abstract, result_specs))
    return list(f(*args))


def combine(outs, rule: Rule, axes):
    """psum a body's per-shard results marked SUM in `rule.results` over the batch axes."""
    if not axes:
        return list(outs)
    out = []
    for o, d in zip(outs, rule.results):
        out.append(jax.lax.psum(o, axes) if d == SUM else o)
    return out
