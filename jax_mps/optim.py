"""Optimizers whose update runs as fused runtime kernels over the whole parameter tree (API.md,
"Optimizers — mps.optim").

Each factory returns an `optax.GradientTransformation` (so `optax.chain` / `optax.apply_updates`
work) with an extra `apply(params, grads, state) -> (params, state)` that updates parameters and
state in place (buffers donated, aliased to the custom call's results). One custom call runs per
(parameter dtype, gradient dtype) group and step; clipping by global norm is computed by the
runtime as well. Optimizer state is float32 whatever the parameter dtype; float32 parameters
take float16 / bfloat16 gradients as they are (mixed precision's master weights).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _ffi
from ._validate import scalar_array  # optax takes array hyperparameters (inject_hyperparams)
from ._runtime import contract  # (importing _runtime registers the targets)

__all__ = ["sgd", "adam", "adamw", "rmsprop", "SgdState", "AdamState", "RmspropState"]

_STEP = "jax_mps_optim_step_fwd"
_SQNORM = "jax_mps_optim_sqnorm_fwd"
_FLOATS = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
_RULES = contract.OPTIM_RULES  # codes from the runtime (csrc/runtime/optim.h)
_NORM = contract.OPTIM_NORM_MODES
_INT32_MAX = np.iinfo(np.int32).max


class SgdState(NamedTuple):
    count: jax.Array  # int32 step count (schedules are evaluated on it)
    trace: Any  # momentum buffer (tree like params), None without momentum


class AdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any  # None unless amsgrad


class RmspropState(NamedTuple):
    count: jax.Array
    nu: Any
    mu: Any  # None unless centered
    momentum: Any  # None unless momentum != 0 (holds learning-rate-scaled updates, as optax.trace)


class Optimizer(optax.GradientTransformation):
    """An `optax.GradientTransformation` with a fused in-place `apply(params, grads, state)`."""

    def __new__(cls, init, update, apply):
        self = super().__new__(cls, init, update)
        self.apply = apply
        return self


# --------------------------------------------------------------------------- validation

def _traced(v):
    return isinstance(v, jax.core.Tracer)


def _on(v):
    """Whether an option's term may be on: a traced value may be anything."""
    return _traced(v) or v > 0.0


def _check_lr(learning_rate):
    if callable(learning_rate):
        return learning_rate
    return _check_num("learning_rate", learning_rate, lo=0.0,
                      what="a float, a scalar array or an optax schedule (callable)")


def _check_num(name, v, *, lo=None, hi=None, lo_open=False, hi_open=False, what="a number"):
    """A concrete number as a float, range-checked; a traced 0-d array (optax.inject_hyperparams
    under jit) as it is: the kernels read hyperparameters as data and, as optax, do not check them."""
    if _traced(v):
        if not scalar_array(v):
            raise TypeError(f"{name} must be {what}, got a traced {v.dtype}{list(v.shape)}")
        return v
    if scalar_array(v):
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {what}, got {type(v).__name__}")
    v = float(v)
    bad = not np.isfinite(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be in {rng}, got {v}")
    return v


def _momentum_slot(raw, momentum):
    """A momentum buffer exists for a nonzero Python number and for any array: optax.inject_hyperparams
    passes arrays whose value may change between steps (0 then 0.9), so the state must not hinge on it."""
    return isinstance(raw, (jax.Array, np.ndarray, np.generic)) or momentum != 0.0


def _common(gradient_rescale, clip_value, clip_norm, regularization, regularization_scale):
    rescale = _check_num("gradient_rescale", gradient_rescale, lo=0.0)
    # Off is clipping to +-inf, so any value given -- a traced 0 included -- clips as optax's would.
    cv = np.inf if clip_value is None else _check_num("clip_value", clip_value, lo=0.0, lo_open=True)
    cn = np.inf if clip_norm is None else _check_num("clip_norm", clip_norm, lo=0.0, lo_open=True)
    if regularization not in (None, "l1", "l2"):
        raise ValueError(f'regularization must be None, "l1" or "l2", got {regularization!r}')
    scale = _check_num("regularization_scale", regularization_scale, lo=0.0)
    return dict(rescale=rescale, clip_value=cv, clip_norm=cn, norm=clip_norm is not None,
                l1=scale if regularization == "l1" else 0.0,
                l2=scale if regularization == "l2" else 0.0)


def _float_leaves(tree, what):
    leaves, treedef = jax.tree.flatten(tree)
    for i, x in enumerate(leaves):
        dt = getattr(x, "dtype", None)
        if dt is None or jnp.dtype(dt) not in _FLOATS:
            path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(tree)[0][i][0])
            raise TypeError(f"{what}{path}: leaves must be float32, float16 or bfloat16 arrays, got "
                            f"{dt if dt is not None else type(x).__name__}")
    return leaves, treedef


def _same_tree(treedef, other, what):
    if other != treedef:
        raise ValueError(f"{what} tree structure {other} does not match params tree structure {treedef}")


# --------------------------------------------------------------------------- the transformation

def _one_minus(b):
    """1 - b as optax forms it: in double and rounded once for a number, in float32 for an array."""
    return 1.0 - b if _traced(b) else np.float32(1.0 - b)


def _undup(params, state, grads):
    """params and state with a copy for each buffer met before (tied weights, apply(p, p, s), slots
    sharing one zeros array): XLA can donate a buffer only once, and not one also passed undonated."""
    seen = {id(x) for x in jax.tree.leaves(grads)}

    def once(x):
        if not isinstance(x, jax.Array) or _traced(x):
            return x
        if id(x) in seen:
            return jnp.copy(x)
        seen.add(id(x))
        return x
    return jax.tree.map(once, params), jax.tree.map(once, state)


def _make(rule, state_cls, slot_names, learning_rate, hyper, common, needs_params):
    lr = _check_lr(learning_rate)
    nslots = len(slot_names)
    b1, b2 = hyper.get("b1", 0.0), hyper.get("b2", 0.0)
    # The hp operand's entries but learning_rate and grad_scale (known at each step): numbers or,
    # under optax.inject_hyperparams, traced scalars.
    fixed = dict(rescale=common["rescale"], clip_value=common["clip_value"], clip_norm=common["clip_norm"],
                 l1=common["l1"], l2=common["l2"], b1=b1, ob1=_one_minus(b1), b2=b2, ob2=_one_minus(b2),
                 eps=hyper.get("eps", 0.0), momentum=hyper.get("momentum", 0.0),
                 weight_decay=hyper.get("weight_decay", 0.0))
    names = contract.OPTIM_HYPER
    assert names[:2] == ["learning_rate", "grad_scale"], names  # the per-step entries lead
    rest = [fixed[k] for k in names[2:]]
    if not any(map(_traced, rest)):
        rest = np.asarray(rest, np.float32)
    attrs = dict(rule=np.int64(_RULES[rule]), nslots=np.int64(nslots),
                 nesterov=np.int64(hyper.get("nesterov", False)), amsgrad=np.int64(hyper.get("amsgrad", False)),
                 centered=np.int64(hyper.get("centered", False)))
    needs_params = needs_params or _on(common["l1"]) or _on(common["l2"])
    all_slots = state_cls._fields[1:]

    def init(params):
        leaves, treedef = _float_leaves(params, "params")
        slots = {}
        for name in all_slots:
            slots[name] = (jax.tree.unflatten(treedef, [jnp.zeros(x.shape, jnp.float32) for x in leaves])
                           if name in slot_names else None)
        return state_cls(count=jnp.zeros([], jnp.int32), **slots)

    def step(params, grads, state, write_updates, grad_scale=None):
        g_leaves, treedef = _float_leaves(grads, "grads")
        if params is None:
            if needs_params:
                raise ValueError(f"{rule}: this configuration (weight decay or L1/L2 regularization) needs params")
            p_leaves = g_leaves
        else:
            p_leaves, p_def = _float_leaves(params, "params")
            _same_tree(p_def, treedef, "grads")
        if not isinstance(state, state_cls):
            raise TypeError(f"{rule}: state must be a {state_cls.__name__} from this optimizer's init, "
                            f"got {type(state).__name__}")
        if jnp.size(state.count) != 1:
            raise ValueError(f"{rule}: state.count must be a scalar step count, got shape {jnp.shape(state.count)}")
        s_leaves = []
        for name in slot_names:
            tree = getattr(state, name)
            if tree is None:
                raise ValueError(f"{rule}: state.{name} is None; the state comes from another configuration")
            leaves, sdef = jax.tree.flatten(tree)
            _same_tree(sdef, treedef, f"state.{name}")
            for i, (s, p) in enumerate(zip(leaves, p_leaves)):
                if s.shape != p.shape or s.dtype != jnp.float32:
                    raise ValueError(f"state.{name} leaf {i}: expected float32{tuple(p.shape)}, got {s.dtype}{tuple(s.shape)}")
            s_leaves.append(leaves)
        for i, (g, p) in enumerate(zip(g_leaves, p_leaves)):
            if g.shape != p.shape:
                raise ValueError(f"grads leaf {i}: shape {tuple(g.shape)} does not match param shape {tuple(p.shape)}")
        # Loss-scaled gradients (mixed_precision) are unscaled by the kernels themselves, so no
        # float32 copy of the gradients is written.
        gscale = 1.0 if grad_scale is None else jnp.asarray(grad_scale, jnp.float32).reshape(())
        # float32 params read float16 / bfloat16 grads in the kernel itself (mixed precision's
        # masters); any other mismatch is cast to the param dtype.
        g_leaves = [g if g.dtype == p.dtype or (p.dtype == jnp.float32 and g.dtype in _FLOATS) else g.astype(p.dtype)
                    for g, p in zip(g_leaves, p_leaves)]

        count = jnp.asarray(state.count, jnp.int32)
        rate = lr(count) if callable(lr) else lr
        per_step = [jnp.reshape(rate, ()), gscale]
        hp = (jnp.concatenate([jnp.stack(per_step).astype(jnp.float32), rest]) if isinstance(rest, np.ndarray)
              else jnp.stack([jnp.asarray(v, jnp.float32) for v in per_step + rest]))
        count_inc = jnp.where(count < _INT32_MAX, count + 1, _INT32_MAX).astype(jnp.int32)

        groups: dict = {}
        for i, p in enumerate(p_leaves):
            groups.setdefault((jnp.dtype(p.dtype), jnp.dtype(g_leaves[i].dtype)), []).append(i)
        norm_mode = _NORM["none"]
        sqnorm = jnp.zeros([], jnp.float32)
        if common["norm"]:
            norm_mode = _NORM["internal"]
            if len(groups) > 1:  # the norm spans every group: sum each group's squared norm first
                norm_mode = _NORM["external"]
                parts = [_ffi.call(_SQNORM, jax.ShapeDtypeStruct((), jnp.float32), hp, *[g_leaves[i] for i in idx])
                         for idx in groups.values()]
                sqnorm = sum(parts[1:], parts[0])

        out = [None] * len(p_leaves)
        new_slots = [[None] * len(p_leaves) for _ in range(nslots)]
        for (dtype, _), idx in groups.items():
            n = len(idx)
            operands = ([p_leaves[i] for i in idx] + [g_leaves[i] for i in idx]
                        + [s_leaves[s][i] for s in range(nslots) for i in idx])
            specs = ([jax.ShapeDtypeStruct(p_leaves[i].shape, dtype) for i in idx]
                     + [jax.ShapeDtypeStruct(p_leaves[i].shape, jnp.float32) for _ in range(nslots) for i in idx])
            aliases = {}
            if not write_updates:  # in place: params and slots become the results
                aliases = {3 + k: k for k in range(n)}
                aliases.update({3 + (2 + s) * n + k: (1 + s) * n + k for s in range(nslots) for k in range(n)})
            # Through _ffi (no fold: under vmap, an ensemble's members step one after another).
            res = _ffi.composite(
                lambda axes, specs, *a, aliases=aliases, n=n: _ffi.kernel(
                    _STEP, specs, *a, aliases=aliases, n=n, write_updates=write_updates, norm_mode=norm_mode,
                    **attrs),
                specs, count_inc, sqnorm, hp, *operands)
            for k, i in enumerate(idx):
                out[i] = res[k]
                for s in range(nslots):
                    new_slots[s][i] = res[(1 + s) * n + k]

        slots = {name: None for name in all_slots}
        for s, name in enumerate(slot_names):
            slots[name] = jax.tree.unflatten(treedef, new_slots[s])
        return jax.tree.unflatten(treedef, out), state_cls(count=count_inc, **slots)

    def update(updates, state, params=None):
        return step(params, updates, state, True)

    _apply_donated = jax.jit(lambda p, g, s, gs: step(p, g, s, False, gs), donate_argnums=(0, 2))

    def apply(params, grads, state, grad_scale=None):
        """Fused step updating `params` and `state` in place (their buffers are donated).

        grads may be lower precision than params (float16 / bfloat16 gradients of float32 master
        weights, see mixed_precision); grad_scale (a traced scalar, e.g. 1 / loss scale) multiplies
        them inside the fused kernels, before rescale and clipping."""
        params, state = _undup(params, state, grads)
        return _apply_donated(params, grads, state, grad_scale)

    return Optimizer(init, update, apply)


# --------------------------------------------------------------------------- public factories

def sgd(learning_rate, momentum=0.0, nesterov=False, *, gradient_rescale=1.0, clip_value=None,
        clip_norm=None, regularization=None, regularization_scale=0.0) -> Optimizer:
    """SGD with optional (Nesterov) momentum; with defaults equals `optax.sgd`."""
    raw, momentum = momentum, _check_num("momentum", 0.0 if momentum is None else momentum, lo=0.0)
    if nesterov and not _on(momentum):
        raise ValueError("sgd: nesterov=True needs momentum > 0")
    common = _common(gradient_rescale, clip_value, clip_norm, regularization, regularization_scale)
    slots = ("trace",) if _momentum_slot(raw, momentum) else ()
    return _make("sgd", SgdState, slots, learning_rate, dict(momentum=momentum, nesterov=bool(nesterov)),
                 common, False)


def _adam(learning_rate, b1, b2, eps, weight_decay, amsgrad, common):
    b1 = _check_num("b1", b1, lo=0.0, hi=1.0, hi_open=True)
    b2 = _check_num("b2", b2, lo=0.0, hi=1.0, hi_open=True)
    eps = _check_num("eps", eps, lo=0.0)
    slots = ("mu", "nu", "nu_max") if amsgrad else ("mu", "nu")
    return _make("adam", AdamState, slots, learning_rate,
                 dict(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad)),
                 common, _on(weight_decay))


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, amsgrad=False, *, gradient_rescale=1.0,
         clip_value=None, clip_norm=None, regularization=None, regularization_scale=0.0) -> Optimizer:
    """Adam (AMSGrad with `amsgrad=True`, as `optax.amsgrad`); with defaults equals `optax.adam`."""
    common = _common(gradient_rescale, clip_value, clip_norm, regularization, regularization_scale)
    return _adam(learning_rate, b1, b2, eps, 0.0, amsgrad, common)


def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4, amsgrad=False, *,
          gradient_rescale=1.0, clip_value=None, clip_norm=None, regularization=None,
          regularization_scale=0.0) -> Optimizer:
    """AdamW (decoupled weight decay); with defaults equals `optax.adamw`."""
    common = _common(gradient_rescale, clip_value, clip_norm, regularization, regularization_scale)
    weight_decay = _check_num("weight_decay", weight_decay, lo=0.0)
    return _adam(learning_rate, b1, b2, eps, weight_decay, amsgrad, common)


def rmsprop(learning_rate, decay=0.9, eps=1e-8, momentum=0.0, centered=False, *, gradient_rescale=1.0,
            clip_value=None, clip_norm=None, regularization=None, regularization_scale=0.0) -> Optimizer:
    """RMSProp (eps inside the square root, momentum applied after the learning rate, as
    `optax.rmsprop`); with defaults equals `optax.rmsprop`."""
    decay = _check_num("decay", decay, lo=0.0, hi=1.0)
    eps = _check_num("eps", eps, lo=0.0)
    raw, momentum = momentum, _check_num("momentum", 0.0 if momentum is None else momentum, lo=0.0)
    common = _common(gradient_rescale, clip_value, clip_norm, regularization, regularization_scale)
    slots = ("nu",) + (("mu",) if centered else ()) + (("momentum",) if _momentum_slot(raw, momentum) else ())
    return _make("rmsprop", RmspropState, slots, learning_rate,
                 dict(b2=decay, eps=eps, momentum=momentum, centered=bool(centered)), common, False)
