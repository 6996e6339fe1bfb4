"""The jax_mps models of the step benchmarks (bench_gpu.py, bench_lenet.py); their XLA-native
twins are in _gpu_models.py."""
from __future__ import annotations

import jax_mps as mps

from _gpu_models import CNN_RATE


def lenet_mps(p, x, y):
    h = mps.conv2d(x, p["c1_w"], p["c1_b"], padding="SAME", activation="relu")
    h = mps.max_pool2d(h, 2)
    h = mps.conv2d(h, p["c2_w"], p["c2_b"], padding="VALID", activation="relu")
    h = mps.max_pool2d(h, 2).reshape(x.shape[0], -1)
    h = mps.dense(h, p["d1_w"], p["d1_b"], activation="relu")
    h = mps.dense(h, p["d2_w"], p["d2_b"], activation="relu")
    return mps.softmax_cross_entropy(mps.dense(h, p["d3_w"], p["d3_b"]), y)


def cnn_mps(p, x, y, key):
    h = mps.max_pool2d(mps.conv2d(x, p["c1_w"], p["c1_b"], padding="SAME", activation="relu"), 2)
    h = mps.max_pool2d(mps.conv2d(h, p["c2_w"], p["c2_b"], padding="SAME", activation="relu"), 2)
    h = mps.dense(h.reshape(x.shape[0], -1), p["d1_w"], p["d1_b"], activation="relu")
    h = mps.dropout(key, h, CNN_RATE)
    return mps.softmax_cross_entropy(mps.dense(h, p["d2_w"], p["d2_b"]), y)
