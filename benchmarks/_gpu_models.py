"""The XLA-native (plain jax / lax / optax) models of bench_gpu.py: no jax_mps."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

# ---- LeNet-5 (28x28x1) ----

LENET_SHAPES = {"c1": (5, 5, 1, 6), "c2": (5, 5, 6, 16), "d1": (400, 120), "d2": (120, 84), "d3": (84, 10)}


def he_init(key, shapes):
    """{name_w: He-normal weights, name_b: zeros} for every (name, shape) of `shapes`."""
    p = {}
    for i, (name, shape) in enumerate(shapes.items()):
        fan_in = int(np.prod(shape[:-1]))
        p[name + "_w"] = jax.random.normal(jax.random.fold_in(key, i), shape) * np.sqrt(2.0 / fan_in)
        p[name + "_b"] = jnp.zeros(shape[-1])
    return p


def lenet_init(key):
    return he_init(key, LENET_SHAPES)


def lenet_loss(p, x, y):
    conv = lambda x, w, b, pad: lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    pool = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # noqa: E731
    h = pool(jax.nn.relu(conv(x, p["c1_w"], p["c1_b"], "SAME")))
    h = pool(jax.nn.relu(conv(h, p["c2_w"], p["c2_b"], "VALID"))).reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ p["d1_w"] + p["d1_b"])
    h = jax.nn.relu(h @ p["d2_w"] + p["d2_b"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["d3_w"] + p["d3_b"], y).mean()


# ---- the TF-tutorial MNIST CNN (28x28x1): conv5x5x32 - pool - conv5x5x64 - pool - fc1024 - dropout - fc10 ----

CNN_SHAPES = {"c1": (5, 5, 1, 32), "c2": (5, 5, 32, 64), "d1": (7 * 7 * 64, 1024), "d2": (1024, 10)}
CNN_RATE = 0.4


def cnn_init(key):
    return he_init(key, CNN_SHAPES)


def cnn_loss(p, x, y, key):
    conv = lambda x, w, b: jax.nn.relu(lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b)
    pool = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # noqa: E731
    h = pool(conv(pool(conv(x, p["c1_w"], p["c1_b"])), p["c2_w"], p["c2_b"])).reshape(x.shape[0], -1)
    h = _dropout(key, jax.nn.relu(h @ p["d1_w"] + p["d1_b"]), CNN_RATE)
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["d2_w"] + p["d2_b"], y).mean()


# ---- LSTM: lax.scan over a torch-gate-order cell, and cuDNN through jax.experimental.rnn ----

def init_lstm(key, I, H):
    """One layer in mps.init_lstm's format {w_ih (I, 4H), w_hh (H, 4H), b_ih, b_hh}, torch's init."""
    k = jax.random.split(key, 4)
    u = lambda k, s: jax.random.uniform(k, s, jnp.float32, -1 / np.sqrt(H), 1 / np.sqrt(H))  # noqa: E731
    return {"w_ih": u(k[0], (I, 4 * H)), "w_hh": u(k[1], (H, 4 * H)), "b_ih": u(k[2], (4 * H,)),
            "b_hh": u(k[3], (4 * H,))}


def scan_lstm(p, x):
    """x (B, T, I) -> y (B, T, H); gates i, f, g, o as torch.nn.LSTM."""
    H = p["w_hh"].shape[0]

    def cell(carry, xt):
        h, c = carry
        g = xt @ p["w_ih"] + h @ p["w_hh"] + p["b_ih"] + p["b_hh"]
        i, f, gg, o = jnp.split(g, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h
    z = jnp.zeros((x.shape[0], H), x.dtype)
    _, ys = lax.scan(cell, (z, z), jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1)


def init_cudnn_lstm(key, I, H):
    from jax.experimental import rnn
    return rnn.init_lstm_weight(key, I, H, 1, False)


def cudnn_lstm(w, x, H):
    """jax.experimental.rnn.lstm (cuDNN only on GPU; no lowering elsewhere)."""
    from jax.experimental import rnn
    B, T, I = x.shape
    z = jnp.zeros((1, B, H), x.dtype)
    y, _, _ = rnn.lstm(x, z, z, w, jnp.full((B,), T, jnp.int32), I, H, 1, 0.0, False)
    return y


# ---- the activity classifier (examples/activity.py's model, written in lax) ----

ACT_WINDOW, ACT_STEPS, ACT_CLASSES, ACT_HIDDEN, ACT_RATE = 100, 20, 7, 200, 0.3


def activity_init(key, cudnn=False):
    k = jax.random.split(key, 4)
    glorot = jax.nn.initializers.glorot_uniform()
    lstm = (init_cudnn_lstm if cudnn else init_lstm)(k[1], 64, ACT_HIDDEN)
    params = {"conv": {"w": glorot(k[0], (ACT_WINDOW, 6, 64)), "b": jnp.zeros(64)}, "lstm": lstm,
              "fc": {"w": glorot(k[2], (ACT_HIDDEN, 128)), "scale": jnp.ones(128), "bias": jnp.zeros(128)},
              "out": {"w": glorot(k[3], (128, ACT_CLASSES)), "b": jnp.zeros(ACT_CLASSES)}}
    return params, {"mean": jnp.zeros(128), "var": jnp.ones(128)}


def _dropout(key, x, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def activity_loss(params, bn_stats, x, labels, key, cudnn=False):
    """x (B, 2000, 6) -> mean per-step cross entropy, new batch-norm running statistics."""
    B = x.shape[0]
    h = lax.conv_general_dilated(x, params["conv"]["w"], (ACT_WINDOW,), "VALID",
                                 dimension_numbers=("NWC", "WIO", "NWC"))
    h = jax.nn.relu(h + params["conv"]["b"])                                  # (B, 20, 64)
    k1, k2 = jax.random.split(key)
    h = _dropout(k1, h, ACT_RATE)
    h = cudnn_lstm(params["lstm"], h, ACT_HIDDEN) if cudnn else scan_lstm(params["lstm"], h)
    h = h.reshape(B * ACT_STEPS, -1) @ params["fc"]["w"]                       # (B*20, 128)
    mean, var = jnp.mean(h, 0), jnp.var(h, 0)                                  # training-mode batch norm
    h = jax.nn.relu((h - mean) * lax.rsqrt(var + 1e-5) * params["fc"]["scale"] + params["fc"]["bias"])
    bn_stats = jax.tree_util.tree_map(lambda old, new: 0.9 * old + 0.1 * lax.stop_gradient(new),
                                      bn_stats, {"mean": mean, "var": var})
    h = _dropout(k2, h, ACT_RATE)
    logits = h @ params["out"]["w"] + params["out"]["b"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.repeat(labels, ACT_STEPS)).mean()
    return loss, bn_stats
