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


# ---- normalization (batch / instance / local response norm), channels last ----

def norm_batch_norm(x, scale, bias, epsilon=1e-5, activation=None):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    y = (x - mean) / jnp.sqrt(var + epsilon) * scale + bias
    return globals()["activation"](y, activation), mean, var


def norm_batch_norm_inference(x, scale, bias, mean, var, epsilon=1e-5, activation=None):
    y = (x - mean) / jnp.sqrt(var + epsilon) * scale + bias
    return globals()["activation"](y, activation)


def norm_instance_norm(x, scale, bias, epsilon=1e-5):
    axes = tuple(range(1, x.ndim - 1))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + epsilon) * scale + bias


def norm_local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    h = size // 2
    sq = jnp.pad(jnp.square(x), [(0, 0)] * (x.ndim - 1) + [(h, h)])
    c = x.shape[-1]
    win = sum(sq[..., i:i + c] for i in range(size))
    return x / (k + alpha / size * win) ** beta
