"""Pooling (max / average, 1-D and 2-D, global average) and 2-D upsampling, NHWC / NLC.

Padding has the meaning of lax.reduce_window ("SAME" as conv SAME with the window). Max pooling
pads with -inf and routes the gradient to the first maximum of each window (an int32 argmax is
the residual); average pooling divides by the number of real elements (count_include_pad=False)
or by the window size (True, torch semantics). 1-D ops run the 2-D kernels with H == 1.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from . import _ffi
from ._sharding import Rule
from ._validate import check_float, check_rank, int_tuple, padding_pairs

__all__ = ["max_pool2d", "avg_pool2d", "max_pool1d", "avg_pool1d", "global_avg_pool2d", "upsample2d"]


def _geometry(x, window, stride, padding, nsp, op):
    """Validated (in_hw, out_hw, window, stride, pad_lo, pad_hi) for the 2-D kernels."""
    layout = "(N, H, W, C)" if nsp == 2 else "(N, L, C)"
    x = jnp.asarray(x)
    check_float("x", x, op)
    check_rank("x", x, nsp + 2, layout, op)
    spatial = tuple(int(s) for s in x.shape[1:1 + nsp])
    if any(s < 1 for s in spatial):
        raise ValueError(f"{op}: `x` spatial dims must be >= 1 for layout {layout}, got shape {x.shape}")
    window = int_tuple("window", window, nsp, op)
    stride = window if stride is None else int_tuple("stride", stride, nsp, op)
    pads = padding_pairs(padding, spatial, window, stride, (1,) * nsp, op)
    for (lo, hi), k in zip(pads, window):
        if not (0 <= lo < k and 0 <= hi < k):
            raise ValueError(f"{op}: `padding` entries must be >= 0 and smaller than the window {window}, "
                             f"got {pads}")
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads))
    if any(k > p for k, p in zip(window, padded)):
        raise ValueError(f"{op}: `window` {window} is larger than the padded input spatial shape {padded}; "
                         f"expected window <= {padded}")
    out = tuple((p - k) // s + 1 for p, k, s in zip(padded, window, stride))
    if nsp == 1:
        spatial, out, window, stride, pads = (1,) + spatial, (1,) + out, (1,) + window, (1,) + stride, ((0, 0),) + pads
    return x, (spatial, out, window, stride, tuple(p[0] for p in pads), tuple(p[1] for p in pads))


_ROW = Rule((0,), (0,))  # batch sharding: every pooling / resampling pass is per sample
_ROW2 = Rule((0, 0), (0,))


def _attrs(geo):
    _, _, window, stride, lo, hi = geo
    return dict(window=window, stride=stride, pad_lo=lo, pad_hi=hi)


def _out_spec(x, geo, dtype=None):
    return _ffi.spec((x.shape[0],) + geo[1] + (x.shape[-1],), x.dtype if dtype is None else dtype)


def _in_spec(g, geo):
    return _ffi.spec((g.shape[0],) + geo[0] + (g.shape[-1],), g.dtype)


# ---- max pooling ------------------------------------------------------------------------------

def _max_call(x, geo, with_index):
    # Without the index (nothing differentiated) the kernel skips the argmax; idx is then empty.
    idx = _out_spec(x, geo, jnp.int32) if with_index else _ffi.spec((0,), jnp.int32)
    return _ffi.call("jax_mps_max_pool_fwd", (_out_spec(x, geo), idx), x, fold=[True],
                     shard=Rule((0,), (0, 0 if with_index else None)), with_index=with_index, **_attrs(geo))


@partial(_ffi.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x, geo):
    return _max_call(x, geo, False)[0]


def _max_pool_fwd(x, geo):
    return _max_call(x, geo, True)


def _max_pool_bwd(geo, idx, g):
    return (_ffi.call("jax_mps_max_pool_bwd", _in_spec(g, geo), idx, g, fold=[True, True], shard=_ROW2,
                      **_attrs(geo)),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# ---- average pooling --------------------------------------------------------------------------

@partial(_ffi.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool(x, geo, include_pad):
    return _ffi.call("jax_mps_avg_pool_fwd", _out_spec(x, geo), x, fold=[True], shard=_ROW,
                     count_include_pad=include_pad,
                     **_attrs(geo))


def _avg_pool_fwd(x, geo, include_pad):
    return _avg_pool(x, geo, include_pad), None


def _avg_pool_bwd(geo, include_pad, _, g):
    return (_ffi.call("jax_mps_avg_pool_bwd", _in_spec(g, geo), g, fold=[True], shard=_ROW,
                      count_include_pad=include_pad,
                      **_attrs(geo)),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def _check_bool(name, v, op):
    if not isinstance(v, bool):
        raise TypeError(f"{op}: `{name}` must be a bool, got {v!r}")
    return int(v)


def max_pool2d(x, window, stride=None, padding="VALID"):
    """Max pooling of x (N, H, W, C) over `window` (int or (kh, kw)); stride defaults to window."""
    x, geo = _geometry(x, window, stride, padding, 2, "max_pool2d")
    return _max_pool(x, geo)


def avg_pool2d(x, window, stride=None, padding="VALID", count_include_pad=False):
    """Average pooling of x (N, H, W, C); see the module docstring for the divisor."""
    include_pad = _check_bool("count_include_pad", count_include_pad, "avg_pool2d")
    x, geo = _geometry(x, window, stride, padding, 2, "avg_pool2d")
    return _avg_pool(x, geo, include_pad)


def max_pool1d(x, window, stride=None, padding="VALID"):
    """Max pooling of x (N, L, C) over `window` (int)."""
    x, geo = _geometry(x, window, stride, padding, 1, "max_pool1d")
    return _max_pool(x[:, None], geo)[:, 0]


def avg_pool1d(x, window, stride=None, padding="VALID", count_include_pad=False):
    """Average pooling of x (N, L, C)."""
    include_pad = _check_bool("count_include_pad", count_include_pad, "avg_pool1d")
    x, geo = _geometry(x, window, stride, padding, 1, "avg_pool1d")
    return _avg_pool(x[:, None], geo, include_pad)[:, 0]


# ---- global average pooling -------------------------------------------------------------------

@partial(_ffi.custom_vjp, nondiff_argnums=(1,))
def _global_avg(x, hw):
    return _ffi.call("jax_mps_global_avg_pool2d_fwd", _ffi.spec((x.shape[0], x.shape[3]), x.dtype), x, fold=[True],
                     shard=_ROW)


def _global_avg_fwd(x, hw):
    return _global_avg(x, hw), None


def _global_avg_bwd(hw, _, g):
    return (_ffi.call("jax_mps_global_avg_pool2d_bwd", _ffi.spec((g.shape[0],) + hw + (g.shape[1],), g.dtype), g,
                      fold=[True], shard=_ROW),)


_global_avg.defvjp(_global_avg_fwd, _global_avg_bwd)


def global_avg_pool2d(x):
    """Mean over H and W: (N, H, W, C) -> (N, C)."""
    x = jnp.asarray(x)
    check_float("x", x, "global_avg_pool2d")
    check_rank("x", x, 4, "(N, H, W, C)", "global_avg_pool2d")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"global_avg_pool2d: `x` must have H, W >= 1 (N, H, W, C), got shape {x.shape}")
    return _global_avg(x, (int(x.shape[1]), int(x.shape[2])))


# ---- upsampling -------------------------------------------------------------------------------

@partial(_ffi.custom_vjp, nondiff_argnums=(1, 2))
def _upsample(x, scale, method):
    n, h, w, c = x.shape
    return _ffi.call("jax_mps_upsample2d_fwd", _ffi.spec((n, h * scale[0], w * scale[1], c), x.dtype), x,
                     fold=[True], shard=_ROW, sh=scale[0], sw=scale[1], method=method)


def _upsample_fwd(x, scale, method):
    return _upsample(x, scale, method), None


def _upsample_bwd(scale, method, _, g):
    n, oh, ow, c = g.shape
    return (_ffi.call("jax_mps_upsample2d_bwd", _ffi.spec((n, oh // scale[0], ow // scale[1], c), g.dtype), g,
                      fold=[True], shard=_ROW, sh=scale[0], sw=scale[1], method=method),)


_upsample.defvjp(_upsample_fwd, _upsample_bwd)


def upsample2d(x, scale, method="nearest"):
    """Upsample x (N, H, W, C) by integer `scale` (int or (sh, sw)); method "nearest" or "bilinear"
    (align_corners=False), as torch F.interpolate with scale_factor."""
    x = jnp.asarray(x)
    check_float("x", x, "upsample2d")
    check_rank("x", x, 4, "(N, H, W, C)", "upsample2d")
    scale = int_tuple("scale", scale, 2, "upsample2d")
    if method not in ("nearest", "bilinear"):
        raise ValueError(f"upsample2d: `method` must be 'nearest' or 'bilinear', got {method!r}")
    return _upsample(x, scale, method)
