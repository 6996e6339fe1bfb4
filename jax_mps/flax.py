"""Flax NNX layers computed by jax_mps primitives (optional extra: ``pip install ".[flax]"``).

Each layer subclasses its `flax.nnx` namesake and keeps its constructor, attributes and parameter
names, so ``nnx.update(ours, nnx.state(theirs, nnx.Param))`` works and checkpoints load; only
``__call__`` changes. A Conv/ConvTranspose/Linear configuration our primitives do not take directly
(CIRCULAR/REFLECT/CAUSAL padding, masks, input dilation, custom dot_general...) runs Flax's own
``__call__`` through `mps.graph.optimize`, so its convolutions and dense layers still reach the
runtime. Stateful layers outside our primitives (BatchNorm with ``axis_name``/masks/other axes,
Dropout with ``broadcast_dims``, RNN over other cells) run Flax's own code as it is: they update
module state (statistics, RNG counters), which a traced rewrite cannot carry out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.nn import dtypes as _dtypes
from flax.nnx.nn.linear import canonicalize_padding
from flax.nnx.nn.recurrent import flip_sequences

from . import activations as _act
from . import conv as _conv
from .dropout import dropout as _dropout
from . import normalization as _norm
from .rnn import gru as _gru, lstm as _lstm
from ._validate import precision_scope
from .graph import optimize

__all__ = ["Conv", "ConvTranspose", "Linear", "BatchNorm", "Dropout", "RNN", "OptimizedLSTMCell", "GRUCell"]


def _flax_call(cls, self, *args, **kwargs):
    """Flax's own __call__ of `cls`, rewritten by mps.graph.optimize."""
    return optimize(lambda *a: super(cls, self).__call__(*a, **kwargs))(*args)


def _tuple(x, n):
    if x is None:
        x = 1
    return (x,) * n if isinstance(x, int) else tuple(x)


def _plain_promote(m):
    return m.promote_dtype is _dtypes.promote_dtype


def _flat_batch(inputs, nsp):
    """Flax's batch-dims convention: fold all leading dims into one (or add one)."""
    nb = inputs.ndim - (nsp + 1)
    if nb == 1:
        return inputs, None
    return inputs.reshape((-1,) + inputs.shape[nb:]), inputs.shape[:nb]


class Linear(nnx.Linear):
    __doc__ = "flax.nnx.Linear computed by mps.dense (bias fused)." + "\n\n" + (nnx.Linear.__doc__ or "")

    def __call__(self, inputs, out_sharding=None):
        if (self.dot_general is not jax.lax.dot_general or self.preferred_element_type is not None
                or out_sharding is not None or not _plain_promote(self)):
            return _flax_call(Linear, self, inputs, out_sharding=out_sharding)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        with precision_scope(self.precision):
            return _conv.dense(inputs, kernel, bias)


class Conv(nnx.Conv):
    __doc__ = "flax.nnx.Conv (1-D and 2-D) computed by mps.conv2d / mps.conv1d (bias fused)."

    def __call__(self, inputs, out_sharding=None):
        nsp = len(self.kernel_size)
        pad = canonicalize_padding(self.padding, nsp)
        if (nsp not in (1, 2) or (isinstance(pad, str) and pad not in ("SAME", "VALID"))
                or any(d != 1 for d in _tuple(self.input_dilation, nsp)) or self.mask is not None
                or self.conv_general_dilated is not jax.lax.conv_general_dilated
                or self.preferred_element_type is not None or out_sharding is not None
                or not _plain_promote(self)):
            return _flax_call(Conv, self, inputs, out_sharding=out_sharding)
        x, batch = _flat_batch(inputs, nsp)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        f = _conv.conv2d if nsp == 2 else _conv.conv1d
        with precision_scope(self.precision):
            y = f(x, kernel, bias, stride=_tuple(self.strides, nsp), padding=pad if isinstance(pad, str) else tuple(
                tuple(p) for p in pad), dilation=_tuple(self.kernel_dilation, nsp), groups=self.feature_group_count)
        return y if batch is None else y.reshape(batch + y.shape[1:])


class ConvTranspose(nnx.ConvTranspose):
    __doc__ = "flax.nnx.ConvTranspose (2-D) computed by mps.conv_transpose2d (bias fused)."

    def __call__(self, inputs):
        nsp = len(self.kernel_size)
        pad = canonicalize_padding(self.padding, nsp)
        if (nsp != 2 or self.transpose_kernel or self.mask is not None or pad == "CIRCULAR"
                or self.preferred_element_type is not None or not _plain_promote(self)):
            return _flax_call(ConvTranspose, self, inputs)
        x, batch = _flat_batch(inputs, nsp)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        with precision_scope(self.precision):
            y = _conv.conv_transpose2d(x, kernel, bias, stride=_tuple(self.strides, 2),
                                       padding=pad if isinstance(pad, str) else tuple(tuple(p) for p in pad),
                                       dilation=_tuple(self.kernel_dilation, 2))
        return y if batch is None else y.reshape(batch + y.shape[1:])


class BatchNorm(nnx.BatchNorm):
    __doc__ = ("flax.nnx.BatchNorm computed by mps.batch_norm (training: batch statistics, running "
               "averages updated exactly as nnx.BatchNorm) / mps.batch_norm_inference.")

    def __call__(self, x, use_running_average=None, *, mask=None):
        ura = _first(use_running_average, self.use_running_average)
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        # Out-of-range axes are nnx's to handle (it does not wrap them).
        in_range = all(-x.ndim <= a < x.ndim for a in axes)
        if (x.ndim < 2 or not in_range or [a % x.ndim for a in axes] != [x.ndim - 1] or mask is not None
                or self.axis_name is not None or self.axis_index_groups is not None or not _plain_promote(self)):
            return super().__call__(x, use_running_average, mask=mask)
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        x, mean, var, scale, bias = self.promote_dtype((x, self.mean[...], self.var[...], scale, bias),
                                                       dtype=self.dtype)
        c = x.shape[-1]
        scale = jnp.ones((c,), x.dtype) if scale is None else scale
        bias = jnp.zeros((c,), x.dtype) if bias is None else bias
        if ura:
            return _norm.batch_norm_inference(x, scale, bias, mean, var, epsilon=self.epsilon)
        y, bmean, bvar = _norm.batch_norm(x, scale, bias, epsilon=self.epsilon)
        # as nnx.BatchNorm: stop_gradient only for array-ref variables
        stop = jax.lax.stop_gradient if (self.mean._can_update or self.var._can_update) else (lambda v: v)
        self.mean[...] = stop(self.momentum * self.mean[...] + (1 - self.momentum) * bmean)
        self.var[...] = stop(self.momentum * self.var[...] + (1 - self.momentum) * bvar)
        return y


def _first(*xs, what="a mode flag (use_running_average / deterministic)"):
    for x in xs:
        if x is not None:
            return x
    raise ValueError(f"missing {what}")


class Dropout(nnx.Dropout):
    __doc__ = ("flax.nnx.Dropout computed by mps.dropout (mask drawn in the runtime from the same key, "
               "kept bit-packed; masks differ from Flax's bernoulli draw, the distribution is the same).")

    def __call__(self, inputs, *, deterministic=None, rngs=None):
        deterministic = _first(deterministic, self.deterministic)
        if isinstance(self.rate, (str, bytes)):  # float() would take "0.5"; Flax's arithmetic raises
            raise TypeError(f"Dropout rate must be a number, got {type(self.rate).__name__}")
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:  # as Flax: zeros, no key drawn (so the RNG stream stays in step with Flax's)
            return jnp.zeros_like(inputs)
        if self.broadcast_dims:
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        rngs = _first(rngs, self.rngs, what="rngs: `deterministic` is False, but no `rngs` argument was given "
                                             "to the constructor or the call")
        if isinstance(rngs, rnglib.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, rnglib.RngStream):
            key = rngs()
        elif isinstance(rngs, jax.Array):
            key = rngs
        else:
            raise TypeError(f"rngs must be a Rngs, RngStream or jax.Array, but got {type(rngs)}.")
        return _dropout(key, inputs, float(self.rate))


def _gate(fn):
    """Our kernel for Flax's default gate / activation functions, else the user's function."""
    if fn is jax.nn.sigmoid:
        return _act.sigmoid
    if fn is jnp.tanh or fn is jax.nn.tanh:
        return _act.tanh
    return fn


class OptimizedLSTMCell(nnx.OptimizedLSTMCell):
    __doc__ = "flax.nnx.OptimizedLSTMCell with jax_mps dense and activations; RNN runs it as mps.lstm."

    def __call__(self, carry, inputs):
        c, h = carry
        y = self.dense_i(inputs) + self.dense_h(h)
        i, f, g, o = jnp.split(y, 4, axis=-1)
        gate, act = _gate(self.gate_fn), _gate(self.activation_fn)
        new_c = gate(f) * c + gate(i) * act(g)
        new_h = gate(o) * act(new_c)
        return (new_c, new_h), new_h

    def __init__(self, in_features, hidden_features, **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        _swap_linears(self)


class GRUCell(nnx.GRUCell):
    __doc__ = "flax.nnx.GRUCell with jax_mps dense and activations; RNN runs it as mps.gru."

    def __call__(self, carry, inputs):
        h = carry
        xi_r, xi_z, xi_n = jnp.split(self.dense_i(inputs), 3, axis=-1)
        hh_r, hh_z, hh_n = jnp.split(self.dense_h(h), 3, axis=-1)
        gate, act = _gate(self.gate_fn), _gate(self.activation_fn)
        r = gate(xi_r + hh_r)
        z = gate(xi_z + hh_z)
        n = act(xi_n + r * hh_n)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h

    def __init__(self, in_features, hidden_features, **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        _swap_linears(self)


def _swap_linears(cell):
    # The cells build nnx.Linear sub-layers; make them ours without touching their parameters.
    for name in ("dense_i", "dense_h"):
        lin = getattr(cell, name)
        lin.__class__ = Linear


class RNN(nnx.RNN):
    __doc__ = ("flax.nnx.RNN; over our OptimizedLSTMCell / GRUCell (default gate and activation "
               "functions, inputs (B, T, F) or (T, B, F)) the whole sequence is one runtime call "
               "(mps.lstm / mps.gru). With seq_lengths, outputs past a sequence's length are zero "
               "(Flax leaves the values its scan computed there); the carry is the last valid step's, "
               "as Flax's, and the initial carry for a length-0 sequence (Flax's indexing takes "
               "the last step's there).")

    def __call__(self, inputs, *, initial_carry=None, seq_lengths=None, return_carry=None, time_major=None,
                 reverse=None, keep_order=None, rngs=None):
        return_carry = _pick(return_carry, self.return_carry)
        time_major = _pick(time_major, self.time_major)
        reverse = _pick(reverse, self.reverse)
        keep_order = _pick(keep_order, self.keep_order)
        cell = self.cell
        fused = (isinstance(cell, (OptimizedLSTMCell, GRUCell)) and cell.gate_fn is jax.nn.sigmoid
                 and cell.activation_fn in (jnp.tanh, jax.nn.tanh) and inputs.ndim == 3
                 and _plain_promote(cell) and _plain_promote(cell.dense_i) and _plain_promote(cell.dense_h))
        if not fused:
            return super().__call__(inputs, initial_carry=initial_carry, seq_lengths=seq_lengths,
                                    return_carry=return_carry, time_major=time_major, reverse=reverse,
                                    keep_order=keep_order, rngs=rngs)
        x = inputs
        if reverse:
            x = flip_sequences(x, seq_lengths, num_batch_dims=1, time_major=time_major)
        if initial_carry is None:
            if rngs is None:
                rngs = self.rngs
            if isinstance(rngs, rnglib.Rngs):
                rngs = rngs.carry.fork()
            step_shape = (x.shape[1],) + x.shape[2:] if time_major else (x.shape[0],) + x.shape[2:]
            initial_carry = cell.initialize_carry(step_shape, rngs)
        dense = [cell.dense_i.kernel[...], cell.dense_h.kernel[...], cell.dense_i.bias, cell.dense_h.bias]
        dense = [v[...] if isinstance(v, nnx.Variable) else v for v in dense]
        dt = _rnn_dtype(cell, x, dense, initial_carry)
        x = x.astype(dt)
        carry = jax.tree.map(lambda v: jnp.asarray(v, dt), initial_carry)
        wi, wh, bi, bh = (None if v is None else v.astype(dt) for v in dense)
        G = wi.shape[1]
        if 0 in x.shape:  # nothing to compute: zero outputs (Flax's shape), the initial carry
            T, B = x.shape[:2] if time_major else x.shape[1::-1]
            y = jnp.zeros((T, B, cell.hidden_features) if time_major else (B, T, cell.hidden_features), dt)
        elif isinstance(cell, OptimizedLSTMCell):
            c0, h0 = carry
            p = [[{"w_ih": wi, "w_hh": wh, "b_ih": jnp.zeros((G,), dt), "b_hh": bh}]]
            y, (hn, cn) = _lstm(x, p, h0[None], c0[None], seq_lengths=seq_lengths, time_major=time_major)
            carry = (cn[0], hn[0])
        else:
            p = [[{"w_ih": wi, "w_hh": wh, "b_ih": bi, "b_hh": jnp.zeros((G,), dt)}]]
            y, hn = _gru(x, p, carry[None], seq_lengths=seq_lengths, time_major=time_major)
            carry = hn[0]
        if reverse and keep_order:
            y = flip_sequences(y, seq_lengths, num_batch_dims=1, time_major=time_major)
        return (carry, y) if return_carry else y


def _rnn_dtype(cell, x, dense, carry):
    """The dtype Flax's cell computes the recurrence in: its gates (the dense layers' promoted dtype)
    promoted with the carry's (a carry that changed dtype would fail Flax's scan)."""
    gates = cell.dtype if cell.dtype is not None else jnp.result_type(x, *[v for v in dense if v is not None])
    return jnp.result_type(gates, *jax.tree.leaves(carry))


def _pick(a, b):
    return b if a is None else a
