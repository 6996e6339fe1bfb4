"""Activations (neurons), PReLU, softmax and log-softmax: runtime kernels for both passes."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from . import _ffi
from ._sharding import SUM, Rule
from ._validate import activation_from_name, check_float, check_shape

__all__ = [
    "relu", "relu6", "leaky_relu", "elu", "sigmoid", "hard_sigmoid", "tanh", "softplus",
    "softsign", "gelu", "prelu", "activation", "softmax", "log_softmax",
]


_ROW = Rule((0,), (0,))  # element-wise: any leading axis splits; the batch axis is axis 0
_ROW2 = Rule((0, 0), (0,))


@partial(_ffi.custom_vjp, nondiff_argnums=(1, 2))
def _act(x, code, alpha):
    return _ffi.call("jax_mps_activation_fwd", _ffi.spec(x.shape, x.dtype), x, fold=[True], shard=_ROW,
                     act=code, alpha=alpha)


def _act_fwd(x, code, alpha):
    return _act(x, code, alpha), x


def _act_bwd(code, alpha, x, g):
    return (_ffi.call("jax_mps_activation_bwd", _ffi.spec(x.shape, x.dtype), x, g, fold=[True, True],
                      shard=_ROW2, act=code, alpha=alpha),)


_act.defvjp(_act_fwd, _act_bwd)


def activation(x, name, **params):
    """Apply the activation `name` (see API.md) with its parameters, e.g. ("leaky_relu", alpha=0.2);
    "prelu" takes its per-channel slope: activation(x, "prelu", alpha=a)."""
    if name == "prelu":
        if set(params) != {"alpha"}:
            raise ValueError(f"activation 'prelu' takes exactly one parameter, alpha; got {sorted(params)}")
        return prelu(x, params["alpha"])
    code, alpha = activation_from_name(name, params, "activation")
    x = jnp.asarray(x)
    check_float("x", x, name)
    if x.ndim == 0:
        return _act(x.reshape(1), code, alpha).reshape(())
    return _act(x, code, alpha)


def relu(x): return activation(x, "relu")
def relu6(x): return activation(x, "relu6")
def leaky_relu(x, alpha=0.01): return activation(x, "leaky_relu", alpha=alpha)
def elu(x, alpha=1.0): return activation(x, "elu", alpha=alpha)
def sigmoid(x): return activation(x, "sigmoid")
def hard_sigmoid(x): return activation(x, "hard_sigmoid")
def tanh(x): return activation(x, "tanh")
def softplus(x): return activation(x, "softplus")
def softsign(x): return activation(x, "softsign")
def gelu(x, approximate=False): return activation(x, "gelu", approximate=approximate)


@_ffi.custom_vjp
def _prelu(x, alpha):
    return _ffi.call("jax_mps_prelu_fwd", _ffi.spec(x.shape, x.dtype), x, alpha, fold=[True, False],
                     shard=Rule((0, None), (0,)))


def _prelu_fwd(x, alpha):
    return _prelu(x, alpha), (x, alpha)


def _prelu_bwd(res, g):
    x, alpha = res
    return _ffi.call("jax_mps_prelu_bwd", (_ffi.spec(x.shape, x.dtype), _ffi.spec(alpha.shape, alpha.dtype)),
                     x, alpha, g, shard=Rule((0, None, 0), (0, SUM)))


_prelu.defvjp(_prelu_fwd, _prelu_bwd)


def prelu(x, alpha):
    """y = x if x > 0 else alpha[c] * x, with a per-channel slope over the last axis (C,)."""
    x, alpha = jnp.asarray(x), jnp.asarray(alpha)
    check_float("x", x, "prelu")
    check_float("alpha", alpha, "prelu")
    if x.ndim < 1:
        raise ValueError(f"prelu: `x` must have rank >= 1 (..., C), got shape {x.shape}")
    check_shape("alpha", alpha, (x.shape[-1],), "prelu")
    if x.ndim == 1:  # a leading row axis, so that vmap folds into rows, never into the channels
        return _prelu(x[None], alpha.astype(x.dtype))[0]
    return _prelu(x, alpha.astype(x.dtype))


@partial(_ffi.custom_vjp, nondiff_argnums=(1, 2))
def _softmax(x, axis, log):
    fold = [axis != 0]
    return _ffi.call("jax_mps_softmax_fwd", _ffi.spec(x.shape, x.dtype), x, fold=fold if axis else None,
                     shard=_ROW if axis else None, axis=axis, log=log)


def _softmax_fwd(x, axis, log):
    y = _softmax(x, axis, log)
    return y, y


def _softmax_bwd(axis, log, y, g):
    return (_ffi.call("jax_mps_softmax_bwd", _ffi.spec(y.shape, y.dtype), y, g,
                      fold=[True, True] if axis else None, shard=_ROW2 if axis else None, axis=axis, log=log),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _softmax_entry(x, axis, log, op):
    x = jnp.asarray(x)
    check_float("x", x, op)
    if not isinstance(axis, int) or not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(f"{op}: `axis` must be an int in [-{x.ndim}, {x.ndim}), got {axis!r} for shape {x.shape}")
    if x.ndim == 0:
        raise ValueError(f"{op}: `x` must have rank >= 1, got a scalar")
    return _softmax(x, axis % x.ndim, int(log))


def softmax(x, axis=-1):
    return _softmax_entry(x, axis, False, "softmax")


def log_softmax(x, axis=-1):
    return _softmax_entry(x, axis, True, "log_softmax")
