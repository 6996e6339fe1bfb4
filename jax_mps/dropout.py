"""Inverted dropout: the keep mask is drawn in the runtime from the key and kept bit-packed
(1 bit per element) as the only residual of the backward pass."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi
from ._sharding import Rule
from ._validate import check_float

__all__ = ["dropout"]


# vmap runs one call per element (fold=None): a folded batch would draw different masks per slice
# for one unbatched key, and the packed mask is not batch-major.
@partial(_ffi.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dropout(key_data, x, threshold, scale, key_words):
    return _dropout_fwd(key_data, x, threshold, scale, key_words)[0]


# Batch sharding: x and y split on axis 0, so a shard holds one contiguous run of the elements and
# its packed mask is one run of the whole mask's bytes when the run has whole bytes (else the call
# runs unsharded). The shard draws its keep bits at their global element indices
# (dropout_offset_fwd), so the mask equals the single-device one.
def _rules(x):
    if x.ndim == 0:
        return None, None
    whole_bytes = lambda k: (x.size // k) % 8 == 0
    return Rule((None, 0), (0, 0), ok=whole_bytes), Rule((0, 0), (0,), ok=whole_bytes)


def _fwd_body(n, threshold, scale):
    def body(axes, specs, key_data, x):
        if not axes:
            return _ffi.kernel("jax_mps_dropout_fwd", specs, key_data, x, threshold=threshold, scale=scale)
        # Shard i holds elements [i * m, (i + 1) * m): its offset as (lo32, hi32), from a table
        # (64-bit products without x64).
        m = x.size
        table = np.array([[(i * m) & 0xFFFFFFFF, (i * m) >> 32] for i in range(n // m)], np.uint32)
        offset = jnp.asarray(table)[jax.lax.axis_index(axes)]
        return _ffi.kernel("jax_mps_dropout_offset_fwd", specs, jnp.concatenate([key_data, offset]), x,
                           threshold=threshold, scale=scale)
    return body


def _dropout_fwd(key_data, x, threshold, scale, key_words):
    nbytes = (x.size + 7) // 8
    y, mask = _ffi.composite(_fwd_body(x.size, threshold, scale),
                             (_ffi.spec(x.shape, x.dtype), _ffi.spec((nbytes,), jnp.uint8)), key_data, x,
                             shard=_rules(x)[0])
    return y, mask


def _dropout_bwd(threshold, scale, key_words, mask, g):
    key_ct = np.zeros((key_words,), jax.dtypes.float0)  # the key is not differentiable
    return key_ct, _ffi.call("jax_mps_dropout_bwd", _ffi.spec(g.shape, g.dtype), mask, g, shard=_rules(g)[1],
                             scale=scale)


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
    if isinstance(rate, (str, bytes)):  # float("0.5") would take it
        raise TypeError(f"dropout: `rate` must be a float in [0, 1], got {type(rate).__name__} {rate!r}")
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
