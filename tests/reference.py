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


# ---- pooling and resampling (NHWC / NLC), written with lax.reduce_window and gathers ----------

def _pool_pads(x, window, stride, padding, nsp):
    window = (window,) * nsp if isinstance(window, int) else tuple(window)
    stride = window if stride is None else ((stride,) * nsp if isinstance(stride, int) else tuple(stride))
    if isinstance(padding, int):
        padding = ((padding, padding),) * nsp
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(x.shape[1:1 + nsp], window, stride, padding)
    else:
        pads = tuple(tuple(p) for p in padding)
    return (1,) + window + (1,), (1,) + stride + (1,), ((0, 0),) + tuple(pads) + ((0, 0),)


def pool_max(x, window, stride=None, padding="VALID"):
    nsp = x.ndim - 2
    w, s, p = _pool_pads(x, window, stride, padding, nsp)
    return lax.reduce_window(x, -jnp.inf, lax.max, w, s, p)


def pool_avg(x, window, stride=None, padding="VALID", count_include_pad=False):
    nsp = x.ndim - 2
    w, s, p = _pool_pads(x, window, stride, padding, nsp)
    total = lax.reduce_window(x, 0.0, lax.add, w, s, p)
    if count_include_pad:
        return total / float(np.prod(w))
    count = lax.reduce_window(jnp.ones(x.shape[1:-1], x.dtype)[None, ..., None], 0.0, lax.add, w, s, p)
    return total / count


def pool_global_avg(x):
    return jnp.mean(x, axis=(1, 2))


def _resample_linear_taps(n_in, scale):
    # torch align_corners=False: src = (dst + 0.5) / scale - 0.5, clamped at 0.
    src = np.maximum((np.arange(n_in * scale) + 0.5) / scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resample_upsample2d(x, scale, method="nearest"):
    sh, sw = (scale, scale) if isinstance(scale, int) else scale
    h, w = x.shape[1], x.shape[2]
    if method == "nearest":
        return x[:, np.arange(h * sh) // sh][:, :, np.arange(w * sw) // sw]
    h0, h1, lh = _resample_linear_taps(h, sh)
    w0, w1, lw = _resample_linear_taps(w, sw)
    lh = lh[None, :, None, None]
    lw = lw[None, None, :, None]
    rows = x[:, h0] * (1 - lh) + x[:, h1] * lh
    return rows[:, :, w0] * (1 - lw) + rows[:, :, w1] * lw
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
