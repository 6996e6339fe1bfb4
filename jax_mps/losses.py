"""Losses: per-sample values and the reduction in one runtime kernel, every gradient in another.

Every loss is computed on an (N, D) view: N samples, D values per sample (classes for softmax
cross entropy and KL, the flattened non-batch axes for the element-wise losses).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi
from ._runtime import contract
from ._sharding import Rule
from ._validate import check_float, check_rank, check_shape, int32_ids, static_real

__all__ = [
    "softmax_cross_entropy", "sigmoid_cross_entropy", "mean_squared_error", "mean_absolute_error",
    "huber_loss", "hinge_loss", "kl_divergence",
]

# Loss and reduction codes come from the runtime (csrc/runtime/losses.h).
_K = contract.LOSSES
_SOFTMAX_CE, _SIGMOID_CE, _MSE, _MAE, _HUBER, _HINGE, _KL = (
    _K["softmax_cross_entropy"], _K["sigmoid_cross_entropy"], _K["mse"], _K["mae"], _K["huber"], _K["hinge"],
    _K["kl_divergence"])
_REDUCTIONS = dict(contract.REDUCTIONS)
_NONE, _SUM, _MEAN, _BY_NONZERO = (_REDUCTIONS[k] for k in ("none", "sum", "mean", "sum_by_nonzero_weights"))

# Batch sharding: samples split on axis 0. A reduced value is combined across shards from the
# per-shard sums (psum, then divided by the global sample / non-zero-weight count), and its
# backward scales the cotangent by the same global divisor; so values and gradients equal those
# of the whole batch on one device.


def _batch(a):
    return 0 if a.shape[0] else None  # empty weights / lse (none given, none kept) stay replicated


def _divisor(axes, reduction, weights, n_local):
    """Global divisor of a reduced loss over the batch split on `axes` (0 -> the value is 0)."""
    if reduction == _MEAN or (reduction == _BY_NONZERO and weights.shape[0] == 0):
        return jnp.float32(n_local) * jax.lax.psum(1, axes)
    if reduction == _BY_NONZERO:
        return jax.lax.psum(jnp.sum(weights != 0, dtype=jnp.float32), axes)
    return jnp.float32(1.0)


def _fwd_body(kind, reduction, param):
    def body(axes, specs, pred, target, weights):
        if not axes or reduction == _NONE:
            return _ffi.kernel("jax_mps_loss_fwd", specs, pred, target, weights, kind=kind, reduction=reduction,
                               param=param)
        s, lse = _ffi.kernel("jax_mps_loss_fwd", specs, pred, target, weights, kind=kind, reduction=_SUM,
                             param=param)
        div = _divisor(axes, reduction, weights, pred.shape[0])
        s = jax.lax.psum(s.astype(jnp.float32), axes)
        return jnp.where(div > 0, s / jnp.maximum(div, 1.0), 0.0).astype(specs[0].dtype), lse
    return body


def _bwd_body(kind, reduction, param):
    def body(axes, specs, pred, target, weights, lse, g):
        if not axes or reduction == _NONE:
            return _ffi.kernel("jax_mps_loss_bwd", specs, pred, target, weights, lse, g, kind=kind,
                               reduction=reduction, param=param)
        div = _divisor(axes, reduction, weights, pred.shape[0])
        g = jnp.where(div > 0, g.astype(jnp.float32) / jnp.maximum(div, 1.0), 0.0).astype(g.dtype)
        return _ffi.kernel("jax_mps_loss_bwd", specs, pred, target, weights, lse, g, kind=kind, reduction=_SUM,
                           param=param)
    return body


def _loss_call(pred, target, weights, kind, reduction, param, keep_lse):
    """Returns (value, lse): lse holds the softmax CE row log-sum-exps when keep_lse, else it is empty."""
    n = pred.shape[0]
    none = reduction == _NONE
    specs = (_ffi.spec((n,) if none else (1,), pred.dtype), _ffi.spec((n if keep_lse else 0,), jnp.float32))
    rule = Rule((0, 0, _batch(weights)), (0 if none else None, 0 if keep_lse else None))
    out, lse = _ffi.composite(_fwd_body(kind, reduction, param), specs, pred, target, weights,
                              fold=[True, True, True] if none else None,  # a reduced value mixes the whole batch
                              shard=rule)
    return (out if none else out.reshape(())), lse


@partial(_ffi.custom_vjp, nondiff_argnums=(3, 4, 5))
def _loss(pred, target, weights, kind, reduction, param):
    return _loss_call(pred, target, weights, kind, reduction, param, False)[0]


def _loss_fwd(pred, target, weights, kind, reduction, param):
    # Softmax CE keeps the row log-sum-exps (N floats): the backward then needs one exp pass per row.
    out, lse = _loss_call(pred, target, weights, kind, reduction, param, kind == _SOFTMAX_CE)
    return out, (pred, target, weights, lse)


def _loss_bwd(kind, reduction, param, res, g):
    pred, target, weights, lse = res
    n, d = pred.shape
    none = reduction == _NONE
    int_labels = jnp.issubdtype(target.dtype, jnp.integer)
    wants_dt = not int_labels and kind != _HINGE  # integer labels and hinge targets: not differentiated
    specs = (_ffi.spec(pred.shape, pred.dtype),
             _ffi.spec((n, d) if wants_dt else (n, 0), pred.dtype),
             _ffi.spec(weights.shape, weights.dtype))
    rule = Rule((0, 0, _batch(weights), _batch(lse), 0 if none else None), (0, 0, _batch(weights)))
    dpred, dtarget, dweights = _ffi.composite(
        _bwd_body(kind, reduction, param), specs, pred, target, weights, lse, g if none else g.reshape(1),
        fold=[True] * 5 if none else None, shard=rule)
    if int_labels:
        dtarget = np.zeros(target.shape, jax.dtypes.float0)
    elif not wants_dt:
        dtarget = jnp.zeros_like(target)
    return dpred, dtarget, dweights


_loss.defvjp(_loss_fwd, _loss_bwd)


def _reduction(reduction, op):
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: unknown reduction {reduction!r}; expected one of {list(_REDUCTIONS)}")
    return _REDUCTIONS[reduction]


def _weights(weights, n, dtype, op):
    if weights is None:
        return jnp.zeros((0,), dtype)  # empty: all ones, handled in the kernel
    weights = jnp.asarray(weights)
    check_float("weights", weights, op)
    check_shape("weights", weights, (n,), op)
    return weights.astype(dtype)


def _float_arg(name, x, op):
    x = jnp.asarray(x)
    check_float(name, x, op)
    return x


def _pair(pred, target, pname, tname, op, rank=None):
    pred = _float_arg(pname, pred, op)
    target = _float_arg(tname, target, op)
    if rank is not None:
        check_rank(pname, pred, rank, "(N, C)", op)
    elif pred.ndim < 1:
        raise ValueError(f"{op}: `{pname}` must have rank >= 1 (N, ...), got a scalar")
    check_shape(tname, target, pred.shape, op)
    return pred, target.astype(pred.dtype)


def _elementwise(kind, pred, target, weights, reduction, param, op, pname="pred", tname="target"):
    red = _reduction(reduction, op)
    pred, target = _pair(pred, target, pname, tname, op)
    n = pred.shape[0]
    d = int(np.prod(pred.shape[1:], dtype=np.int64))
    w = _weights(weights, n, pred.dtype, op)
    return _loss(pred.reshape(n, d), target.reshape(n, d), w, kind, red, float(param))


def softmax_cross_entropy(logits, labels, *, weights=None, label_smoothing=0.0, reduction="mean"):
    """Cross entropy of softmax(logits) (N, C) against int class ids (N,) or probabilities (N, C).

    Smoothed targets are (1 - label_smoothing) * labels + label_smoothing / C (as torch/optax).
    """
    op = "softmax_cross_entropy"
    red = _reduction(reduction, op)
    logits = _float_arg("logits", logits, op)
    check_rank("logits", logits, 2, "(N, C)", op)
    n, c = logits.shape
    if c < 1:
        raise ValueError(f"{op}: `logits` must have at least one class, got shape {logits.shape}")
    label_smoothing = static_real("label_smoothing", label_smoothing, op, lambda v: 0.0 <= v <= 1.0, " in [0, 1]")
    labels = jnp.asarray(labels) if not isinstance(labels, jax.Array) else labels
    if jnp.issubdtype(labels.dtype, jnp.integer):
        check_shape("labels", labels, (n,), op)
        try:
            concrete = np.asarray(labels)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            concrete = None
        if concrete is not None and concrete.size and (concrete.min() < 0 or concrete.max() >= c):
            raise ValueError(f"{op}: integer `labels` must be class ids in [0, {c}), got values in "
                             f"[{concrete.min()}, {concrete.max()}]")
        labels = int32_ids("labels", labels, op)
    else:
        check_float("labels", labels, op)
        if labels.shape != (n, c):
            raise ValueError(f"{op}: `labels` must have shape ({n},) (int class ids) or {(n, c)} "
                             f"(probabilities), got {labels.shape}")
        labels = labels.astype(logits.dtype)
    w = _weights(weights, n, logits.dtype, op)
    return _loss(logits, labels, w, _SOFTMAX_CE, red, label_smoothing)


def sigmoid_cross_entropy(logits, labels, *, weights=None, reduction="mean"):
    """Binary cross entropy of sigmoid(logits) against labels in [0, 1] (same shape as logits)."""
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
        labels = labels.astype(jnp.asarray(logits).dtype)
    return _elementwise(_SIGMOID_CE, logits, labels, weights, reduction, 0.0, "sigmoid_cross_entropy",
                        "logits", "labels")


def mean_squared_error(pred, target, *, weights=None, reduction="mean"):
    """(pred - target)^2, averaged over the non-batch axes per sample."""
    return _elementwise(_MSE, pred, target, weights, reduction, 0.0, "mean_squared_error")


def mean_absolute_error(pred, target, *, weights=None, reduction="mean"):
    """|pred - target|, averaged over the non-batch axes per sample."""
    return _elementwise(_MAE, pred, target, weights, reduction, 0.0, "mean_absolute_error")


def huber_loss(pred, target, *, delta=1.0, weights=None, reduction="mean"):
    """0.5 r^2 where |r| <= delta, else delta * (|r| - delta / 2), with r = pred - target (torch/optax)."""
    delta = static_real("delta", delta, "huber_loss", lambda v: v > 0, " > 0")
    return _elementwise(_HUBER, pred, target, weights, reduction, delta, "huber_loss")


def hinge_loss(pred, target, *, weights=None, reduction="mean"):
    """max(0, 1 - target * pred) with target in {-1, 1}; the target is not differentiated."""
    target = jnp.asarray(target)
    if jnp.issubdtype(target.dtype, jnp.integer):
        target = target.astype(jnp.asarray(pred).dtype)
    return _elementwise(_HINGE, pred, target, weights, reduction, 0.0, "hinge_loss")


def kl_divergence(log_pred, target, *, weights=None, reduction="mean"):
    """sum over the non-batch axes of target * (log(target) - log_pred), 0 where target == 0
    (torch KLDivLoss with log_target=False); its gradient w.r.t. target is NaN there, as optax's
    and torch's."""
    return _elementwise(_KL, log_pred, target, weights, reduction, 0.0, "kl_divergence", "log_pred", "target")
