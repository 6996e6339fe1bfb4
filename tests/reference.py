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


# ----------------------------------------------------------------------------- optimizers (mps.optim)
# One step of the mps.optim pipeline from the math: rescale -> clip by value -> clip by global
# norm -> coupled L1/L2 -> update rule. `state` is a dict of trees (float32) plus "count";
# optimizer hyperparameters as in API.md. Returns (new_params, new_state), params kept in their dtype.
def optim_step(rule, params, grads, state, lr, *, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
               amsgrad=False, momentum=0.0, nesterov=False, decay=0.9, centered=False,
               gradient_rescale=1.0, clip_value=None, clip_norm=None, regularization=None,
               regularization_scale=0.0):
    f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)
    p32, g = f32(params), f32(grads)
    g = jax.tree.map(lambda x: x * gradient_rescale, g)
    if clip_value is not None:
        g = jax.tree.map(lambda x: jnp.clip(x, -clip_value, clip_value), g)
    if clip_norm is not None:
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))
        g = jax.tree.map(lambda x: jnp.where(norm < clip_norm, x, x * (clip_norm / norm)), g)
    if regularization == "l2":
        g = jax.tree.map(lambda x, p: x + regularization_scale * p, g, p32)
    elif regularization == "l1":
        g = jax.tree.map(lambda x, p: x + regularization_scale * jnp.sign(p), g, p32)
    count = state["count"]
    rate = lr(count) if callable(lr) else lr
    t = count + 1
    new = {"count": t}
    if rule == "sgd":
        if momentum:
            tr = jax.tree.map(lambda x, m: x + momentum * m, g, state["trace"])
            new["trace"] = tr
            u = jax.tree.map(lambda x, m: x + momentum * m, g, tr) if nesterov else tr
        else:
            u = g
        delta = jax.tree.map(lambda x: -rate * x, u)
    elif rule == "adam":
        mu = jax.tree.map(lambda x, m: (1 - b1) * x + b1 * m, g, state["mu"])
        nu = jax.tree.map(lambda x, v: (1 - b2) * x * x + b2 * v, g, state["nu"])
        new["mu"], new["nu"] = mu, nu
        nu_hat = jax.tree.map(lambda v: v / (1 - b2 ** t), nu)
        if amsgrad:
            nu_hat = jax.tree.map(jnp.maximum, state["nu_max"], nu_hat)
            new["nu_max"] = nu_hat
        u = jax.tree.map(lambda m, v: (m / (1 - b1 ** t)) / (jnp.sqrt(v) + eps), mu, nu_hat)
        u = jax.tree.map(lambda x, p: x + weight_decay * p, u, p32)
        delta = jax.tree.map(lambda x: -rate * x, u)
    elif rule == "rmsprop":
        nu = jax.tree.map(lambda x, v: (1 - decay) * x * x + decay * v, g, state["nu"])
        new["nu"] = nu
        if centered:
            mu = jax.tree.map(lambda x, m: (1 - decay) * x + decay * m, g, state["mu"])
            new["mu"] = mu
            den = jax.tree.map(lambda v, m: v - m * m, nu, mu)
        else:
            den = nu
        delta = jax.tree.map(lambda x, d: -rate * x / jnp.sqrt(d + eps), g, den)
        if momentum:
            delta = jax.tree.map(lambda d, m: d + momentum * m, delta, state["momentum"])
            new["momentum"] = delta
    else:
        raise ValueError(rule)
    out = jax.tree.map(lambda p, d, p0: (p + d).astype(p0.dtype), p32, delta, params)
    return out, new
