"""Recognising activations in a jaxpr by what they compute, not by how they were written.

`jax.nn.relu` is a custom_jvp around a jit around `max(x, 0)`; `jax.nn.gelu` is a chain of seven
primitives; a user may write `jnp.maximum(x, 0.0)` or `jnp.where(x > 0, x, 0.2 * x)`. Rather than
one pattern per spelling, a candidate (a set of shape-free element-wise equations fed by one
variable and scalar constants) is evaluated on fixed probe points and compared with every
activation of the runtime's list; parameters (leaky_relu's and elu's alpha) are read off the probe.
A match is then checked against the runtime's own kernel, values and gradients, at the points
where spellings that agree on the grid part ways (ties such as 0 and 6, tiny and huge magnitudes,
+-inf, NaN): `jnp.maximum(x, 1e-6)`, `jnp.clip(x, -30, 30)` or `jnp.maximum(x, 0)` (gradient 0.5 at
0, jax.nn.relu's is 0) stay with XLA. User `custom_jvp`/`custom_vjp` functions and `stop_gradient`
end a candidate (their gradient rules are not the chain's); jax's own custom_jvp
functions (jax.nn.relu, relu6, jnp.logaddexp) are replayed as themselves.
Results are cached per candidate structure, so a model's repeated blocks are probed once.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from .. import activations as _act

# Primitives whose parameters do not depend on the operand shape, so a candidate can be replayed
# on the probe vector. Anything else ends a candidate.
ELEMENTWISE = frozenset("""
    abs add sub mul div neg max min pow integer_pow exp exp2 expm1 log log1p tanh logistic erf erfc
    sqrt rsqrt sign select_n ge gt le lt eq ne and or not convert_element_type square clamp
    copy copy_p
""".split())
_WRAPPERS = ("jit", "pjit", "custom_jvp_call", "closed_call")
# jax's own custom_jvp functions met in activations (jax.nn.relu / relu6: gradient 0 at the kinks;
# jax.nn.softplus is jnp.logaddexp(x, 0)), replayed by calling them.
_JAX_CUSTOM = {"relu": jax.nn.relu, "relu6": jax.nn.relu6, "logaddexp": jnp.logaddexp}

_GRID = np.concatenate([np.linspace(-7.0, 7.0, 141), [0.0, 1e-3, -1e-3, 20.0, -20.0, 3.0 - 1e-3, -3.0 + 1e-3]])
_FINITE = np.array([0.0, -0.0, 3.0, -3.0, 6.0, 1e-7, -1e-7, 1e-12, -1e-12, 1e-30, -1e-30, 60.0, -60.0,
                    90.0, -90.0, 120.0, -120.0, 1e4, -1e4])
_P = np.concatenate([_GRID, _FINITE, [1e30, -1e30, np.inf, -np.inf, np.nan]])
_N_GRAD = len(_GRID) + len(_FINITE)  # gradients are compared where both sides are finite numbers
# Cotangents of several magnitudes and signs: a custom rule that clips or scales them shows.
_CT = np.resize(np.array([1.0, -3.0, 0.5, 1000.0, -0.01]), _P.shape)
_erf = np.vectorize(math.erf)


def _ref(name, a):
    p = _GRID
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
    f = f[:len(_GRID)]
    i_m2 = int(np.argmin(np.abs(_GRID + 2.0)))
    i_m7 = int(np.argmin(np.abs(_GRID + 7.0)))
    for name in _ORDER:
        a = 0.0
        if name == "leaky_relu":
            a = float(f[i_m2] / -2.0)
            if a in (0.0, 1.0):  # 1: the identity, nothing to run
                continue
        elif name == "elu":
            a = float(f[i_m7] / np.expm1(-7.0))
        r = _ref(name, a)
        if np.all(np.abs(f - r) <= tol_r * np.abs(r) + tol_a) and _unscaled(f, r, dtype):
            if name == "gelu_tanh":
                return ("gelu", {"approximate": True}), "gelu(approximate=True)"
            if name in ("leaky_relu", "elu"):
                a = float(np.float32(a))
                return (name, {"alpha": a}), f"{name}(alpha={a:g})"
            return name, name
    return None


# A uniform scale (x * 0.99, 1.02 * tanh(x)) hides inside the half types' per-point tolerance, but
# rounding is unbiased: over each side of 0, the least-squares scale of the candidate against the
# activation is 1 to well within an ulp, so one further than about an ulp off is not that activation.
_SCALE_TOL = {jnp.dtype(jnp.float32): 1e-6, jnp.dtype(jnp.float16): 5e-4, jnp.dtype(jnp.bfloat16): 4e-3}


def _unscaled(f, r, dtype):
    for side in (_GRID > 0, _GRID < 0):
        m = side & (np.abs(r) > 1e-2)
        if m.any() and abs(np.sum(f[m] * r[m]) / np.sum(r[m] * r[m]) - 1.0) > _SCALE_TOL[jnp.dtype(dtype)]:
            return False
    return True


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
        elif name == "custom_jvp_call":
            fn = _jax_custom(e)
            if fn is None:
                raise _NotElementwise
            outs = [fn(*ins)]
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


def _jax_custom(e):
    """The _JAX_CUSTOM function that a custom_jvp_call is a call of, else None (a user's rule)."""
    info = getattr(e.params["call_jaxpr"].jaxpr, "debug_info", None)
    src = (getattr(info, "func_src_info", None) or "").replace("\\", "/")
    name = src.split(" ", 1)[0]
    return _JAX_CUSTOM.get(name) if "/jax/_src/" in src else None


def _same(got, want, rtol, atol):
    """Element-wise: equal, both NaN, within rtol/atol, or both below the dtype's normal range."""
    tiny = np.finfo(np.float32).tiny
    with np.errstate(invalid="ignore"):
        ok = (got == want) | (np.isnan(got) & np.isnan(want)) | (np.abs(got - want) <= rtol * np.abs(want) + atol)
    return bool(np.all(ok | ((np.abs(got) < tiny) & (np.abs(want) < tiny))))


def _probe(values, dtype):
    """The probe in `dtype`: its huge magnitudes become inf in float16 on purpose."""
    with np.errstate(over="ignore"):
        return jnp.asarray(values, dtype)


def _runtime_agrees(spec, f, df, dtype):
    """Whether the runtime's activation `spec` gives the candidate's values f and gradients df."""
    name, params = (spec, {}) if isinstance(spec, str) else spec
    p = _probe(_P, dtype)
    r, vjp = jax.vjp(lambda v: _act.activation(v, name, **params), p)
    dr = vjp(_probe(_CT, dtype))[0]
    r, dr = np.asarray(r, np.float64), np.asarray(dr, np.float64)[:_N_GRAD]
    half = dtype != jnp.float32
    # Values at the special points: a few ulps apart at most; gradients: the same rule (0 vs 0.5
    # at a tie, 1 vs 0 past a clip), not the last bits (jax's sigmoid'(20) is 0, the runtime's 2e-9).
    g = len(_GRID)  # (the grid's values were matched already, with an absolute tolerance)
    vals = _same(f[g:], r[g:], *((4e-2, 1e-5) if half else (1e-3, 0.0)))
    ct = _CT[:_N_GRAD]  # per unit cotangent, so that the tolerances mean the same for each
    grads = _same(df[:_N_GRAD] / ct, dr / ct, *((0.1, 2e-2) if half else (1e-3, 1e-4)))
    return vals and grads


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
            f, vjp = jax.vjp(lambda p: _replay(eqns, {x_var: p}, consts)[out_var], _probe(_P, dtype))
            df = np.asarray(vjp(_probe(_CT, f.dtype))[0], np.float64)
            f = np.asarray(f, np.float64)
            res = _identify(f, dtype) if f.shape == _P.shape else None
            if res is not None and not _runtime_agrees(res[0], f, df, dtype):
                res = None
    except (_NotElementwise, TypeError, ValueError):
        res = None
    _cache[key] = res
    return res
