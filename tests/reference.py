"""Pure-JAX references written from the math, used by the tests as ground truth.

Never import jax_mps here: these must be independent of the runtime under test.
Each op family appends its own section below.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ACTIVATIONS = {
    "relu": lambda x: jnp.maximum(x, 0),
    "relu6": lambda x: jnp.clip(x, 0, 6),
    "leaky_relu": lambda x, alpha=0.01: jnp.where(x >= 0, x, alpha * x),
    "elu": lambda x, alpha=1.0: jnp.where(x > 0, x, alpha * (jnp.exp(x) - 1)),
    "sigmoid": lambda x: 1 / (1 + jnp.exp(-x)),
    "hard_sigmoid": lambda x: jnp.clip(x + 3, 0, 6) / 6,
    "tanh": jnp.tanh,
    "softplus": lambda x: jnp.logaddexp(x, 0.0),
    "softsign": lambda x: x / (1 + jnp.abs(x)),
    "gelu": lambda x, approximate=False: (
        0.5 * x * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
        if approximate else 0.5 * x * (1 + jax.scipy.special.erf(x / np.sqrt(2)))),
}


def activation(x, name, **params):
    if name is None:
        return x
    if isinstance(name, (tuple, list)):
        name, params = name
    return ACTIVATIONS[name](x, **params)


def prelu(x, alpha):
    return jnp.where(x > 0, x, alpha * x)


def softmax(x, axis=-1):
    e = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    s = x - jnp.max(x, axis=axis, keepdims=True)
    return s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))


# ---- losses and dropout ---------------------------------------------------------------------

def _loss_reduce(per_sample, weights, reduction):
    w = jnp.ones_like(per_sample) if weights is None else weights
    wl = w * per_sample
    if reduction == "none":
        return wl
    s = jnp.sum(wl)
    if reduction == "sum":
        return s
    if reduction == "mean":
        return s / per_sample.shape[0]
    count = jnp.sum(w != 0)
    return jnp.where(count > 0, s / jnp.maximum(count, 1), 0.0)


def _loss_mean_rest(e):
    return jnp.mean(e.reshape(e.shape[0], -1), axis=1)


def loss_softmax_cross_entropy(logits, labels, weights=None, label_smoothing=0.0, reduction="mean"):
    c = logits.shape[-1]
    t = jax.nn.one_hot(labels, c) if jnp.issubdtype(labels.dtype, jnp.integer) else labels
    t = (1 - label_smoothing) * t + label_smoothing / c
    return _loss_reduce(-jnp.sum(t * log_softmax(logits), axis=-1), weights, reduction)


def loss_sigmoid_cross_entropy(logits, labels, weights=None, reduction="mean"):
    e = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return _loss_reduce(_loss_mean_rest(e), weights, reduction)


def loss_mean_squared_error(pred, target, weights=None, reduction="mean"):
    return _loss_reduce(_loss_mean_rest((pred - target) ** 2), weights, reduction)


def loss_mean_absolute_error(pred, target, weights=None, reduction="mean"):
    return _loss_reduce(_loss_mean_rest(jnp.abs(pred - target)), weights, reduction)


def loss_huber_loss(pred, target, delta=1.0, weights=None, reduction="mean"):
    a = jnp.abs(pred - target)
    e = jnp.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta))
    return _loss_reduce(_loss_mean_rest(e), weights, reduction)


def loss_hinge_loss(pred, target, weights=None, reduction="mean"):
    target = lax.stop_gradient(target)
    return _loss_reduce(_loss_mean_rest(jnp.maximum(0.0, 1.0 - target * pred)), weights, reduction)


def loss_kl_divergence(log_pred, target, weights=None, reduction="mean"):
    pos = target != 0
    safe = jnp.where(pos, target, 1.0)
    e = jnp.where(pos, target * (jnp.log(safe) - log_pred), 0.0)
    return _loss_reduce(jnp.sum(e.reshape(e.shape[0], -1), axis=1), weights, reduction)


def _dropout_philox(c, k):
    """Philox4x32-10 on uint64 numpy arrays holding uint32 values; c: 4 arrays, k: 2 ints."""
    m = np.uint64(0xFFFFFFFF)
    c0, c1, c2, c3 = (np.asarray(v, np.uint64) for v in c)
    k0, k1 = np.uint64(k[0]), np.uint64(k[1])
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & m, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & m
        k0 = (k0 + np.uint64(0x9E3779B9)) & m
        k1 = (k1 + np.uint64(0xBB67AE85)) & m
    return np.stack([c0, c1, c2, c3], axis=1).reshape(-1)


def dropout_keep_mask(key_data, n, rate):
    """Keep mask of jax_mps.dropout: element i kept iff Philox(block i // 4)[i % 4] < (1 - rate) * 2^32."""
    kd = [int(v) for v in np.asarray(key_data, np.uint32)]
    k2, k3 = (kd[2], kd[3]) if len(kd) == 4 else (0, 0)
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    r = _dropout_philox((blocks & np.uint64(0xFFFFFFFF), blocks >> np.uint64(32),
                         np.full_like(blocks, k2), np.full_like(blocks, k3)), kd[:2])[:n]
    threshold = min(max(int(round((1.0 - rate) * 2.0**32)), 1), 2**32)
    return r < np.uint64(threshold)
