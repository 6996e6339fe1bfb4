"""Recognising activations in a jaxpr by what they compute, not by how they were written.

`jax.nn.relu` is a custom_jvp around a jit around `max(x, 0)`; `jax.nn.gelu` is a chain of seven
primitives; a user may write `jnp.maximum(x, 0.0)` or `jnp.where(x > 0, x, 0.2 * x)`. Rather than
one pattern per spelling, a candidate (a set of shape-free element-wise equations fed by one
variable and scalar constants) is evaluated on fixed probe points and compared with every
activation of the runtime's list; parameters (leaky_relu's and elu's alpha) are read off the probe.
Results are cached per candidate structure, so a model's repeated blocks are probed once.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

# Primitives whose parameters do not depend on the operand shape, so a candidate can be replayed
# on the probe vector. Anything else ends a candidate.
ELEMENTWISE = frozenset("""
    abs add sub mul div neg max min pow integer_pow exp exp2 expm1 log log1p tanh logistic erf erfc
    sqrt rsqrt sign select_n ge gt le lt eq ne and or not convert_element_type square clamp
    copy copy_p stop_gradient
""".split())
_WRAPPERS = ("jit", "pjit", "custom_jvp_call", "custom_vjp_call", "closed_call")

_P = np.concatenate([np.linspace(-7.0, 7.0, 141), [0.0, 1e-3, -1e-3, 20.0, -20.0, 3.0 - 1e-3, -3.0 + 1e-3]])
_erf = np.vectorize(math.erf)


def _ref(name, a):
    p = _P
    if name == "relu":
        return np.maximum(p, 0)
    if name == "relu6":
        return np.clip(p, 0, 6)
    if name == "leaky_relu":
        return np.where(p >= 0, p, a * p)
    if name == "elu":
        return np.where(p > 0, p, a * np.expm1(np.minimum(p, 0)))
    if name == "sigmoid":
        return 1 / (1 + np.exp(-p))
    if name == "hard_sigmoid":
        return np.clip(p / 6 + 0.5, 0, 1)
    if name == "tanh":
        return np.tanh(p)
    if name == "softplus":
        return np.log1p(np.exp(-np.abs(p))) + np.maximum(p, 0)
    if name == "softsign":
        return p / (1 + np.abs(p))
    if name == "gelu":
        return 0.5 * p * (1 + _erf(p / math.sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * p * (1 + np.tanh(math.sqrt(2 / math.pi) * (p + 0.044715 * p ** 3)))
    raise AssertionError(name)


_ORDER = ("relu", "relu6", "leaky_relu", "elu", "sigmoid", "hard_sigmoid", "tanh", "softplus", "softsign",
          "gelu", "gelu_tanh")


def _identify(f, dtype):
    """(activation spec for jax_mps, description) for probe outputs f, or None."""
    tol_r, tol_a = (2e-5, 2e-6) if dtype == jnp.float32 else (2e-2, 2e-3)
    i_m2 = int(np.argmin(np.abs(_P + 2.0)))
    i_m7 = int(np.argmin(np.abs(_P + 7.0)))
    for name in _ORDER:
        a = 0.0
        if name == "leaky_relu":
            a = float(f[i_m2] / -2.0)
            if a == 0.0:
                continue
        elif name == "elu":
            a = float(f[i_m7] / np.expm1(-7.0))
        r = _ref(name, a)
        if np.all(np.abs(f - r) <= tol_r * np.abs(r) + tol_a):
            if name == "gelu_tanh":
                return ("gelu", {"approximate": True}), "gelu(approximate=True)"
            if name in ("leaky_relu", "elu"):
                a = float(np.float32(a))
                return (name, {"alpha": a}), f"{name}(alpha={a:g})"
            return name, name
    return None


def scalar_const(v, consts):
    """The Python scalar a variable or literal stands for when it is a broadcast scalar constant."""
    if isinstance(v, jcore.Literal):
        val = np.asarray(v.val)
        return val.reshape(()) if val.size == 1 else None
    return consts.get(v)


def _replay(eqns, env, consts):
    """Evaluate `eqns` from `env` (variable -> value) on the probe; raises _NotElementwise on an
    equation that is not shape-free (a broadcast of a scalar is: it becomes the probe's shape)."""
    env = dict(env)

    def read(v):
        if not isinstance(v, jcore.Literal) and v in env:
            return env[v]
        c = scalar_const(v, consts)
        if c is None:
            raise _NotElementwise
        return c

    for e in eqns:
        name = e.primitive.name
        ins = [read(v) for v in e.invars]
        if name in ELEMENTWISE:
            params = dict(e.params)
            if name == "convert_element_type":
                params["sharding"] = None
            outs = e.primitive.bind(*ins, **params)
            outs = outs if e.primitive.multiple_results else [outs]
        elif name == "broadcast_in_dim" and np.ndim(ins[0]) == 0:
            outs = [jnp.broadcast_to(ins[0], _P.shape)]
        elif name in _WRAPPERS:
            body = e.params.get("jaxpr") or e.params.get("call_jaxpr")
            body = body.jaxpr if hasattr(body, "jaxpr") else body
            if body is None or len(body.invars) != len(ins) or body.constvars:
                raise _NotElementwise
            inner = _replay(body.eqns, dict(zip(body.invars, ins)), constant_scalars(body.eqns, {}))
            outs = [inner[v] if not isinstance(v, jcore.Literal) and v in inner else read_lit(v)
                    for v in body.outvars]
        else:
            raise _NotElementwise
        for v, o in zip(e.outvars, outs):
            env[v] = o
    return env


def read_lit(v):
    if isinstance(v, jcore.Literal):
        return v.val
    raise _NotElementwise


class _NotElementwise(Exception):
    pass


def constant_scalars(eqns, consts):
    """Variables that are broadcasts of scalar literals (`jnp.zeros_like` etc.) -> their value."""
    out = dict(consts)
    for e in eqns:
        if e.primitive.name == "broadcast_in_dim" and len(e.invars) == 1:
            c = scalar_const(e.invars[0], out)
            if c is not None:
                out[e.outvars[0]] = c
    return out


_cache: dict = {}


def probe(eqns, x_var, out_var, consts, key):
    """Activation spec computed by `eqns` (x_var -> out_var), or None. `key` identifies the structure."""
    if key in _cache:
        return _cache[key]
    dtype = x_var.aval.dtype
    try:
        with jax.ensure_compile_time_eval():
            env = _replay(eqns, {x_var: jnp.asarray(_P, dtype)}, consts)
            f = np.asarray(env[out_var], np.float64)
        res = _identify(f, dtype) if f.shape == _P.shape else None
    except (_NotElementwise, TypeError, ValueError):
        res = None
    _cache[key] = res
    return res
