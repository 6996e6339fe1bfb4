"""Batch norm (training / inference), instance norm and local response norm: runtime kernels for
both passes. Channels are the last axis."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi
from ._validate import ACT_NONE, activation_code, check_float, check_shape, grad_from_output

__all__ = ["batch_norm", "batch_norm_inference", "instance_norm", "local_response_norm"]


def _vec(x, c):
    return _ffi.spec((c,), x.dtype)


def _from_output(code, alpha):
    # Without an activation the backward needs neither y nor z: keep nothing extra.
    return code != ACT_NONE and grad_from_output(code, alpha)


# ---- batch norm, training mode ----
# Statistics are reduced over the batch, so vmap never folds (fold=None: one call per element).

@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _bn(x, scale, bias, eps, code, alpha):
    return _bn_fwd(x, scale, bias, eps, code, alpha)[0]


def _bn_fwd(x, scale, bias, eps, code, alpha):
    c = x.shape[-1]
    y, mean, var, rstd = _ffi.call("jax_mps_batch_norm_fwd", (_ffi.spec(x.shape, x.dtype), _vec(x, c), _vec(x, c),
                                                              _vec(x, c)),
                                   x, scale, bias, epsilon=eps, act=code, alpha=alpha)
    # y is kept only when the activation's derivative is a function of it; otherwise z is recomputed.
    return (y, mean, var), (x, scale, bias, mean, rstd, y if _from_output(code, alpha) else None)


def _bn_bwd(eps, code, alpha, res, cts):
    x, scale, bias, mean, rstd, y = res
    gy, gmean, gvar = cts
    return _ffi.call("jax_mps_batch_norm_bwd", (_ffi.spec(x.shape, x.dtype), _vec(x, x.shape[-1]),
                                                _vec(x, x.shape[-1])),
                     x, scale, bias, mean, rstd, x if y is None else y, gy, gmean, gvar,
                     act=code, alpha=alpha, from_output=y is not None)


_bn.defvjp(_bn_fwd, _bn_bwd)


def _epsilon(epsilon, op):
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)) \
            or not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"{op}: `epsilon` must be a finite number >= 0, got {epsilon!r}")
    return float(epsilon)


def _check_x(x, op, min_rank, layout):
    x = jnp.asarray(x)
    check_float("x", x, op)
    if x.ndim < min_rank:
        raise ValueError(f"{op}: `x` must have rank >= {min_rank} {layout}, got shape {x.shape}")
    return x


def _params(x, op, **vs):
    out = []
    for name, v in vs.items():
        v = jnp.asarray(v)
        check_float(name, v, op)
        check_shape(name, v, (x.shape[-1],), op)
        out.append(v.astype(x.dtype))
    return out


def batch_norm(x, scale, bias, *, epsilon=1e-5, activation=None):
    """Training-mode batch norm over all axes but the last: returns (y, batch mean, biased batch var).

    y = act((x - mean) / sqrt(var + epsilon) * scale + bias); all three outputs are differentiable.
    """
    op = "batch_norm"
    x = _check_x(x, op, 2, "(..., C)")
    scale, bias = _params(x, op, scale=scale, bias=bias)
    eps = _epsilon(epsilon, op)
    code, alpha = activation_code(activation, op)
    if x.size == 0:
        raise ValueError(f"{op}: `x` needs at least one element per channel, got shape {x.shape}")
    return _bn(x, scale, bias, eps, code, alpha)


# ---- batch norm, inference mode ----
# The forward is per row (folds under vmap); the parameter gradients are reduced over the batch.

@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _bni(x, scale, bias, mean, var, eps, code, alpha):
    return _ffi.call("jax_mps_batch_norm_inference_fwd", _ffi.spec(x.shape, x.dtype), x, scale, bias, mean, var,
                     fold=[True, False, False, False, False], epsilon=eps, act=code, alpha=alpha)


def _bni_fwd(x, scale, bias, mean, var, eps, code, alpha):
    y = _bni(x, scale, bias, mean, var, eps, code, alpha)
    return y, (x, scale, bias, mean, var, y if _from_output(code, alpha) else None)


def _bni_bwd(eps, code, alpha, res, g):
    x, scale, bias, mean, var, y = res
    c = _vec(x, x.shape[-1])
    return _ffi.call("jax_mps_batch_norm_inference_bwd", (_ffi.spec(x.shape, x.dtype), c, c, c, c),
                     x, scale, bias, mean, var, x if y is None else y, g,
                     epsilon=eps, act=code, alpha=alpha, from_output=y is not None)


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

@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _in(x, scale, bias, eps):
    return _in_fwd(x, scale, bias, eps)[0]


def _in_fwd(x, scale, bias, eps):
    st = _ffi.spec((x.shape[0], x.shape[-1]), x.dtype)
    y, mean, rstd = _ffi.call("jax_mps_instance_norm_fwd", (_ffi.spec(x.shape, x.dtype), st, st), x, scale, bias,
                              fold=[True, False, False], epsilon=eps)
    return y, (x, scale, mean, rstd)


def _in_bwd(eps, res, g):
    x, scale, mean, rstd = res
    c = _vec(x, x.shape[-1])
    return _ffi.call("jax_mps_instance_norm_bwd", (_ffi.spec(x.shape, x.dtype), c, c), x, scale, mean, rstd, g)


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

@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, size, alpha, beta, k):
    return _ffi.call("jax_mps_local_response_norm_fwd", _ffi.spec(x.shape, x.dtype), x, fold=[True],
                     size=size, alpha=alpha, beta=beta, k=k)


def _lrn_fwd(x, size, alpha, beta, k):
    return _lrn(x, size, alpha, beta, k), x


def _lrn_bwd(size, alpha, beta, k, x, g):
    return (_ffi.call("jax_mps_local_response_norm_bwd", _ffi.spec(x.shape, x.dtype), x, g, fold=[True, True],
                      size=size, alpha=alpha, beta=beta, k=k),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


def _real(name, v, op, ok, what):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) \
            or not ok(v):
        raise ValueError(f"{op}: `{name}` must be a finite number{what}, got {v!r}")
    return float(v)


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Across-channel LRN over the last axis (Caffe/torch):
    y_c = x_c / (k + alpha/size * sum_{|c'-c| <= size//2} x_c'^2)^beta."""
    op = "local_response_norm"
    x = _check_x(x, op, 1, "(..., C)")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"{op}: `size` must be a positive odd int, got {size!r}")
    alpha = _real("alpha", alpha, op, lambda v: v >= 0, " >= 0")
    beta = _real("beta", beta, op, lambda v: True, "")
    k = _real("k", k, op, lambda v: v > 0, " > 0")
    if x.size == 0:
        return x
    # Rank 1 gets a leading row axis so that vmap folding stacks rows, never channels.
    x2 = x.reshape((1,) + x.shape) if x.ndim == 1 else x
    return _lrn(x2, int(size), alpha, beta, k).reshape(x.shape)
