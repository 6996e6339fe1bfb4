"""Batch norm (training / inference), instance norm and local response norm: runtime kernels for
both passes. Channels are the last axis."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi
from ._sharding import SUM, Rule
from ._validate import (ACT_NONE, MAX_INT_ATTR, activation_code, check_float, check_shape, grad_from_output, is_int,
                        static_real)

__all__ = ["batch_norm", "batch_norm_inference", "instance_norm", "local_response_norm"]


def _vec(v):
    """The result spec of a per-channel operand's gradient: its shape and dtype."""
    return _ffi.spec(v.shape, v.dtype)


def _stat(*shape):
    # Statistics that the backward reads (mean, rstd) stay float32 whatever x's dtype: rounded to
    # bfloat16 they would shift every normalized value and dx with them.
    return _ffi.spec(shape, jnp.float32)


def _from_output(code, alpha, dtype):
    # Without an activation the backward needs neither y nor z: keep nothing extra. A half y is
    # the output rounded, and the derivative at a kink would be read off the wrong side of it
    # (relu6: z = 5.9995 rounds to y = 6): there z is recomputed in float32 from x and the
    # float32 statistics instead.
    return code != ACT_NONE and grad_from_output(code, alpha) and dtype == jnp.float32


# ---- batch norm, training mode ----
# Statistics are reduced over the batch, so vmap never folds (fold=None: one call per element).
#
# With the batch split over mesh axes (batch-sharded jit, or axis_name inside shard_map) the
# statistics are those of the global batch, from the kernels' per-shard ones and collectives:
# - forward: the per-shard mean and biased variance (batch_norm_fwd on the shard) combine exactly
#   as equal-sized groups do (mean of means; mean of variances plus the variance of the means,
#   which avoids E[x^2] - mean^2 cancellation); the inference kernel then normalizes the shard
#   with the global statistics.
# - backward: batch_norm_bwd on the shard with the global mean / rstd gives the per-shard sums
#   dbias = sum dz and dscale = rstd * sum dz (x - mean), which psum to the global ones. dx is
#   a*dz + b*(x - mean) + d with per-channel b and d built from those sums and the mean / var
#   cotangents divided by the element count; a second batch_norm_bwd call on the shard with
#   cotangents rewritten so that its local b and d equal the global ones gives dx exactly.
_BN_FWD = Rule((0, None, None), (0, None, None, None))
_BN_BWD = Rule((0, None, None, None, None, 0, 0, None, None), (0, None, None))


def _axes(axis_name):
    return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


def _f32(specs):
    return [jax.ShapeDtypeStruct(sp.shape, jnp.float32) for sp in specs]


def _bn_fwd_body(eps, code, alpha):
    def body(axes, specs, x, scale, bias):
        fwd = partial(_ffi.kernel, "jax_mps_batch_norm_fwd", epsilon=eps, act=code, alpha=alpha)
        if not axes:
            return fwd(specs, x, scale, bias)
        # Statistics stay float32 here (as inside the fused kernel) whatever x's dtype: a mean
        # rounded to bfloat16 would shift every normalized value.
        _, m, v, _ = fwd([specs[0]] + _f32(specs[1:]), x, scale, bias)
        mean = jax.lax.pmean(m, axes)
        var = jax.lax.pmean(v, axes) + jax.lax.pmean(jnp.square(m - mean), axes)
        rstd = jax.lax.rsqrt(var + np.float32(eps))
        y, = _ffi.kernel("jax_mps_batch_norm_inference_fwd", specs[:1], x, scale, bias, mean, var,
                         epsilon=eps, act=code, alpha=alpha)
        return [y] + [a.astype(sp.dtype) for a, sp in zip((mean, var, rstd), specs[1:])]
    return body


def _bn_bwd_body(code, alpha, from_output, manual):
    def body(axes, specs, x, scale, bias, mean, rstd, s, gy, gmean, gvar):
        bwd = partial(_ffi.kernel, "jax_mps_batch_norm_bwd", act=code, alpha=alpha, from_output=from_output)
        if not axes:
            return bwd(specs, x, scale, bias, mean, rstd, s, gy, gmean, gvar)
        _, dscale, dbias = bwd([specs[0]] + _f32(specs[1:]), x, scale, bias, mean, rstd, s, gy, gmean, gvar)
        k = jax.lax.psum(1, axes)  # shards of equal size: local count / global count = 1 / k
        gscale, gbias = jax.lax.psum(dscale, axes), jax.lax.psum(dbias, axes)
        f32 = lambda a: a.astype(jnp.float32)
        g = f32(scale) * f32(rstd)
        gmean_l = g * (dbias - gbias / k) + f32(gmean) / k
        gvar_l = 0.5 * g * f32(rstd) * (dscale - gscale / k) + f32(gvar) / k
        dx, _, _ = bwd([specs[0]] + _f32(specs[1:]), x, scale, bias, mean, rstd, s, gy, gmean_l, gvar_l)
        if not manual:  # in shard_map JAX sums the per-block parameter cotangents itself (custom_vjp casts)
            dscale, dbias = gscale, gbias
        return dx, dscale.astype(specs[1].dtype), dbias.astype(specs[2].dtype)
    return body


@partial(_ffi.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _bn(x, scale, bias, eps, code, alpha, axes):
    return _bn_fwd(x, scale, bias, eps, code, alpha, axes)[0]


def _bn_fwd(x, scale, bias, eps, code, alpha, axes):
    c = x.shape[-1]
    y, mean, var, rstd = _ffi.composite(_bn_fwd_body(eps, code, alpha),
                                        (_ffi.spec(x.shape, x.dtype), _stat(c), _stat(c), _stat(c)),
                                        x, scale, bias, shard=_BN_FWD, axes=axes)
    # y is kept only when the activation's derivative is a function of it; otherwise z is recomputed.
    return (y, mean.astype(x.dtype), var.astype(x.dtype)), \
        (x, scale, bias, mean, rstd, y if _from_output(code, alpha, x.dtype) else None)


def _bn_bwd(eps, code, alpha, axes, res, cts):
    x, scale, bias, mean, rstd, y = res
    gy, gmean, gvar = cts
    return _ffi.composite(_bn_bwd_body(code, alpha, y is not None, axes is not None),
                          (_ffi.spec(x.shape, x.dtype), _vec(scale), _vec(bias)),
                          x, scale, bias, mean, rstd, x if y is None else y, gy, gmean, gvar, shard=_BN_BWD,
                          axes=axes)


_bn.defvjp(_bn_fwd, _bn_bwd)


def _epsilon(epsilon, op):
    return static_real("epsilon", epsilon, op, lambda v: v >= 0, " >= 0")


def _check_x(x, op, min_rank, layout):
    x = jnp.asarray(x)
    check_float("x", x, op)
    if x.ndim < min_rank:
        raise ValueError(f"{op}: `x` must have rank >= {min_rank} {layout}, got shape {x.shape}")
    return x


def _params(x, op, **vs):
    # A parameter in x's dtype or float32 is used as it is (float32 ones with half x are not
    # rounded); any other (the other half type) is widened to float32.
    out = []
    for name, v in vs.items():
        v = jnp.asarray(v)
        check_float(name, v, op)
        check_shape(name, v, (x.shape[-1],), op)
        out.append(v if v.dtype in (x.dtype, jnp.float32) else v.astype(jnp.float32))
    return out


def batch_norm(x, scale, bias, *, epsilon=1e-5, activation=None, axis_name=None):
    """Training-mode batch norm over all axes but the last: returns (y, batch mean, biased batch var).

    y = act((x - mean) / sqrt(var + epsilon) * scale + bias); all three outputs are differentiable.
    axis_name: inside shard_map, a mesh axis name (or a tuple of them) over which the statistics
    are synchronised, so they are those of the whole batch (as Flax's BatchNorm). Under jit with
    a batch-sharded x the statistics are always those of the global batch.
    """
    op = "batch_norm"
    x = _check_x(x, op, 2, "(..., C)")
    scale, bias = _params(x, op, scale=scale, bias=bias)
    eps = _epsilon(epsilon, op)
    code, alpha = activation_code(activation, op)
    if x.size == 0:
        raise ValueError(f"{op}: `x` needs at least one element per channel, got shape {x.shape}")
    if axis_name is not None and not (isinstance(axis_name, str) or (
            isinstance(axis_name, (tuple, list)) and axis_name and all(isinstance(a, str) for a in axis_name))):
        raise TypeError(f"{op}: `axis_name` must be None, a mesh axis name or a tuple of them, got {axis_name!r}")
    return _bn(x, scale, bias, eps, code, alpha, None if axis_name is None else _axes(axis_name))


# ---- batch norm, inference mode ----
# The forward is per row (folds under vmap); the parameter gradients are reduced over the batch.

@partial(_ffi.custom_vjp, nondiff_argnums=(5, 6, 7))
def _bni(x, scale, bias, mean, var, eps, code, alpha):
    return _ffi.call("jax_mps_batch_norm_inference_fwd", _ffi.spec(x.shape, x.dtype), x, scale, bias, mean, var,
                     fold=[True, False, False, False, False], shard=Rule((0, None, None, None, None), (0,)),
                     epsilon=eps, act=code, alpha=alpha)


def _bni_fwd(x, scale, bias, mean, var, eps, code, alpha):
    y = _bni(x, scale, bias, mean, var, eps, code, alpha)
    return y, (x, scale, bias, mean, var, y if _from_output(code, alpha, x.dtype) else None)


def _bni_bwd(eps, code, alpha, res, g):
    x, scale, bias, mean, var, y = res
    return _ffi.call("jax_mps_batch_norm_inference_bwd",
                     (_ffi.spec(x.shape, x.dtype), _vec(scale), _vec(bias), _vec(mean), _vec(var)),
                     x, scale, bias, mean, var, x if y is None else y, g,
                     shard=Rule((0, None, None, None, None, 0, 0), (0, SUM, SUM, SUM, SUM)), epsilon=eps, act=code, alpha=alpha, from_output=y is not None)


_bni.defvjp(_bni_fwd, _bni_bwd)


def batch_norm_inference(x, scale, bias, mean, var, *, epsilon=1e-5, activation=None):
    """y = act((x - mean) / sqrt(var + epsilon) * scale + bias) with given per-channel statistics."""
    op = "batch_norm_inference"
    x = _check_x(x, op, 2, "(..., C)")
    scale, bias, mean, var = _params(x, op, scale=scale, bias=bias, mean=mean, var=var)
    eps = _epsilon(epsilon, op)
    code, alpha = activation_code(activation, op)
    if x.size == 0:
        raise ValueError(f"{op}: `x` needs at least one element per channel, got shape {x.shape}")
    return _bni(x, scale, bias, mean, var, eps, code, alpha)


# ---- instance norm ----
# Statistics are per sample, so the forward folds under vmap; the backward reduces dscale/dbias
# over the batch, so it runs once per vmapped element.

@partial(_ffi.custom_vjp, nondiff_argnums=(3,))
def _in(x, scale, bias, eps):
    return _in_fwd(x, scale, bias, eps)[0]


def _in_fwd(x, scale, bias, eps):
    st = _stat(x.shape[0], x.shape[-1])
    y, mean, rstd = _ffi.call("jax_mps_instance_norm_fwd", (_ffi.spec(x.shape, x.dtype), st, st), x, scale, bias,
                              fold=[True, False, False], shard=Rule((0, None, None), (0, 0, 0)), epsilon=eps)
    return y, (x, scale, bias, mean, rstd)


def _in_bwd(eps, res, g):
    x, scale, bias, mean, rstd = res  # bias: only its dtype, for dbias's
    return _ffi.call("jax_mps_instance_norm_bwd", (_ffi.spec(x.shape, x.dtype), _vec(scale), _vec(bias)),
                     x, scale, mean, rstd, g, shard=Rule((0, None, 0, 0, 0), (0, SUM, SUM)))


_in.defvjp(_in_fwd, _in_bwd)


def instance_norm(x, scale, bias, *, epsilon=1e-5):
    """Normalize each sample and channel over the spatial axes of x (N, ..., C), then scale + bias."""
    op = "instance_norm"
    x = _check_x(x, op, 3, "(N, ..., C)")
    scale, bias = _params(x, op, scale=scale, bias=bias)
    eps = _epsilon(epsilon, op)
    if any(d == 0 for d in x.shape[1:-1]):
        raise ValueError(f"{op}: `x` needs at least one spatial element, got shape {x.shape}")
    if x.size == 0:
        return x
    return _in(x, scale, bias, eps)


# ---- local response norm ----

@partial(_ffi.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, size, alpha, beta, k):
    return _ffi.call("jax_mps_local_response_norm_fwd", _ffi.spec(x.shape, x.dtype), x, fold=[True],
                     shard=Rule((0,), (0,)),
                     size=size, alpha=alpha, beta=beta, k=k)


def _lrn_fwd(x, size, alpha, beta, k):
    return _lrn(x, size, alpha, beta, k), x


def _lrn_bwd(size, alpha, beta, k, x, g):
    return (_ffi.call("jax_mps_local_response_norm_bwd", _ffi.spec(x.shape, x.dtype), x, g, fold=[True, True],
                      shard=Rule((0, 0), (0,)),
                      size=size, alpha=alpha, beta=beta, k=k),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Across-channel LRN over the last axis (Caffe/torch):
    y_c = x_c / (k + alpha/size * sum_{|c'-c| <= size//2} x_c'^2)^beta."""
    op = "local_response_norm"
    x = _check_x(x, op, 1, "(..., C)")
    if not is_int(size) or size < 1 or size % 2 == 0 or size > MAX_INT_ATTR:
        raise ValueError(f"{op}: `size` must be a positive odd int < 2**31, got {size!r}")
    alpha = static_real("alpha", alpha, op, lambda v: v >= 0, " >= 0")
    beta = static_real("beta", beta, op)
    k = static_real("k", k, op, lambda v: v > 0, " > 0")
    if x.size == 0:
        return x
    # Rank 1 gets a leading row axis so that vmap folding stacks rows, never channels.
    x2 = x.reshape((1,) + x.shape) if x.ndim == 1 else x
    return _lrn(x2, int(size), alpha, beta, k).reshape(x.shape)
