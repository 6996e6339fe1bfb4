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
    act = jnp.tanh if cell == "tanh" else _torch_relu
    return act(gi + gh), c


@jax.custom_jvp
def _torch_relu(x):
    """torch's relu as its RNNs differentiate it: the gradient passes where the output is NaN."""
    return jnp.maximum(x, 0)


_torch_relu.defjvps(lambda t, y, x: jnp.where(y <= 0, 0, t))


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
