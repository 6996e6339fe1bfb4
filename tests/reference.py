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


# ----------------------------------------------------------------------------- recurrent layers
# lax.scan from torch.nn.LSTM / GRU / RNN equations (weights transposed), packed-sequence masking.

def _rnn_cell_step(cell, xt, h, c, p):
    dot = lambda a, w: jnp.dot(a, w, precision=lax.Precision.HIGHEST)
    gi = dot(xt, p["w_ih"]) + p["b_ih"]
    gh = dot(h, p["w_hh"]) + p["b_hh"]
    if cell == "lstm":
        i, f, g, o = jnp.split(gi + gh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c
    if cell == "gru":
        ir, iz, inn = jnp.split(gi, 3, axis=-1)
        hr, hz, hn = jnp.split(gh, 3, axis=-1)
        r, z = jax.nn.sigmoid(ir + hr), jax.nn.sigmoid(iz + hz)
        n = jnp.tanh(inn + r * hn)
        return (1 - z) * n + z * h, c
    act = jnp.tanh if cell == "tanh" else jax.nn.relu
    return act(gi + gh), c


def rnn_reference(cell, x, params, h0=None, c0=None, seq_lengths=None, time_major=False):
    """cell in {"lstm", "gru", "tanh", "relu"}; returns (y, h_n, c_n) (c_n None unless LSTM)."""
    if time_major:
        x = jnp.swapaxes(x, 0, 1)
    B, T, _ = x.shape
    L, D = len(params), len(params[0])
    H = params[0][0]["w_hh"].shape[0]
    if h0 is None:
        h0 = jnp.zeros((L * D, B, H), x.dtype)
    if c0 is None:
        c0 = jnp.zeros((L * D, B, H), x.dtype)
    lens = jnp.full((B,), T, jnp.int32) if seq_lengths is None else jnp.asarray(seq_lengths, jnp.int32)
    inp, hs, cs = x, [], []
    for l in range(L):
        xs = jnp.swapaxes(inp, 0, 1)
        outs = []
        for d in range(D):
            p = params[l][d]

            def step(carry, t, p=p, xs=xs):
                h, c = carry
                hn, cn = _rnn_cell_step(cell, xs[t], h, c, p)
                valid = (t < lens)[:, None]
                return (jnp.where(valid, hn, h), jnp.where(valid, cn, c)), jnp.where(valid, hn, 0.0)

            ts = jnp.arange(T) if d == 0 else jnp.arange(T)[::-1]
            (h, c), ys = lax.scan(step, (h0[l * D + d], c0[l * D + d]), ts)
            if d == 1:
                ys = ys[::-1]
            outs.append(jnp.swapaxes(ys, 0, 1))
            hs.append(h)
            cs.append(c)
        inp = jnp.concatenate(outs, axis=-1)
    y = jnp.swapaxes(inp, 0, 1) if time_major else inp
    return y, jnp.stack(hs), (jnp.stack(cs) if cell == "lstm" else None)
