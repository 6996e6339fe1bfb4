"""Convolution (2-D, 1-D, transposed 2-D) and dense layers with fused bias and activation.

Every pass is a runtime call: `jax_mps_{conv,dense}_fwd` (bias and activation fused),
`..._bwd_data` (dx) and `..._bwd_weights` (dw, db). The backward calls fold the activation
derivative in, from the saved output y when it suffices, else from the saved pre-activation.

Padding follows lax everywhere. The runtime takes non-negative conv padding and, for transposed
convs, padding in [0, (k-1)*d]; anything else is glue here (negative conv padding slices the
input; transposed padding beyond that crops the output or adds rows no input reaches, filled
with act(b)). Configurations whose output would be empty raise ValueError (lax returns an
empty array).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from . import _ffi
from ._sharding import SUM, Rule
from ._validate import (ACT_NONE, ACT_RELU, activation_code, check_float, check_rank, grad_from_output, int_tuple,
                        is_int, matmul_precision, padding_pairs)

__all__ = ["conv2d", "conv1d", "conv_transpose2d", "dense"]


# Batch sharding: x, y, dy and dx split on axis 0; w and b are replicated; dw and db are summed.
_FWD = Rule((0, None, None), (0,))
_BWD_DATA = Rule((0, 0, None), (0,))
_BWD_WEIGHTS = Rule((0, 0, 0), (SUM, SUM))


# cfg = (family, out_shape, attrs): all static; attrs is a tuple of (name, value) pairs that
# includes act, alpha and has_bias.
@partial(_ffi.custom_vjp, nondiff_argnums=(3,))
def _op(x, w, b, cfg):
    family, out_shape, attrs = cfg
    return _ffi.call(f"jax_mps_{family}_fwd", _ffi.spec(out_shape, x.dtype), x, w, b,
                     fold=[True, False, False], shard=_FWD, **dict(attrs))


def _op_fwd(x, w, b, cfg):
    # symbolic_zeros: the arguments come wrapped with whether each is differentiated; whether dx is
    # wanted (x is not the model's input) rides along as a static marker in the residuals.
    dx_marker = () if x.perturbed else None
    x, w, b = x.value, w.value, b.value
    family, out_shape, attrs = cfg
    a = dict(attrs)
    if grad_from_output(a["act"], a["alpha"]):
        y = _op(x, w, b, cfg)
        return y, (x, w, b, y, dx_marker)
    # The derivative needs the pre-activation z: keep it, apply the activation as its own pass.
    z = _ffi.call(f"jax_mps_{family}_fwd", _ffi.spec(out_shape, x.dtype), x, w, b,
                  fold=[True, False, False], shard=_FWD, **{**a, "act": ACT_NONE, "alpha": 0.0})
    y = _ffi.call("jax_mps_activation_fwd", _ffi.spec(z.shape, z.dtype), z, fold=[True], shard=Rule((0,), (0,)),
                  act=a["act"], alpha=a["alpha"])
    return y, (x, w, b, z, dx_marker)


def _op_bwd(cfg, res, g):
    family, _, attrs = cfg
    x, w, b, s, dx_marker = res
    if isinstance(g, SymbolicZero):  # the output does not reach the loss
        return jnp.zeros_like(x), jnp.zeros_like(w), jnp.zeros_like(b)
    a = dict(attrs)
    from_output = grad_from_output(a["act"], a["alpha"])
    if dx_marker is not None and a["act"] != ACT_NONE and (not from_output or a["act"] == ACT_RELU):
        # Both passes run: dz = dy * act'(.) is formed once for them (each would form it again
        # otherwise), from the saved pre-activation, or for relu from y (y > 0 exactly where the
        # pre-activation is). With dx unused (the model's input) the weights pass forms it itself.
        g = _ffi.call("jax_mps_activation_bwd", _ffi.spec(g.shape, g.dtype), s, g, fold=[True, True],
                      shard=Rule((0, 0), (0,)), act=a["act"], alpha=a["alpha"])
        a["act"], a["alpha"], from_output = ACT_NONE, 0.0, False
    a["from_output"] = int(from_output)
    if a["act"] == ACT_NONE:
        s = g  # unused by the kernels; avoids keeping an extra buffer alive
    dx = _ffi.call(f"jax_mps_{family}_bwd_data", _ffi.spec(x.shape, x.dtype), s, g, w,
                   fold=[True, True, False], shard=_BWD_DATA, **{k: v for k, v in a.items() if k != "has_bias"})
    # dw and db are reduced over the batch: no vmap folding.
    dw, db = _ffi.call(f"jax_mps_{family}_bwd_weights", (_ffi.spec(w.shape, w.dtype), _ffi.spec(b.shape, b.dtype)),
                       x, s, g, fold=None, shard=_BWD_WEIGHTS, **a)
    return dx, dw, db


_op.defvjp(_op_fwd, _op_bwd, symbolic_zeros=True)


def _common(op, x, w, b, activation, accumulate, cout):
    x, w = jnp.asarray(x), jnp.asarray(w)
    check_float("x", x, op)
    check_float("w", w, op)
    if accumulate not in (None, "float16"):
        raise ValueError(f"{op}: `accumulate` must be None or 'float16', got {accumulate!r}")
    code, alpha = activation_code(activation, op)
    has_bias = int(b is not None)
    if b is None:
        b = jnp.zeros((0,), x.dtype)
    else:
        b = jnp.asarray(b)
        check_float("b", b, op)
        if b.shape != (cout,):
            raise ValueError(f"{op}: `b` must have shape ({cout},), got {b.shape}")
    return x, w.astype(x.dtype), b.astype(x.dtype), code, alpha, has_bias, int(accumulate == "float16")


def _conv_nd(op, x, w, b, stride, padding, dilation, groups, activation, accumulate, nsp):
    """Shared front end of conv2d (nsp=2) and conv1d (nsp=1); works on the 2-D kernel."""
    layout = "(N, H, W, C)" if nsp == 2 else "(N, L, C)"
    wlayout = "(KH, KW, Cin/groups, Cout)" if nsp == 2 else "(K, Cin/groups, Cout)"
    check_rank("x", x, nsp + 2, layout, op)
    check_rank("w", w, nsp + 2, wlayout, op)
    if not is_int(groups) or groups < 1:
        raise ValueError(f"{op}: `groups` must be an int >= 1, got {groups!r}")
    groups = int(groups)
    cin, cout = x.shape[-1], w.shape[-1]
    if cin % groups or cout % groups:
        raise ValueError(f"{op}: `groups`={groups} must divide Cin={cin} and Cout={cout}")
    if w.shape[-2] * groups != cin:
        raise ValueError(f"{op}: `w` must have shape {wlayout} = {tuple(w.shape[:-2]) + (cin // groups, cout)}, "
                         f"got {tuple(w.shape)}")
    if min(w.shape[:-2]) < 1 or cin < 1:
        raise ValueError(f"{op}: kernel sizes and Cin must be >= 1, got w {tuple(w.shape)}, x {tuple(x.shape)}")
    stride = int_tuple("stride", stride, nsp, op)
    dilation = int_tuple("dilation", dilation, nsp, op)
    spatial, window = x.shape[1:-1], w.shape[:-2]
    pads = padding_pairs(padding, spatial, window, stride, dilation, op)
    x, w, b, code, alpha, has_bias, acc = _common(op, x, w, b, activation, accumulate, cout)
    if nsp == 1:  # 1-D as 2-D with H = 1
        x, w = x[:, None], w[None]
        stride, dilation, pads, spatial, window = (1,) + stride, (1,) + dilation, ((0, 0),) + pads, \
            (1,) + spatial, (1,) + window
    # lax crops the input where padding is negative: do that as a slice, pass the rest on.
    crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pads]
    if any(c for pair in crop for c in pair):
        x = x[:, crop[0][0]:x.shape[1] - crop[0][1], crop[1][0]:x.shape[2] - crop[1][1]]
        spatial = x.shape[1:3]
    pads = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
    out = []
    for i, k, s, d, (lo, hi) in zip(spatial, window, stride, dilation, pads):
        span = i + lo + hi - ((k - 1) * d + 1)
        out.append(span // s + 1 if span >= 0 else 0)
    if min(out) < 1:
        raise ValueError(f"{op}: output spatial size would be {tuple(out[2 - nsp:])} (input {tuple(spatial[2 - nsp:])}, "
                         f"kernel {tuple(window[2 - nsp:])}, padding {pads[2 - nsp:]}); it must be >= 1")
    attrs = (("stride", stride), ("pad_lo", tuple(p[0] for p in pads)), ("pad_hi", tuple(p[1] for p in pads)),
             ("dilation", dilation), ("groups", groups), ("transpose", 0), ("act", code), ("alpha", alpha),
             ("has_bias", has_bias), ("accumulate", acc), ("precision", matmul_precision()))
    y = _op(x, w, b, ("conv", (x.shape[0],) + tuple(out) + (cout,), attrs))
    return y[:, 0] if nsp == 1 else y


def conv2d(x, w, b=None, *, stride=1, padding="SAME", dilation=1, groups=1, activation=None, accumulate=None):
    """2-D convolution, NHWC input and HWIO weights: equals
    ``lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups) + b`` followed by the
    fused ``activation`` (None, a name, or ``(name, {params})``).

    x: (N, H, W, Cin); w: (KH, KW, Cin/groups, Cout); b: (Cout,) or None. ``groups=Cin`` is a
    depthwise convolution. ``padding``: "SAME", "VALID", an int, or ((lo, hi), (lo, hi)) with lax
    meaning (negative entries crop the input). ``accumulate="float16"`` is accepted; the CPU
    backend computes (and accumulates) in float32 regardless.
    """
    x, w = jnp.asarray(x), jnp.asarray(w)
    return _conv_nd("conv2d", x, w, b, stride, padding, dilation, groups, activation, accumulate, 2)


def conv1d(x, w, b=None, *, stride=1, padding="SAME", dilation=1, groups=1, activation=None, accumulate=None):
    """1-D convolution: x (N, L, Cin), w (K, Cin/groups, Cout), b (Cout,) or None; same meaning
    as conv2d (lax.conv_general_dilated with ('NWC', 'WIO', 'NWC')). ``padding``: "SAME",
    "VALID", an int or ((lo, hi),). ``accumulate="float16"`` is accepted; the CPU backend
    computes in float32."""
    x, w = jnp.asarray(x), jnp.asarray(w)
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(isinstance(p, int) for p in padding):
        padding = (tuple(padding),)  # a bare (lo, hi) pair
    return _conv_nd("conv1d", x, w, b, stride, padding, dilation, groups, activation, accumulate, 1)


def _transpose_pads(padding, window, stride, dilation, op):
    """lax.conv_transpose padding: strings via lax's rule on the dilated kernel; int p is ((p, p), (p, p))."""
    if isinstance(padding, str):
        p = padding.upper()
        if p not in ("SAME", "VALID"):
            raise ValueError(f"{op}: `padding` must be 'SAME', 'VALID', an int or 2 (lo, hi) pairs, got {padding!r}")
        out = []
        for k, s, d in zip(window, stride, dilation):
            k = (k - 1) * d + 1
            if p == "SAME":
                pad_len = k + s - 2
                lo = k - 1 if s > k - 1 else -(-pad_len // 2)
            else:
                pad_len = k + s - 2 + max(k - s, 0)
                lo = k - 1
            out.append((lo, pad_len - lo))
        return tuple(out)
    if is_int(padding):
        padding = ((int(padding), int(padding)),) * 2
    return padding_pairs(padding, (1, 1), window, stride, dilation, op)


def conv_transpose2d(x, w, b=None, *, stride=1, padding="SAME", dilation=1, activation=None, accumulate=None):
    """Transposed 2-D convolution: equals ``lax.conv_transpose(x, w, stride, padding,
    rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b`` then the fused
    ``activation``. x: (N, H, W, Cin); w: (KH, KW, Cin, Cout) (as flax.linen.ConvTranspose);
    b: (Cout,) or None. ``padding``: "SAME", "VALID" (lax's rule), an int p meaning ((p, p), (p, p)),
    or explicit (lo, hi) pairs passed through as lax does. ``accumulate="float16"`` is accepted;
    the CPU backend computes in float32."""
    op = "conv_transpose2d"
    x, w = jnp.asarray(x), jnp.asarray(w)
    check_rank("x", x, 4, "(N, H, W, C)", op)
    check_rank("w", w, 4, "(KH, KW, Cin, Cout)", op)
    cin, cout = x.shape[-1], w.shape[-1]
    if w.shape[2] != cin:
        raise ValueError(f"{op}: `w` must have shape (KH, KW, Cin={cin}, Cout), got {tuple(w.shape)}")
    if min(w.shape[:2]) < 1 or cin < 1:
        raise ValueError(f"{op}: kernel sizes and Cin must be >= 1, got w {tuple(w.shape)}, x {tuple(x.shape)}")
    stride = int_tuple("stride", stride, 2, op)
    dilation = int_tuple("dilation", dilation, 2, op)
    window = w.shape[:2]
    pads = _transpose_pads(padding, window, stride, dilation, op)
    x, w, b, code, alpha, has_bias, acc = _common(op, x, w, b, activation, accumulate, cout)
    spatial = x.shape[1:3]
    # The stride-dilated input: (i - 1) * s + 1 rows, none when i = 0 (lax's extent).
    full = [max((i - 1) * s + 1, 0) + lo + hi - ((k - 1) * d + 1) + 1
            for i, k, s, d, (lo, hi) in zip(spatial, window, stride, dilation, pads)]
    if min(full) < 1:
        raise ValueError(f"{op}: output spatial size would be {tuple(full)}; it must be >= 1")
    # The runtime takes padding in [0, (k-1)*d] per side. Beyond that lax's output gets rows no
    # input reaches (value act(b)); negative padding crops it. Both are glue around the core.
    ek = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    core = tuple((min(max(lo, 0), e - 1), min(max(hi, 0), e - 1)) for (lo, hi), e in zip(pads, ek))
    extra = [(lo - clo, hi - chi) for (lo, hi), (clo, chi) in zip(pads, core)]
    out = [max((i - 1) * s + 1, 0) + lo + hi - e + 1 for i, s, (lo, hi), e in zip(spatial, stride, core, ek)]
    attrs = (("stride", stride), ("pad_lo", tuple(p[0] for p in core)), ("pad_hi", tuple(p[1] for p in core)),
             ("dilation", dilation), ("groups", 1), ("transpose", 1), ("act", code), ("alpha", alpha),
             ("has_bias", has_bias), ("accumulate", acc), ("precision", matmul_precision()))
    y = _op(x, w, b, ("conv", (x.shape[0],) + tuple(out) + (cout,), attrs))
    if all(e == (0, 0) for e in extra):
        return y
    # Grow first, then crop where padding was negative: a crop on one side may reach into the
    # rows grown on the other.
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in extra]
    if any(g for pair in grow for g in pair):
        from .activations import activation as _activation
        fill = b if has_bias else jnp.zeros((cout,), x.dtype)
        if code != ACT_NONE:
            name = activation[0] if isinstance(activation, (tuple, list)) else activation
            params = activation[1] if isinstance(activation, (tuple, list)) else {}
            fill = _activation(fill, name, **params)
        n, h, wd, _ = y.shape
        H, W = h + grow[0][0] + grow[0][1], wd + grow[1][0] + grow[1][1]
        y = jnp.broadcast_to(fill, (n, H, W, cout)).at[:, grow[0][0]:grow[0][0] + h,
                                                       grow[1][0]:grow[1][0] + wd].set(y)
    return y[:, max(-extra[0][0], 0):y.shape[1] - max(-extra[0][1], 0),
             max(-extra[1][0], 0):y.shape[2] - max(-extra[1][1], 0)]


def dense(x, w, b=None, *, activation=None, accumulate=None):
    """x (..., In) @ w (In, Out) + b (Out,) then the fused ``activation``; any number of leading
    dims. ``accumulate="float16"`` is accepted; the CPU backend computes in float32."""
    op = "dense"
    x, w = jnp.asarray(x), jnp.asarray(w)
    if x.ndim < 1:
        raise ValueError(f"{op}: `x` must have rank >= 1 (..., In), got a scalar")
    check_rank("w", w, 2, "(In, Out)", op)
    if w.shape[0] != x.shape[-1]:
        raise ValueError(f"{op}: `w` must have shape (In={x.shape[-1]}, Out), got {tuple(w.shape)}")
    if x.shape[-1] < 1:
        raise ValueError(f"{op}: In must be >= 1, got x {tuple(x.shape)}")
    cout = w.shape[1]
    x, w, b, code, alpha, has_bias, acc = _common(op, x, w, b, activation, accumulate, cout)
    lead = x.shape[:-1]
    x2 = x.reshape((-1, x.shape[-1]))
    attrs = (("act", code), ("alpha", alpha), ("has_bias", has_bias), ("accumulate", acc),
             ("precision", matmul_precision()))
    y = _op(x2, w, b, ("dense", (x2.shape[0], cout), attrs))
    return y.reshape(lead + (cout,))
