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


# ---- convolution and dense (conv family) ----

def conv_conv2d(x, w, b=None, *, stride=1, padding="SAME", dilation=1, groups=1, activation=None):
    st = (stride,) * 2 if isinstance(stride, int) else tuple(stride)
    dil = (dilation,) * 2 if isinstance(dilation, int) else tuple(dilation)
    pad = ((padding, padding),) * 2 if isinstance(padding, int) else padding
    y = lax.conv_general_dilated(x, w, st, pad, rhs_dilation=dil, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=groups, precision=lax.Precision.HIGHEST)
    if b is not None:
        y = y + b
    return globals()["activation"](y, activation)


def conv_conv1d(x, w, b=None, *, stride=1, padding="SAME", dilation=1, groups=1, activation=None):
    st = (stride,) if isinstance(stride, int) else tuple(stride)
    dil = (dilation,) if isinstance(dilation, int) else tuple(dilation)
    pad = ((padding, padding),) if isinstance(padding, int) else padding
    y = lax.conv_general_dilated(x, w, st, pad, rhs_dilation=dil, dimension_numbers=("NWC", "WIO", "NWC"),
                                 feature_group_count=groups, precision=lax.Precision.HIGHEST)
    if b is not None:
        y = y + b
    return globals()["activation"](y, activation)


def conv_conv_transpose2d(x, w, b=None, *, stride=1, padding="SAME", dilation=1, activation=None):
    st = (stride,) * 2 if isinstance(stride, int) else tuple(stride)
    dil = (dilation,) * 2 if isinstance(dilation, int) else tuple(dilation)
    pad = ((padding, padding),) * 2 if isinstance(padding, int) else padding
    y = lax.conv_transpose(x, w, st, pad, rhs_dilation=dil, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                           precision=lax.Precision.HIGHEST)
    if b is not None:
        y = y + b
    return globals()["activation"](y, activation)


def conv_dense(x, w, b=None, *, activation=None):
    y = jnp.einsum("...i,io->...o", x, w, precision=lax.Precision.HIGHEST)
    if b is not None:
        y = y + b
    return globals()["activation"](y, activation)
