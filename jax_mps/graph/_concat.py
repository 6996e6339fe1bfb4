"""A channel concatenation written in place (mps.graph's `concat` pass).

The batch norms feeding a last-axis concatenate write their channel slice of one (..., Ctot)
buffer: the first member's call (batch_norm_fwd_slice) produces the buffer, every later one
(batch_norm_fwd_into) is handed it through input_output_aliases and fills its own channels. The
other inputs are copied into their slice (dynamic_update_slice, which XLA does in place). So the
concatenated tensor is written once and no `concatenate` remains. The backward reads each batch
norm's cotangent (and, for the activation's derivative, its output) as that slice of the
concatenation's cotangent and output (batch_norm_bwd_slice); the copied inputs get slices.

`layout` (static) lists the members in channel order: ("bn", eps, act code, alpha) taking
(x, scale, bias) from the arrays, or ("copy",) taking one array. float32 only.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .. import _ffi
from .._validate import ACT_NONE, grad_from_output


def _split(layout, arrays):
    """[(member, arrays of it, channel offset, channels)] in channel order."""
    out, k, off = [], 0, 0
    for m in layout:
        n = 3 if m[0] == "bn" else 1
        a = arrays[k:k + n]
        c = a[0].shape[-1]
        out.append((m, a, off, c))
        k, off = k + n, off + c
    return out, off


def _from_output(m):
    return m[2] != ACT_NONE and grad_from_output(m[2], m[3])


def _fwd_body(layout):
    def body(axes, specs, *arrays):
        members, _ = _split(layout, arrays)
        out_spec = specs[0]
        buf, stats = None, []
        for m, a, off, c in members:
            if m[0] != "bn":
                continue
            vec = _ffi.spec((c,), jnp.float32)
            attrs = dict(epsilon=m[1], act=m[2], alpha=m[3], offset=off)
            if buf is None:
                buf, mean, var, rstd = _ffi.kernel("jax_mps_batch_norm_fwd_slice", (out_spec, vec, vec, vec), *a,
                                                   **attrs)
            else:
                buf, mean, var, rstd = _ffi.kernel("jax_mps_batch_norm_fwd_into", (out_spec, vec, vec, vec), *a, buf,
                                                   aliases={3: 0}, **attrs)
            stats += [mean, var, rstd]
        for m, a, off, c in members:
            if m[0] == "copy":
                buf = jax.lax.dynamic_update_slice_in_dim(buf, a[0], off, axis=buf.ndim - 1)
        return [buf] + stats
    return body


def _bwd_body(layout):
    def body(axes, specs, out, g, *rest):
        n = sum(1 for m in layout if m[0] == "bn")
        arrays, stats, gstats = rest[:-5 * n], rest[-5 * n:-2 * n], rest[-2 * n:]
        members, _ = _split(layout, arrays)
        grads, j = [], 0
        for m, a, off, c in members:
            if m[0] == "copy":
                grads.append(jax.lax.slice_in_dim(g, off, off + c, axis=g.ndim - 1))
                continue
            x, scale, bias = a
            mean, _, rstd = stats[3 * j:3 * j + 3]
            gmean, gvar = gstats[2 * j:2 * j + 2]
            j += 1
            vec = _ffi.spec((c,), jnp.float32)
            fo = _from_output(m)
            grads += _ffi.kernel("jax_mps_batch_norm_bwd_slice", (_ffi.spec(x.shape, x.dtype), vec, vec),
                                 x, scale, bias, mean, rstd, out if fo else x, g, gmean, gvar,
                                 act=m[2], alpha=m[3], from_output=fo, offset=off)
        return grads
    return body


def _specs(layout, arrays):
    members, ctot = _split(layout, arrays)
    lead = arrays[0].shape[:-1]
    vecs = [_ffi.spec((c,), jnp.float32) for m, _, _, c in members if m[0] == "bn" for _ in range(3)]
    return [_ffi.spec(lead + (ctot,), jnp.float32)] + vecs


@partial(_ffi.custom_vjp, nondiff_argnums=(0,))
def _concat(layout, *arrays):
    return _concat_fwd(layout, *arrays)[0]


def _concat_fwd(layout, *arrays):
    outs = _ffi.composite(_fwd_body(layout), _specs(layout, arrays), *arrays)
    out, stats = outs[0], outs[1:]
    visible = [out] + [s for k, s in enumerate(stats) if k % 3 != 2]  # (mean, var) per batch norm
    return tuple(visible), (arrays, out, stats)


def _concat_bwd(layout, res, cts):
    arrays, out, stats = res
    g, gstats = cts[0], cts[1:]
    specs = [_ffi.spec(a.shape, a.dtype) for a in arrays]
    return tuple(_ffi.composite(_bwd_body(layout), specs, out, g, *arrays, *stats, *gstats))


_concat.defvjp(_concat_fwd, _concat_bwd)


def concat_in_place(layout, arrays):
    """(concatenated (..., Ctot), [(mean, var) per batch-norm member]) — see the module docstring."""
    layout = tuple(layout)
    if not any(m[0] == "bn" for m in layout):
        raise ValueError("an in-place concatenation needs a batch-norm member to create the buffer")
    if any(a.dtype != jnp.float32 for a in arrays):
        raise TypeError("in-place concatenation is float32 only")
    outs = _concat(layout, *arrays)
    return outs[0], [(outs[1 + 2 * k], outs[2 + 2 * k]) for k in range((len(outs) - 1) // 2)]
