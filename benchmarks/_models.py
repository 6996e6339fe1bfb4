"""Plain Flax models (no jax_mps) that several benchmarks compare against."""
from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class ConvBN(nn.Module):
    features: int
    kernel: tuple
    strides: int = 1
    padding: str = "SAME"
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32 (Flax's mixed precision)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, self.strides, padding=self.padding, use_bias=False,
                    dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3, dtype=self.dtype)(x)
        return nn.relu(x)


class InceptionV3(nn.Module):
    """Szegedy et al. 2016 (keras.applications layout, no auxiliary head); `width` scales channels;
    `dtype` is the compute dtype (float32 master parameters, float32 logits)."""
    num_classes: int = 1000
    width: float = 1.0
    dtype: Any = jnp.float32

    def c(self, n):
        return max(1, int(round(n * self.width)))

    @nn.compact
    def __call__(self, x):
        c, cbn = self.c, partial(ConvBN, dtype=self.dtype)
        x = x.astype(self.dtype)
        x = cbn(c(32), (3, 3), 2, "VALID")(x)
        x = cbn(c(32), (3, 3), 1, "VALID")(x)
        x = cbn(c(64), (3, 3))(x)
        x = nn.max_pool(x, (3, 3), (2, 2))
        x = cbn(c(80), (1, 1), 1, "VALID")(x)
        x = cbn(c(192), (3, 3), 1, "VALID")(x)
        x = nn.max_pool(x, (3, 3), (2, 2))
        for pf in (32, 64, 64):                                    # A
            b1 = cbn(c(64), (1, 1))(x)
            b5 = cbn(c(64), (5, 5))(cbn(c(48), (1, 1))(x))
            b3 = cbn(c(96), (3, 3))(cbn(c(96), (3, 3))(cbn(c(64), (1, 1))(x)))
            bp = cbn(c(pf), (1, 1))(nn.avg_pool(x, (3, 3), (1, 1), "SAME"))
            x = jnp.concatenate([b1, b5, b3, bp], -1)
        b3 = cbn(c(384), (3, 3), 2, "VALID")(x)                   # B
        bd = cbn(c(96), (3, 3), 2, "VALID")(cbn(c(96), (3, 3))(cbn(c(64), (1, 1))(x)))
        x = jnp.concatenate([b3, bd, nn.max_pool(x, (3, 3), (2, 2))], -1)
        for c7 in (128, 160, 160, 192):                            # C
            b1 = cbn(c(192), (1, 1))(x)
            b7 = cbn(c(192), (7, 1))(cbn(c(c7), (1, 7))(cbn(c(c7), (1, 1))(x)))
            bd = x
            for f, k in ((c7, (1, 1)), (c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))):
                bd = cbn(c(f), k)(bd)
            bp = cbn(c(192), (1, 1))(nn.avg_pool(x, (3, 3), (1, 1), "SAME"))
            x = jnp.concatenate([b1, b7, bd, bp], -1)
        b3 = cbn(c(320), (3, 3), 2, "VALID")(cbn(c(192), (1, 1))(x))   # D
        b7 = cbn(c(192), (3, 3), 2, "VALID")(cbn(c(192), (7, 1))(cbn(c(192), (1, 7))(cbn(c(192), (1, 1))(x))))
        x = jnp.concatenate([b3, b7, nn.max_pool(x, (3, 3), (2, 2))], -1)
        for _ in range(2):                                         # E
            b1 = cbn(c(320), (1, 1))(x)
            b3 = cbn(c(384), (1, 1))(x)
            b3 = jnp.concatenate([cbn(c(384), (1, 3))(b3), cbn(c(384), (3, 1))(b3)], -1)
            bd = cbn(c(384), (3, 3))(cbn(c(448), (1, 1))(x))
            bd = jnp.concatenate([cbn(c(384), (1, 3))(bd), cbn(c(384), (3, 1))(bd)], -1)
            bp = cbn(c(192), (1, 1))(nn.avg_pool(x, (3, 3), (1, 1), "SAME"))
            x = jnp.concatenate([b1, b3, bd, bp], -1)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
