"""Inverted dropout: the keep mask is drawn in the runtime from the key and kept bit-packed
(1 bit per element) as the only residual of the backward pass."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi
from ._validate import check_float

__all__ = ["dropout"]


# vmap runs one call per element (fold=None): a folded batch would draw different masks per slice
# for one unbatched key, and the packed mask is not batch-major.
@partial(_ffi.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dropout(key_data, x, threshold, scale, key_words):
    return _dropout_fwd(key_data, x, threshold, scale, key_words)[0]


def _dropout_fwd(key_data, x, threshold, scale, key_words):
    nbytes = (x.size + 7) // 8
    y, mask = _ffi.call("jax_mps_dropout_fwd", (_ffi.spec(x.shape, x.dtype), _ffi.spec((nbytes,), jnp.uint8)),
                        key_data, x, threshold=threshold, scale=scale)
    return y, mask


def _dropout_bwd(threshold, scale, key_words, mask, g):
    key_ct = np.zeros((key_words,), jax.dtypes.float0)  # the key is not differentiable
    return key_ct, _ffi.call("jax_mps_dropout_bwd", _ffi.spec(g.shape, g.dtype), mask, g, scale=scale)


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


def _key_data(key):
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"dropout: `key` must be a single PRNG key (shape ()), got shape {key.shape}")
        data = jax.random.key_data(key)
    else:
        data = jnp.asarray(key)
        if data.dtype != jnp.uint32:
            raise TypeError(f"dropout: `key` must be a typed PRNG key or a uint32 (2,) raw key, got dtype {data.dtype}")
    if data.dtype != jnp.uint32 or data.shape not in ((2,), (4,)):
        raise ValueError(f"dropout: `key` data must be uint32 of shape (2,) (or (4,) for rbg keys), "
                         f"got {data.dtype} {data.shape}")
    return data


def dropout(key, x, rate, *, deterministic=False):
    """Zero each element of x with probability `rate` and scale the kept ones by 1 / (1 - rate)."""
    try:
        r = float(rate)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise ValueError(f"dropout: `rate` must be a static float in [0, 1], got {rate!r}") from None
    if isinstance(rate, bool) or not 0.0 <= r <= 1.0:
        raise ValueError(f"dropout: `rate` must be in [0, 1], got {rate!r}")
    x = jnp.asarray(x)
    check_float("x", x, "dropout")
    key_data = _key_data(key)
    if deterministic or r == 0.0:
        return x
    if r == 1.0:  # as flax: everything dropped
        return jnp.zeros_like(x)
    keep = 1.0 - r
    threshold = min(max(int(round(keep * 2.0**32)), 1), 2**32)
    return _dropout(key_data, x, threshold, 1.0 / keep, key_data.shape[0])
