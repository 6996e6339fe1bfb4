"""Recurrent layers: LSTM, GRU and Elman RNN (tanh / relu), multi-layer and bidirectional.

The whole multi-layer, multi-direction recurrence is one runtime call per pass
(`jax_mps_rnn_fwd` / `jax_mps_rnn_bwd`); the forward's workspace (gate activations, previous
states, inner layer outputs) is the custom_vjp residual, so the backward recomputes nothing.
Gate order and equations are torch's, with weights transposed: `w_ih == torch_weight_ih.T`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi
from ._runtime import contract
from ._sharding import SUM, Rule
from ._validate import check_float, int32_ids, matmul_precision

__all__ = ["lstm", "gru", "rnn", "init_lstm", "init_gru", "init_rnn"]

# Cell codes, gate counts and the workspace size come from the runtime (csrc/runtime/rnn.h).
_CELLS = contract.RNN_CELLS
_LSTM, _GRU, _TANH, _RELU = _CELLS["lstm"], _CELLS["gru"], _CELLS["rnn_tanh"], _CELLS["rnn_relu"]
_GATES = contract.RNN_GATES
_KEYS = ("w_ih", "w_hh", "b_ih", "b_hh")
_workspace_size = contract.rnn_workspace_size


# ----------------------------------------------------------------------------- initialisation

def _check_pos_int(name, v, op):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{op}: `{name}` must be a positive int, got {v!r}")
    return int(v)


def _init(key, input_size, hidden_size, num_layers, bidirectional, gates, dtype, op):
    I = _check_pos_int("input_size", input_size, op)
    H = _check_pos_int("hidden_size", hidden_size, op)
    L = _check_pos_int("num_layers", num_layers, op)
    D = 2 if bidirectional else 1
    bound = 1.0 / np.sqrt(H)  # torch: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias
    shapes = lambda i: {"w_ih": (i, gates * H), "w_hh": (H, gates * H), "b_ih": (gates * H,), "b_hh": (gates * H,)}
    params = []
    for l in range(L):
        layer = []
        for d in range(D):
            ks = jax.random.split(jax.random.fold_in(key, l * D + d), 4)
            sh = shapes(I if l == 0 else D * H)
            layer.append({n: jax.random.uniform(k, sh[n], dtype, -bound, bound) for n, k in zip(_KEYS, ks)})
        params.append(layer)
    return params


def init_lstm(key, input_size, hidden_size, num_layers=1, bidirectional=False, dtype=jnp.float32):
    """LSTM parameters: params[layer][direction] = {"w_ih": (I_l, 4H), "w_hh": (H, 4H), "b_ih", "b_hh": (4H,)}."""
    return _init(key, input_size, hidden_size, num_layers, bidirectional, 4, dtype, "init_lstm")


def init_gru(key, input_size, hidden_size, num_layers=1, bidirectional=False, dtype=jnp.float32):
    """GRU parameters (gates r, z, n): as init_lstm with 3H gate columns."""
    return _init(key, input_size, hidden_size, num_layers, bidirectional, 3, dtype, "init_gru")


def init_rnn(key, input_size, hidden_size, num_layers=1, bidirectional=False, activation="tanh",
             dtype=jnp.float32):
    """Elman RNN parameters: as init_lstm with H gate columns (activation is chosen at call time)."""
    _activation_code(activation, "init_rnn")
    return _init(key, input_size, hidden_size, num_layers, bidirectional, 1, dtype, "init_rnn")


def _activation_code(activation, op):
    if activation not in ("tanh", "relu"):
        raise ValueError(f"{op}: `activation` must be 'tanh' or 'relu', got {activation!r}")
    return _TANH if activation == "tanh" else _RELU


# ----------------------------------------------------------------------------- the runtime call

# prec: the float32 GEMM precision code, read once at trace time so both passes use it.
# sg: whether the initial state's gradient is wanted (0 when it is the implicit zeros: the backward
# then skips each chain's last recurrent GEMM and returns zeros for it).
@partial(_ffi.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5, 6))
def _core(cell, L, D, H, tm, prec, sg, x, h0, c0, lens, weights):
    return _core_fwd(cell, L, D, H, tm, prec, sg, x, h0, c0, lens, weights)[0]


def _core_fwd(cell, L, D, H, tm, prec, sg, x, h0, c0, lens, weights):
    T, B = (x.shape[0], x.shape[1]) if tm else (x.shape[1], x.shape[0])
    specs = (_ffi.spec(x.shape[:2] + (D * H,), x.dtype), _ffi.spec(h0.shape, h0.dtype),
             _ffi.spec(c0.shape, c0.dtype), _ffi.spec((_workspace_size(cell, L, D, H, T, B),), jnp.float32))
    # fold=None: h0/c0 are batched on axis 1 and weights may be batched, so vmap runs per element.
    # Batch sharding: x / y on their batch axis, states on axis 1; the workspace (its size is
    # linear in B) splits into per-shard blocks that the backward of the same shard reads.
    xb, cb = int(tm), (1 if c0.ndim == 3 else None)
    rule = Rule((xb, 1, cb, 0) + (None,) * len(weights), (xb, 1, cb, 0))
    y, hn, cn, ws = _ffi.call("jax_mps_rnn_fwd", specs, x, h0, c0, lens, *weights, shard=rule, cell=cell,
                              num_layers=L, num_dirs=D, hidden=H, time_major=tm, precision=prec)
    return (y, hn, cn), (x, h0, c0, lens, weights, ws)


def _core_bwd(cell, L, D, H, tm, prec, sg, res, g):
    x, h0, c0, lens, weights, ws = res
    dy, dhn, dcn = g
    specs = [_ffi.spec(a.shape, a.dtype) for a in (x, h0, c0) + tuple(weights)]
    xb, cb = int(tm), (1 if c0.ndim == 3 else None)
    rule = Rule((xb, 1, cb, 0, 0, xb, 1, cb) + (None,) * len(weights), (xb, 1, cb) + (SUM,) * len(weights))
    out = _ffi.call("jax_mps_rnn_bwd", specs, x, h0, c0, lens, ws, dy, dhn, dcn, *weights, shard=rule, cell=cell,
                    num_layers=L, num_dirs=D, hidden=H, time_major=tm, precision=prec, state_grads=sg)
    return out[0], out[1], out[2], None, tuple(out[3:])


_core.defvjp(_core_fwd, _core_bwd)


# ----------------------------------------------------------------------------- validation

def _flatten_params(params, gates, input_size, op):
    """params[layer][direction] dicts -> (L, D, H, flat tuple of (w_ih, w_hh, b_ih, b_hh) per layer-direction)."""
    if not isinstance(params, Sequence) or isinstance(params, (str, bytes)) or len(params) == 0:
        raise TypeError(f"{op}: `params` must be a non-empty list of layers (params[layer][direction] dicts), "
                        f"got {type(params).__name__}")
    L = len(params)
    D = None
    for l, layer in enumerate(params):
        if not isinstance(layer, Sequence) or isinstance(layer, (str, bytes)):
            raise TypeError(f"{op}: `params[{l}]` must be a list of 1 or 2 direction dicts, got {type(layer).__name__}")
        if len(layer) not in (1, 2) or (D is not None and len(layer) != D):
            raise ValueError(f"{op}: `params[{l}]` must hold {D or '1 or 2'} direction dicts "
                             f"(same for every layer), got {len(layer)}")
        D = len(layer)
        for d, p in enumerate(layer):
            if not isinstance(p, Mapping):
                raise TypeError(f"{op}: `params[{l}][{d}]` must be a dict with keys {list(_KEYS)}, "
                                f"got {type(p).__name__}")
            if set(p.keys()) != set(_KEYS):
                raise ValueError(f"{op}: `params[{l}][{d}]` must have exactly the keys {list(_KEYS)}, "
                                 f"got {sorted(p.keys())}")
    w_hh = params[0][0]["w_hh"]
    if jnp.ndim(w_hh) != 2 or jnp.shape(w_hh)[0] < 1:
        raise ValueError(f"{op}: `params[0][0]['w_hh']` must have shape (H, {gates}*H), got {jnp.shape(w_hh)}")
    H = int(jnp.shape(w_hh)[0])
    flat = []
    for l in range(L):
        want = {"w_ih": (input_size if l == 0 else D * H, gates * H), "w_hh": (H, gates * H),
                "b_ih": (gates * H,), "b_hh": (gates * H,)}
        for d in range(D):
            for k in _KEYS:
                a = jnp.asarray(params[l][d][k])
                check_float(f"params[{l}][{d}]['{k}']", a, op)
                if a.shape != want[k]:
                    extra = " (input size of layer 0 must match x's feature size)" if l == 0 and k == "w_ih" else ""
                    raise ValueError(f"{op}: `params[{l}][{d}]['{k}']` must have shape {want[k]}{extra}, got {a.shape}")
                flat.append(a)
    return L, D, H, tuple(flat)


def _state(name, s, shape, dtype, op):
    if s is None:
        return jnp.zeros(shape, dtype)
    s = jnp.asarray(s)
    check_float(name, s, op)
    if s.shape != shape:
        raise ValueError(f"{op}: `{name}` must have shape (num_layers*D, B, H) = {shape}, got {s.shape}")
    return s


def _lengths(seq_lengths, B, T, op):
    if seq_lengths is None:
        return jnp.full((B,), T, jnp.int32)
    dtype = getattr(seq_lengths, "dtype", None)
    if dtype is None:
        seq_lengths = np.asarray(seq_lengths)
        dtype = seq_lengths.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{op}: `seq_lengths` must be an integer array of shape ({B},), got dtype {dtype}")
    if jnp.shape(seq_lengths) != (B,):
        raise ValueError(f"{op}: `seq_lengths` must have shape ({B},), got {jnp.shape(seq_lengths)}")
    if not isinstance(seq_lengths, jax.core.Tracer):
        v = np.asarray(seq_lengths)
        if v.size and (v.min() < 0 or v.max() > T):
            raise ValueError(f"{op}: `seq_lengths` values must lie in [0, {T}], got min {v.min()} max {v.max()}")
    return int32_ids("seq_lengths", jnp.asarray(seq_lengths), op)


def _run(cell, x, params, h0, c0, seq_lengths, time_major, op):
    x = jnp.asarray(x)
    check_float("x", x, op)
    if x.ndim != 3:
        layout = "(T, B, I)" if time_major else "(B, T, I)"
        raise ValueError(f"{op}: `x` must have rank 3 {layout}, got shape {x.shape}")
    T, B = (x.shape[0], x.shape[1]) if time_major else (x.shape[1], x.shape[0])
    if T < 1 or B < 1 or x.shape[2] < 1:
        raise ValueError(f"{op}: `x` must be non-empty, got shape {x.shape}")
    gates = _GATES[cell]
    L, D, H, weights = _flatten_params(params, gates, x.shape[2], op)
    shape = (L * D, B, H)
    sg = int(h0 is not None or c0 is not None)
    h0 = _state("h0", h0, shape, x.dtype, op)
    c0 = _state("c0", c0, shape, x.dtype, op) if cell == _LSTM else jnp.zeros((0,), x.dtype)
    lens = _lengths(seq_lengths, B, T, op)
    return _core(cell, L, D, H, int(bool(time_major)), matmul_precision(), sg, x, h0, c0, lens, weights)


# ----------------------------------------------------------------------------- public ops

def lstm(x, params, h0=None, c0=None, *, seq_lengths=None, time_major=False):
    """torch.nn.LSTM semantics. x: (B, T, I) (or (T, B, I) if time_major) -> y, (h_n, c_n)."""
    y, hn, cn = _run(_LSTM, x, params, h0, c0, seq_lengths, time_major, "lstm")
    return y, (hn, cn)


def gru(x, params, h0=None, *, seq_lengths=None, time_major=False):
    """torch.nn.GRU semantics (n = tanh(W_in x + b_in + r * (W_hn h + b_hn))) -> y, h_n."""
    y, hn, _ = _run(_GRU, x, params, h0, None, seq_lengths, time_major, "gru")
    return y, hn


def rnn(x, params, h0=None, *, activation="tanh", seq_lengths=None, time_major=False):
    """torch.nn.RNN semantics (h = act(x W_ih + b_ih + h W_hh + b_hh), act tanh or relu) -> y, h_n."""
    y, hn, _ = _run(_activation_code(activation, "rnn"), x, params, h0, None, seq_lengths, time_major, "rnn")
    return y, hn
