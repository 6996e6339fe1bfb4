"""Mixed precision: low-precision compute with float32 master weights, and loss scaling.

A `Policy` keeps the parameters (the masters the optimizer updates) in float32 and casts them
to bfloat16 / float16 for the forward and backward passes, so activations and gradients are
low precision; `mps.optim` then reads those gradients and updates the float32 masters (and its
float32 state) in one fused call per step.

float16 needs loss scaling (its range ends at 65504 and small gradients underflow): the loss is
multiplied by a scale before differentiation and the gradients are divided by it (`grad_scale`
of the optimizer's apply: one float32 multiply before the step call). `DynamicLossScale` grows the scale by `growth_factor` after `growth_interval`
finite steps in a row and, on a step whose gradients hold inf/nan, multiplies it by
`backoff_factor` and skips the update (parameters and optimizer state are left unchanged), as
`torch.amp.GradScaler` and `jmp.DynamicLossScale`. bfloat16 has float32's range: use
`NoLossScale` (the default).

    policy = mps.mixed_precision.Policy(jnp.float16)
    scale = mps.mixed_precision.DynamicLossScale.create()
    opt = mps.optim.adam(1e-3)

    @jax.jit
    def step(params, opt_state, scale, batch):
        loss, grads = mps.mixed_precision.value_and_grad(loss_fn, policy, scale)(params, batch)
        params, opt_state, scale = mps.mixed_precision.apply(opt, params, grads, opt_state, scale)
        return params, opt_state, scale, loss
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Policy", "DynamicLossScale", "NoLossScale", "value_and_grad", "apply", "all_finite"]

_LOW = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))


def _float_dtype(dtype, what):
    d = jnp.dtype(dtype)
    if d not in _LOW:
        raise TypeError(f"Policy: `{what}` must be float32, float16 or bfloat16, got {d}")
    return d


def _cast(tree, dtype):
    def one(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x
    return jax.tree.map(one, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """compute_dtype: parameters and inputs as the forward sees them; param_dtype: the masters;
    output_dtype: what the loss function's result is cast to (default float32)."""
    compute_dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    def __post_init__(self):
        for f in ("compute_dtype", "param_dtype", "output_dtype"):
            object.__setattr__(self, f, _float_dtype(getattr(self, f), f))

    def cast_to_compute(self, tree):
        return _cast(tree, self.compute_dtype)

    def cast_to_param(self, tree):
        return _cast(tree, self.param_dtype)

    def cast_to_output(self, tree):
        return _cast(tree, self.output_dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
    """Loss-scale state (a pytree: `scale`, `good_steps` are arrays, the rest static)."""
    scale: jax.Array
    good_steps: jax.Array
    growth_interval: int = dataclasses.field(default=2000, metadata=dict(static=True))
    growth_factor: float = dataclasses.field(default=2.0, metadata=dict(static=True))
    backoff_factor: float = dataclasses.field(default=0.5, metadata=dict(static=True))
    min_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))

    @classmethod
    def create(cls, initial_scale=2.0 ** 15, growth_interval=2000, growth_factor=2.0, backoff_factor=0.5,
               min_scale=1.0):
        if not (np.isfinite(initial_scale) and initial_scale > 0):
            raise ValueError(f"DynamicLossScale: initial_scale must be a finite number > 0, got {initial_scale}")
        if not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"DynamicLossScale: growth_interval must be an int >= 1, got {growth_interval!r}")
        if not growth_factor >= 1.0 or not 0.0 < backoff_factor <= 1.0 or not min_scale > 0:
            raise ValueError("DynamicLossScale: needs growth_factor >= 1, 0 < backoff_factor <= 1, min_scale > 0")
        return cls(jnp.asarray(initial_scale, jnp.float32), jnp.zeros((), jnp.int32), growth_interval,
                   float(growth_factor), float(backoff_factor), float(min_scale))

    def scale_loss(self, loss):
        return loss * self.scale.astype(loss.dtype)

    def adjust(self, finite):
        """The state after a step whose gradients were all finite (`finite`) or not."""
        grown = self.good_steps + 1 >= self.growth_interval
        up = jnp.where(grown, self.scale * self.growth_factor, self.scale)
        up = jnp.where(jnp.isfinite(up), up, self.scale)  # never grow into inf
        down = jnp.maximum(self.scale * self.backoff_factor, self.min_scale)
        scale = jnp.where(finite, up, down)
        good = jnp.where(finite & ~grown, self.good_steps + 1, 0).astype(jnp.int32)
        return dataclasses.replace(self, scale=scale, good_steps=good)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoLossScale:
    """Scale 1 and no skipping (bfloat16 / float32)."""

    @property
    def scale(self):
        return jnp.ones((), jnp.float32)

    def scale_loss(self, loss):
        return loss

    def adjust(self, finite):
        return self


def all_finite(tree) -> jax.Array:
    """True when every float leaf of `tree` is free of inf and nan."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()


def value_and_grad(fun: Callable, policy: Policy | None = None, loss_scale=None, has_aux: bool = False):
    """`jax.value_and_grad(fun)` under `policy`: fun(params, *args) is run on
    `policy.cast_to_compute(params)` and the gradients come back in the compute dtype (so the
    optimizer reads them as they are), multiplied by `loss_scale.scale`. The returned loss is
    unscaled, in `policy.output_dtype`."""
    policy = Policy() if policy is None else policy
    loss_scale = NoLossScale() if loss_scale is None else loss_scale

    def wrapped(params, *args, **kwargs):
        def scaled(cparams):
            out = fun(cparams, *args, **kwargs)
            loss, aux = out if has_aux else (out, None)
            loss = policy.cast_to_output(loss)
            return loss_scale.scale_loss(loss), (loss, aux)

        (_, (loss, aux)), grads = jax.value_and_grad(scaled, has_aux=True)(policy.cast_to_compute(params))
        return ((loss, aux) if has_aux else loss), grads

    return wrapped


def apply(optimizer, params, grads, opt_state, loss_scale=None):
    """One optimizer step on scaled low-precision `grads` with float32 master `params`.

    The gradients are unscaled by `optimizer.apply(..., grad_scale=1 / scale)`. With a `DynamicLossScale` a step
    whose gradients hold inf/nan leaves `params` and `opt_state` unchanged; the loss scale is
    adjusted either way. Returns (params, opt_state, loss_scale).
    """
    loss_scale = NoLossScale() if loss_scale is None else loss_scale
    inv = (1.0 / loss_scale.scale).astype(jnp.float32)
    if isinstance(loss_scale, NoLossScale):
        p, s = optimizer.apply(params, grads, opt_state, grad_scale=None)
        return p, s, loss_scale
    finite = all_finite(grads)
    p, s = jax.lax.cond(finite, lambda: optimizer.apply(params, grads, opt_state, grad_scale=inv),
                        lambda: (params, opt_state))
    return p, s, loss_scale.adjust(finite)
