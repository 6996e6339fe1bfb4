"""Trace-time argument checks shared by every op: clear ValueError/TypeError naming the argument."""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from ._runtime import contract

FLOAT_DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)

# The public activation names (API.md) and their default alpha; codes come from the runtime.
# "gelu" with approximate=True is the runtime's "gelu_tanh"; "prelu" (a learned per-channel
# slope) is its own op, reached through activations.activation.
ACTIVATION_ALPHA = {
    "relu": 0.0, "relu6": 0.0, "leaky_relu": 0.01, "elu": 1.0, "sigmoid": 0.0, "hard_sigmoid": 0.0,
    "tanh": 0.0, "softplus": 0.0, "softsign": 0.0, "gelu": 0.0,
}


ACT_NONE = contract.ACTIVATIONS["none"]
ACT_RELU = contract.ACTIVATIONS["relu"]


# jax.default_matmul_precision values (legacy names and dot-algorithm presets) that ask for full
# float32 matmul / conv math. Every other value, and None (the default), lets CUDA use TF32 for
# float32 operands, as XLA does on GPU; the CPU always computes in float32.
FULL_FLOAT32 = frozenset({"highest", "float32", "F32_F32_F32", "F64_F64_F64", "TF32_TF32_F32_X3",
                           "BF16_BF16_F32_X6", "BF16_BF16_F32_X9"})


def matmul_precision() -> int:
    """The runtime's precision code for float32 conv / dense / RNN math: jax.default_matmul_precision
    as it stands at trace time (the flag or the context manager; part of jit's cache key)."""
    full = jax.config.jax_default_matmul_precision in FULL_FLOAT32
    return contract.PRECISIONS["highest" if full else "default"]


try:
    from jax._src.lax.lax import canonicalize_precision as _canonicalize_precision
except ImportError:  # moved in a later jax: layers' precision arguments go unchecked
    _canonicalize_precision = None


def precision_is_full(precision) -> bool:
    """Whether a lax `precision` argument (None, a string, a lax.Precision, a DotAlgorithmPreset or a
    pair of them) asks for full float32 math."""
    return any(v == jax.lax.Precision.HIGHEST or v in FULL_FLOAT32 or getattr(v, "name", None) in FULL_FLOAT32
               for v in (precision if isinstance(precision, tuple) else (precision,)) if v is not None)


def precision_scope(precision):
    """The matmul precision our kernels read (matmul_precision) set from a layer's own lax `precision`
    argument; None leaves jax.default_matmul_precision as it stands."""
    if precision is None:
        return contextlib.nullcontext()
    if _canonicalize_precision is not None:  # lax's own check and message for a bad argument
        _canonicalize_precision(precision)
    return jax.default_matmul_precision("highest" if precision_is_full(precision) else "default")


def grad_from_output(code: int, alpha: float) -> bool:
    """The runtime's one rule: is activation `code` differentiated from its output alone?"""
    return contract.act_grad_from_output(int(code), float(alpha))


def check_float(name: str, x, op: str) -> None:
    dtype = getattr(x, "dtype", None)
    if dtype is None or not any(dtype == d for d in FLOAT_DTYPES):
        raise TypeError(f"{op}: `{name}` must be float32, float16 or bfloat16, got {dtype}")


def scalar_array(v) -> bool:
    """A real (float or integer) 0-d NumPy / JAX array, concrete or traced."""
    return (isinstance(v, (np.ndarray, jax.Array)) and v.ndim == 0
            and (jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)))


def static_real(name: str, v, op: str, ok=lambda v: True, what: str = "") -> float:
    """A finite real attribute compiled into the kernel: a Python / NumPy number or a concrete 0-d
    real array (np.float32(1e-5), jnp.array(1e-5)), as a float; `ok(v)` must hold."""
    if isinstance(v, jax.core.Tracer):
        raise TypeError(f"{op}: `{name}` must be a static number (it is compiled into the kernel), "
                        "got a traced value")
    if scalar_array(v):
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not np.isfinite(v) or not ok(v):
        raise ValueError(f"{op}: `{name}` must be a finite number{what}, got {v!r}")
    return float(v)


def is_int(v) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_rank(name: str, x, rank: int, layout: str, op: str) -> None:
    if jnp.ndim(x) != rank:
        raise ValueError(f"{op}: `{name}` must have rank {rank} {layout}, got shape {tuple(jnp.shape(x))}")


def check_shape(name: str, x, shape: tuple, op: str) -> None:
    if tuple(jnp.shape(x)) != tuple(shape):
        raise ValueError(f"{op}: `{name}` must have shape {tuple(shape)}, got {tuple(jnp.shape(x))}")


# Window, stride, dilation, scale and padding sizes: the kernels (oneDNN, cuDNN) take them as int32.
MAX_INT_ATTR = 2 ** 31 - 1


def int_tuple(name: str, v, n: int, op: str, minimum: int = 1) -> tuple[int, ...]:
    """int or length-n sequence of ints, each in [minimum, MAX_INT_ATTR]. Non-integers (1.5, 2.0,
    "2") raise TypeError, as lax does, rather than being truncated."""
    if is_int(v):
        t = (int(v),) * n
    elif isinstance(v, (tuple, list)) and len(v) == n:
        if not all(is_int(e) for e in v):
            raise TypeError(f"{op}: `{name}` must be an int or a tuple of {n} ints, got {v!r}")
        t = tuple(int(e) for e in v)
    elif isinstance(v, (tuple, list)):
        raise ValueError(f"{op}: `{name}` must be an int or a tuple of {n} ints, got {v!r}")
    else:
        raise TypeError(f"{op}: `{name}` must be an int or a tuple of {n} ints, got {v!r}")
    if any(e < minimum for e in t):
        raise ValueError(f"{op}: `{name}` entries must be >= {minimum}, got {v!r}")
    if any(e > MAX_INT_ATTR for e in t):
        raise ValueError(f"{op}: `{name}` entries must be < 2**31, got {v!r}")
    return t


def _check_pad_range(pairs, padding, op: str):
    if any(abs(e) > MAX_INT_ATTR for p in pairs for e in p):
        raise ValueError(f"{op}: `padding` entries must be within +-(2**31 - 1), got {padding!r}")
    return pairs


def padding_pairs(padding, in_spatial, window, stride, dilation, op: str) -> tuple[tuple[int, int], ...]:
    """Explicit (lo, hi) per spatial dim, with the meaning of lax.conv_general_dilated."""
    n = len(in_spatial)
    if isinstance(padding, str):
        p = padding.upper()
        if p == "VALID":
            return ((0, 0),) * n
        if p == "SAME":
            out = []
            for i, k, s, d in zip(in_spatial, window, stride, dilation):
                ek = (k - 1) * d + 1
                o = -(-i // s)
                total = max((o - 1) * s + ek - i, 0)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        raise ValueError(f"{op}: `padding` must be 'SAME', 'VALID', an int or {n} (lo, hi) pairs, got {padding!r}")
    if is_int(padding):
        if padding < 0:
            raise ValueError(f"{op}: `padding` must be >= 0, got {padding}")
        return _check_pad_range(((int(padding), int(padding)),) * n, padding, op)
    expected = f"{op}: `padding` must be 'SAME', 'VALID', an int or {n} (lo, hi) pairs of ints, got {padding!r}"
    if not isinstance(padding, (tuple, list)):
        raise TypeError(expected)
    if len(padding) != n or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding):
        raise ValueError(expected)
    if not all(is_int(e) for p in padding for e in p):
        raise TypeError(expected)  # e.g. (1.5, 1.5): lax raises too, never truncate
    return _check_pad_range(tuple((int(lo), int(hi)) for lo, hi in padding), padding, op)


def int32_ids(name: str, v, op: str):
    """Integer ids/lengths as int32 for the runtime. Wider integer types (int64, uint32, uint64) are
    narrowed only when concrete (the caller has range-checked them); traced, a value >= 2**31
    would silently wrap around, so they are rejected."""
    dtype = jnp.dtype(v.dtype)
    if dtype.itemsize >= 4 and dtype != jnp.int32 and isinstance(v, jax.core.Tracer):
        raise TypeError(f"{op}: traced `{name}` of dtype {dtype} cannot be checked to fit int32 (values "
                        f"would wrap around); pass int32 {name}, or concrete values")
    return jnp.asarray(v).astype(jnp.int32)


def activation_code(activation, op: str) -> tuple[int, float]:
    """None | name | (name, {params}) -> (code, alpha)."""
    if activation is None:
        return ACT_NONE, 0.0
    params = {}
    if isinstance(activation, (tuple, list)) and len(activation) == 2 and isinstance(activation[1], dict):
        activation, params = activation
    return activation_from_name(activation, params, op)


def activation_from_name(name, params: dict, op: str) -> tuple[int, float]:
    if name == "prelu":
        raise ValueError(f"{op}: 'prelu' has a learned per-channel alpha and cannot be fused; "
                         "apply mps.prelu (or mps.activation(x, 'prelu', alpha=...)) to the result")
    if not isinstance(name, str) or name not in ACTIVATION_ALPHA:
        raise ValueError(f"{op}: unknown activation {name!r}; expected one of {sorted(ACTIVATION_ALPHA)}")
    code, alpha = contract.ACTIVATIONS[name], ACTIVATION_ALPHA[name]
    params = dict(params)
    if name == "gelu":
        if params.pop("approximate", False):
            code = contract.ACTIVATIONS["gelu_tanh"]
    elif name in ("leaky_relu", "elu"):
        alpha = float(params.pop("alpha", alpha))
    if params:
        raise ValueError(f"{op}: activation {name!r} got unknown parameters {sorted(params)}")
    return code, alpha
