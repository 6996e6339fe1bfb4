"""The jaxpr rewrite behind `mps.graph.optimize`: plan, then re-emit.

A jaxpr is planned once: every convolution, dense `dot_general`, max/sum `reduce_window` and
activation that a jax_mps primitive computes exactly becomes a node; with `fuse`, a node absorbs
the per-channel bias add and the activation that follow it when nothing else reads its output,
and an activation after one of our batch norms joins that call. Re-emission then walks the
equations in order, binding every untouched equation as it was and calling the public jax_mps
function for a node at the position of its last equation (so every input already exists). A node
whose primitive rejects the configuration (ValueError/TypeError at trace time) is re-emitted as
the original equations, with the reason in the report.

Nested `jit` bodies are inlined and rewritten; `custom_jvp_call`/`custom_vjp_call` bodies are
rewritten in place (their custom derivative rules stay as written, so their semantics hold);
`scan`, `while`, `cond` and `checkpoint` bodies are left as they are.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from .. import activations as _act
from .. import conv as _conv
from .. import normalization as _norm
from .. import pooling as _pool
from .._validate import activation_code, precision_is_full
from . import _activations as A
from ._concat import concat_in_place
from ._report import Report

_FLOATS = (jnp.float32, jnp.float16, jnp.bfloat16)
_WINDOW = 24  # equations scanned after a producer when looking for its activation
# A lone activation on fewer elements than this (batch-norm statistics, scalars in a loss) stays in
# XLA's fused element-wise loop: a runtime call would cost more than it computes.
_MIN_STANDALONE = 256


@dataclasses.dataclass(frozen=True)
class Options:
    convert: bool = True
    fuse: bool = True
    concat: bool = True


@dataclasses.dataclass
class Node:
    kind: str                 # conv | dense | max_pool | avg_pool | act | bn
    idxs: list                # equation indices absorbed (the anchor first)
    out: Any                  # the variable the node's result is bound to
    anchor: int
    bias: Any = None          # variable (or literal) holding the per-channel bias
    bias_from: Any = None     # how to get the (C,) vector from it: ("reshape"|"bcast", ...)
    act: Any = None           # activation spec for jax_mps, or None
    act_desc: str = ""
    x: Any = None             # act: its input
    extra: dict = dataclasses.field(default_factory=dict)  # per-kind data
    emit_at: int = -1         # where the node is emitted (default: its last equation)
    group: Any = None         # the in-place concatenation that emits it (bn / bnx), if any

    def at(self):
        return self.emit_at if self.emit_at >= 0 else max(self.idxs)


def _is_float(v):
    return hasattr(v, "aval") and hasattr(v.aval, "dtype") and any(v.aval.dtype == d for d in _FLOATS)


def _is_var(v):
    return not isinstance(v, jcore.Literal)


def _walk(eqn):
    """eqn and every equation of the bodies nested in it."""
    stack = [eqn]
    while stack:
        e = stack.pop()
        yield e
        for p in e.params.values():
            body = getattr(p, "jaxpr", p)
            if isinstance(body, jcore.Jaxpr):
                stack.extend(reversed(body.eqns))


def mps_target(eqn):
    """(target, attributes) of the first jax_mps ffi_call inside a custom_vjp_call, else None."""
    for e in _walk(eqn):
        if e.primitive.name == "ffi_call" and str(e.params.get("target_name", "")).startswith("jax_mps_"):
            return e.params["target_name"], dict(e.params.get("attributes", ()))
    return None


def _has_collective(eqn):
    return any(e.primitive.name.startswith(("psum", "pmean", "pmax", "pmin", "all_gather", "all_to_all", "ppermute"))
               for e in _walk(eqn))


def _spec_name(spec):
    return spec if isinstance(spec, str) else spec[0]


class Rewriter:
    def __init__(self, opts: Options, report: Report):
        self.opts = opts
        self.report = report

    # ------------------------------------------------------------------ planning

    def plan(self, jaxpr, consts_scalar):
        eqns = jaxpr.eqns
        uses: dict = {}
        prod: dict = {}
        for i, e in enumerate(eqns):
            for v in e.invars:
                if _is_var(v):
                    uses.setdefault(v, []).append(i)
            for v in e.outvars:
                prod[v] = i
        for v in jaxpr.outvars:
            if _is_var(v):
                uses.setdefault(v, []).append(-1)
        self.eqns, self.uses, self.prod = eqns, uses, prod
        self.cs = A.constant_scalars(eqns, consts_scalar)
        taken: dict = {}
        nodes: list = []

        def claim(node):
            for k in node.idxs:
                taken[k] = node
            nodes.append(node)

        if self.opts.convert:
            for i, e in enumerate(eqns):
                if e.primitive.name == "rsqrt" and i not in taken:
                    node = self._batch_norm(i, taken)
                    if node is not None:
                        if self.opts.fuse:
                            self._fuse(node, taken)
                        claim(node)
        for i, e in enumerate(eqns):
            if i in taken:
                continue
            name = e.primitive.name
            node = None
            if self.opts.convert and name == "conv_general_dilated":
                node = Node("conv", [i], e.outvars[0], i)
            elif self.opts.convert and name == "dot_general" and self._dense_form(e):
                node = Node("dense", [i], e.outvars[0], i)
            elif self.opts.convert and name == "reduce_window_max":
                node = Node("max_pool", [i], e.outvars[0], i)
            elif self.opts.convert and name == "reduce_window_sum" and e.invars[0] not in self.cs:
                node = self._avg_pool(i, taken)
            elif name == "custom_vjp_call" and self.opts.fuse:
                t = mps_target(e)
                if t and t[0] == "jax_mps_batch_norm_fwd" and int(t[1].get("act", 1)) == 0 \
                        and not _has_collective(e):  # axis_name statistics: rebinding would drop them
                    node = Node("bn", [i], e.outvars[0], i, extra={"eps": float(t[1]["epsilon"])})
            if node is not None and node.kind in ("conv", "dense", "bn") and self.opts.fuse:
                self._fuse(node, taken)
            if node is None and self.opts.convert and self._elementwise_eqn(e):
                node = self._standalone_act(i, taken)
            if node is not None:
                claim(node)
        self.groups, self.order = self._concat_groups(taken, jaxpr) if self.opts.concat else ({}, None)
        return taken, nodes

    # ---- batch norm written out (flax.linen / nnx BatchNorm in training mode, fast variance)

    def _unit(self, v):
        """The (C,) variable that `v` reshapes/broadcasts to (1, ..., 1, C), else None."""
        while _is_var(v) and _is_float(v):
            if v.aval.ndim == 1:
                return v
            if v in self.prod and all(d == 1 for d in v.aval.shape[:-1]):
                e = self.eqns[self.prod[v]]
                u = e.invars[0] if e.invars else None
                if e.primitive.name in ("reshape", "broadcast_in_dim") and u is not None and _is_var(u) \
                        and u.aval.size == v.aval.shape[-1] and (u.aval.ndim == 1 or u.aval.shape[-1] == u.aval.size):
                    v = u
                    continue
            return None
        return None

    def _eqn(self, v, *names):
        if not _is_var(v) or v not in self.prod:
            return None, -1
        j = self.prod[v]
        e = self.eqns[j]
        return (e, j) if e.primitive.name in names else (None, -1)

    def _mean_of(self, v):
        """(x, eqn indices) when v = sum of x over all but its last axis / count, else (None, [])."""
        d, jd = self._eqn(v, "div", "mul")
        if d is None:
            return None, []
        g, n = d.invars
        r, jr = self._eqn(g, "reduce_sum")
        c = A.scalar_const(n, self.cs)
        if r is None or c is None:
            return None, []
        x = r.invars[0]
        count = math.prod(x.aval.shape[:-1])
        if tuple(r.params["axes"]) != tuple(range(x.aval.ndim - 1)) or \
                not math.isclose(float(c), count if d.primitive.name == "div" else 1.0 / count, rel_tol=1e-6):
            return None, []
        return x, [jd, jr]

    def _square_of(self, v):
        e, j = self._eqn(v, "square", "integer_pow", "mul")
        if e is None or (e.primitive.name == "integer_pow" and e.params["y"] != 2) or \
                (e.primitive.name == "mul" and e.invars[0] is not e.invars[1]):
            return None, -1
        return e.invars[0], j

    def _batch_norm(self, i, taken):
        """Match y = (x - mean) * rsqrt(var + eps) [* scale] [+ bias] with batch mean and (fast) variance."""
        eqns, uses = self.eqns, self.uses
        w = eqns[i].invars[0]
        a, ja = self._eqn(w, "add")
        if a is None:
            return None
        u, eps = (a.invars[0], a.invars[1]) if A.scalar_const(a.invars[1], self.cs) is not None else \
            (a.invars[1], a.invars[0])
        eps = A.scalar_const(eps, self.cs)
        m = self._unit(u)
        if eps is None or m is None:
            return None
        mx, jm = self._eqn(m, "max")
        if mx is None:
            return None
        l = mx.invars[1] if A.scalar_const(mx.invars[0], self.cs) is not None else mx.invars[0]
        z0 = A.scalar_const(mx.invars[0] if l is mx.invars[1] else mx.invars[1], self.cs)
        sb, jl = self._eqn(l, "sub")
        if z0 is None or float(z0) != 0.0 or sb is None:
            return None
        sq_x, idx_j = self._mean_of(sb.invars[0])
        h, jk = self._square_of(sb.invars[1])
        if sq_x is None or h is None:
            return None
        x, jsq = self._square_of(sq_x)
        x2, idx_h = self._mean_of(h)
        if x is None or x2 is not x or not _is_float(x) or x.aval.ndim < 2:
            return None
        C = x.aval.shape[-1]
        core = [jm, jl, jk, jsq, ja, i] + idx_j + idx_h
        # r -> [mul scale] -> mul (x - mean)
        r = eqns[i].outvars[0]
        scale = None
        ur = uses.get(r, [])
        if len(ur) != 1 or ur[0] < 0 or eqns[ur[0]].primitive.name != "mul":
            return None
        e1, j1 = eqns[ur[0]], ur[0]
        other = e1.invars[1] if e1.invars[0] is r else e1.invars[0]
        cand = self._unit(other)
        if cand is not None and cand.aval.shape == (C,):
            scale, zz = cand, e1.outvars[0]
            core.append(j1)
            uz = uses.get(zz, [])
            if len(uz) != 1 or uz[0] < 0 or eqns[uz[0]].primitive.name != "mul":
                return None
            e1, j1 = eqns[uz[0]], uz[0]
            other = e1.invars[1] if e1.invars[0] is zz else e1.invars[0]
        xm, jxm = self._eqn(other, "sub")
        if xm is None or xm.invars[0] is not x or self._unit(xm.invars[1]) is not h \
                or uses.get(other, []) != [j1] or e1.outvars[0].aval.shape != x.aval.shape:
            return None
        core += [jxm, j1]
        y = e1.outvars[0]
        bias = None
        uy = uses.get(y, [])
        if len(uy) == 1 and uy[0] >= 0 and eqns[uy[0]].primitive.name == "add":
            e2 = eqns[uy[0]]
            cand = self._unit(e2.invars[1] if e2.invars[0] is y else e2.invars[0])
            if cand is not None and cand.aval.shape == (C,) and e2.outvars[0].aval.shape == x.aval.shape:
                bias, y = cand, e2.outvars[0]
                core.append(uy[0])
        if any(k in taken for k in core) or any(v.aval.dtype != x.aval.dtype for v in (m, h, y)):
            return None
        core_set = set(core)
        for k in core:
            for v in eqns[k].outvars:
                if v is y or v is h or v is m:
                    continue
                if not set(uses.get(v, [])) <= core_set:
                    return None
        # Emitted where the statistics are first needed by anything outside the pattern.
        at = max([jm] + [self.prod.get(v, -1) for v in (x, scale, bias) if v is not None])
        outside = [k for v in (h, m) for k in uses.get(v, []) if k >= 0 and k not in core_set]
        if outside and min(outside) <= at:
            return None
        return Node("bnx", sorted(core_set), y, i, extra={"x": x, "scale": scale, "bias": bias, "eps": float(eps),
                                                          "mean": h, "var": m}, emit_at=at)

    def _dense_form(self, e):
        (lc, rc), (lb, rb) = e.params["dimension_numbers"]
        x, w = e.invars
        return (not lb and not rb and len(w.aval.shape) == 2 and x.aval.ndim >= 1
                and tuple(lc) == (x.aval.ndim - 1,) and tuple(rc) in ((0,), (1,)))

    def _avg_pool(self, i, taken):
        """reduce_window_sum, merged with the division that makes it an average when there is one."""
        e = self.eqns[i]
        y = e.outvars[0]
        node = Node("avg_pool", [i], y, i, extra={"div": None})
        us = self.uses.get(y, [])
        if len(us) == 1 and us[0] >= 0 and us[0] not in taken:
            d = self.eqns[us[0]]
            if d.primitive.name == "div" and d.invars[0] is y:
                den = d.invars[1]
                c = A.scalar_const(den, self.cs)
                window = math.prod(e.params["window_dimensions"])
                if c is not None and float(c) == float(window):
                    node.idxs.append(us[0])
                    node.out = d.outvars[0]
                    node.extra["div"] = "window"
                elif self._is_count_pool(den, e):
                    node.idxs.append(us[0])
                    if self.uses.get(den) == [us[0]]:  # the count pool is part of the node
                        node.idxs.append(self.prod[den])
                    node.out = d.outvars[0]
                    node.extra["div"] = "count"
        return node

    def _is_count_pool(self, den, e):
        """`den` is the same sum-pool over ones (flax avg_pool with count_include_pad=False)."""
        if not _is_var(den) or den not in self.prod:
            return False
        de = self.eqns[self.prod[den]]
        if de.primitive.name == "broadcast_in_dim" and _is_var(de.invars[0]) and de.invars[0] in self.prod:
            de = self.eqns[self.prod[de.invars[0]]]
        if de.primitive.name != "reduce_window_sum":
            return False
        src = de.invars[0]
        if not _is_var(src) or A.scalar_const(src, self.cs) is None or float(A.scalar_const(src, self.cs)) != 1.0:
            return False
        keys = ("window_dimensions", "window_strides", "padding", "base_dilation", "window_dilation")
        nd = len(e.params["window_dimensions"])
        if len(de.params["window_dimensions"]) != nd:
            return False
        sp = [d for d in range(nd) if e.params["window_dimensions"][d] > 1 or e.params["window_strides"][d] > 1
              or tuple(e.params["padding"][d]) != (0, 0)]
        return all(tuple(de.params[k][d]) == tuple(e.params[k][d]) if k == "padding"
                   else de.params[k][d] == e.params[k][d] for k in keys for d in sp) and \
            all(de.params["window_dimensions"][d] == 1 and de.params["window_strides"][d] == 1 for d in range(nd)
                if d not in sp)

    def _fuse(self, node, taken):
        y = node.out
        if node.kind in ("conv", "dense"):
            us = self.uses.get(y, [])
            if len(us) == 1 and us[0] >= 0 and us[0] not in taken:
                a = self.eqns[us[0]]
                if a.primitive.name == "add" and len(a.outvars) == 1 and a.outvars[0].aval.shape == y.aval.shape:
                    other = a.invars[1] if a.invars[0] is y else a.invars[0]
                    how = self._per_channel(other, y, self._channel_axis(node))
                    if how is not None and other is not y:
                        node.idxs.append(us[0])
                        node.bias, node.bias_from = other, how
                        y = node.out = a.outvars[0]
        m = self._find_activation(y, max(node.idxs), taken, fused=True)
        if m is not None:
            idxs, out, spec, desc = m
            node.idxs.extend(idxs)
            node.out, node.act, node.act_desc = out, spec, desc

    def _channel_axis(self, node):
        e = self.eqns[node.anchor]
        if node.kind == "conv":
            return e.params["dimension_numbers"].out_spec[1]
        return e.outvars[0].aval.ndim - 1

    def _per_channel(self, v, y, axis):
        """How to read a (C,) bias from `v` when `y + v` adds one value per channel, else None."""
        shape, C = y.aval.shape, y.aval.shape[axis]
        if not _is_float(v) or v.aval.dtype != y.aval.dtype:
            return None
        vs = v.aval.shape
        if len(vs) == len(shape) and all(s == 1 for d, s in enumerate(vs) if d != axis) and vs[axis] in (1, C):
            return ("reshape", C)
        if _is_var(v) and v in self.prod:
            e = self.eqns[self.prod[v]]
            if e.primitive.name == "broadcast_in_dim" and tuple(e.params["shape"]) == tuple(vs) == tuple(shape):
                u = e.invars[0]
                bd = e.params["broadcast_dimensions"]
                if _is_float(u) and all(s == 1 for s, d in zip(u.aval.shape, bd) if d != axis):
                    return ("source", u, C)
        return None

    def _elementwise_eqn(self, e):
        return e.primitive.name in A.ELEMENTWISE or e.primitive.name in A._WRAPPERS

    def _find_activation(self, x, after, taken, fused):
        """(eqn indices, out var, spec, description) of an activation of `x` starting after `after`."""
        if not _is_float(x):
            return None
        eqns, shape = self.eqns, x.aval.shape
        region, members = {x}, []
        for k in range(after + 1, min(len(eqns), after + 1 + _WINDOW)):
            if k in taken:
                continue
            e = eqns[k]
            vs = [v for v in e.invars if _is_var(v) and v not in self.cs]
            if not vs or not all(v in region for v in vs):
                continue
            if not self._elementwise_eqn(e) or len(e.outvars) != 1 or e.outvars[0].aval.shape != shape:
                continue
            members.append(k)
            region.add(e.outvars[0])
            if len(members) >= 12:
                break
        if fused:  # every reader of x must be inside the activation
            xu = set(self.uses.get(x, []))
        for k in reversed(members):
            out = eqns[k].outvars[0]
            if out.aval.dtype != x.aval.dtype:
                continue
            anc, todo = set(), [k]
            while todo:
                j = todo.pop()
                if j in anc:
                    continue
                anc.add(j)
                for v in eqns[j].invars:
                    if _is_var(v) and v in self.prod and self.prod[v] in members:
                        todo.append(self.prod[v])
            if fused and not xu <= anc:
                continue
            if not any(x in eqns[j].invars for j in anc):
                continue
            inner = [v for j in anc for v in eqns[j].outvars if v is not out]
            if any(not set(self.uses.get(v, [])) <= anc for v in inner):
                continue
            order = sorted(anc)
            key = self._structure_key(order, x)
            spec = A.probe([eqns[j] for j in order], x, out, self.cs, key)
            if spec is not None:
                return order, out, spec[0], spec[1]
        return None

    def _structure_key(self, order, x):
        pos = {x: "x"}
        parts = [str(x.aval.dtype)]
        for j in order:
            e = self.eqns[j]
            ins = []
            for v in e.invars:
                if _is_var(v) and v in pos:
                    ins.append(pos[v])
                else:
                    c = A.scalar_const(v, self.cs)
                    ins.append(("c", None if c is None else float(c)))
            params = []
            for k, p in sorted(e.params.items()):
                body = getattr(p, "jaxpr", None)
                params.append((k, body if isinstance(body, jcore.Jaxpr) else repr(p)))
            parts.append((e.primitive.name, tuple(ins), tuple(params)))
            for i, v in enumerate(e.outvars):
                pos[v] = (len(parts), i)
        return tuple(parts)

    def _standalone_act(self, i, taken):
        e = self.eqns[i]
        vs = [v for v in e.invars if _is_var(v) and v not in self.cs]
        if len(set(vs)) != 1 or not _is_float(vs[0]) or e.outvars[0].aval.shape != vs[0].aval.shape:
            return None
        x = vs[0]
        if x.aval.size < _MIN_STANDALONE:
            return None
        m = self._find_activation(x, i - 1, taken, fused=False)
        if m is None or m[0][0] != i:
            return None
        idxs, out, spec, desc = m
        return Node("act", idxs, out, i, act=spec, act_desc=desc, x=x)

    # ---- in-place channel concatenations (see _concat.py)

    def _node_outputs(self, node):
        outs = [node.out]
        if node.kind == "bn":
            outs += self.eqns[node.anchor].outvars[1:3]
        elif node.kind == "bnx":
            outs += [node.extra["mean"], node.extra["var"]]
        return outs

    def _node_inputs(self, node):
        if node.kind == "bnx":  # (its equations also read broadcasts of its own statistics)
            return [node.extra[k] for k in ("x", "scale", "bias") if node.extra[k] is not None]
        inner = {v for k in node.idxs for v in self.eqns[k].outvars}
        ins = [v for k in node.idxs for v in self.eqns[k].invars if _is_var(v) and v not in inner]
        # what the emission reads besides (the sources of the broadcasts that the equations read)
        extra = [node.x, node.bias] + ([node.bias_from[1]] if node.bias_from and node.bias_from[0] == "source" else [])
        return ins + [v for v in extra if v is not None and _is_var(v)]

    def _concat_groups(self, taken, jaxpr):
        """({concatenate eqn index: Group}, their emission order from _schedule, or None without
        groups) for the last-axis float32 concatenates that a batch norm feeding only them can write
        in place, checked to be schedulable. A
        concatenate read only by another one joins it (Inception-E's nested concatenations); a
        jax_mps batch_norm with its activation already fused becomes a member as it is."""
        groups = {}
        if any(e.effects for e in self.eqns):  # the schedule may reorder equations: only pure ones
            return groups, None
        last = lambda j: self.eqns[j].primitive.name == "concatenate" and \
            self.eqns[j].params["dimension"] == self.eqns[j].outvars[0].aval.ndim - 1 and \
            self.eqns[j].outvars[0].aval.dtype == jnp.float32
        absorbed = set()

        def flat(i):  # [(input, the concatenate reading it)], nested ones expanded
            out = []
            for v in self.eqns[i].invars:
                j = self.prod.get(v, -1) if _is_var(v) else -1
                if j >= 0 and j not in taken and last(j) and self.uses.get(v) == [i]:
                    absorbed.add(j)
                    out += flat(j)
                else:
                    out.append((v, i))
            return out

        for i in reversed(range(len(self.eqns))):  # outer concatenations first: they absorb inner ones
            if i in absorbed or not last(i):
                continue
            members, inner = [], set(absorbed)
            for v, reader in flat(i):
                n = self._prefused_bn(v, taken) if _is_var(v) else None
                if n is not None and n.kind in ("bn", "bnx") and n.out is v and n.group is None \
                        and self.uses.get(v) == [reader] and v.aval.dtype == jnp.float32:
                    members.append(("bn", n))
                else:
                    members.append(("copy", v))
            if not any(k == "bn" for k, _ in members):
                absorbed = inner  # a plain concatenation absorbs nothing
                continue
            g = Group(i, members, sorted(absorbed - inner))
            for k, n in members:
                if k == "bn":
                    n.group = g
                    taken.setdefault(n.anchor, n)
            groups[i] = g
        while groups:
            order, stuck = self._schedule(taken, groups, jaxpr)
            bad = [groups[k] for k in stuck if k in groups]
            if not bad:
                return groups, order
            for g in bad:
                self._ungroup(g, groups, taken)
        return groups, None

    def _prefused_bn(self, v, taken):
        """The node that produces v; for an untaken jax_mps batch_norm call (its activation fused
        by the caller), a bn node made for the group."""
        j = self.prod.get(v, -1)
        if j in taken:
            return taken[j]
        e = self.eqns[j] if j >= 0 else None
        if e is None or e.primitive.name != "custom_vjp_call" or e.outvars[0] is not v or _has_collective(e):
            return None
        t = mps_target(e)
        if not t or t[0] != "jax_mps_batch_norm_fwd":
            return None
        a = t[1]
        return Node("bn", [j], v, j, extra={"eps": float(a["epsilon"]), "act": (int(a["act"]), float(a["alpha"])),
                                             "prefused": True})

    def _ungroup(self, g, groups, taken):
        for k, n in g.members:
            if k == "bn":
                n.group = None
                if n.extra.get("prefused"):
                    del taken[n.anchor]  # back to the equation it was
        del groups[g.index]

    def _schedule(self, taken, groups, jaxpr):
        """(order, stuck): the equations / nodes / groups in an order that gives each its inputs.
        Jaxpr order, except that a grouped batch norm is emitted by its concatenation (later), so
        the equations reading its statistics (running averages) wait for that; `stuck` lists
        what could never run (a group whose inputs hang on its own members)."""
        avail = set(jaxpr.invars) | set(jaxpr.constvars)
        order, pending = [], []
        inner = {j for g in groups.values() for j in g.absorbed}

        def item(i):
            node = taken.get(i)
            if i in groups:
                g = groups[i]
                ins = [v for k, m in g.members for v in (self._node_inputs(m) if k == "bn" else [m]) if _is_var(v)]
                return ins, [v for k, m in g.members if k == "bn" for v in self._node_outputs(m)] + \
                    list(self.eqns[i].outvars)
            if node is not None:
                return self._node_inputs(node), self._node_outputs(node)
            e = self.eqns[i]
            return [v for v in e.invars if _is_var(v)], list(e.outvars)

        def run(i):
            ins, outs = item(i)
            if all(v in avail for v in ins):
                order.append(i)
                avail.update(outs)
                return True
            return False

        for i in range(len(self.eqns)):
            node = taken.get(i)
            if i in inner or node is not None and (i != node.at() or node.group is not None):
                continue
            if not run(i):
                pending.append(i)
                continue
            progress = bool(pending)
            while progress:
                progress = False
                for k in list(pending):
                    if run(k):
                        pending.remove(k)
                        progress = True
        return order, pending

    # ------------------------------------------------------------------ emission

    def run(self, jaxpr, consts, args, where=""):
        env: dict = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = c
        for v, a in zip(jaxpr.invars, args):
            env[v] = a
        scal = {v: np.asarray(c).reshape(()) for v, c in zip(jaxpr.constvars, consts)
                if not isinstance(c, jax.core.Tracer) and np.size(c) == 1 and np.ndim(c) == 0}
        taken, _ = self.plan(jaxpr, scal)
        eqns, groups = self.eqns, self.groups
        order = self.order if groups else [i for i in range(len(eqns)) if i not in taken or i == taken[i].at()]
        concat_src = {}
        for i in order:
            e = eqns[i]
            # plan state is per jaxpr; nested rewrites replace it, so keep ours
            saved = (self.eqns, self.uses, self.prod, self.cs)
            if i in groups:
                self._emit_group(groups[i], read, env, where, concat_src)
                self.eqns, self.uses, self.prod, self.cs = saved
                continue
            node = taken.get(i)
            if node is not None:
                self._emit_node(node, read, env, where, concat_src)
                self.eqns, self.uses, self.prod, self.cs = saved
                continue
            outs = self._nested(e, read, where)
            self.eqns, self.uses, self.prod, self.cs = saved
            if outs is not None:
                for v, o in zip(e.outvars, outs):
                    env[v] = o
                continue
            self._note(e, concat_src, where)
            self._default(e, read, env)
        return [read(v) for v in jaxpr.outvars]

    def _emit_node(self, node, read, env, where, concat_src):
        outs = None if node.extra.get("prefused") else self._emit(node, read, where)
        if outs is None:
            for k in sorted(node.idxs):
                self._default(self.eqns[k], read, env)
            return
        env[node.out] = outs[0]
        if node.kind == "bn":
            bn = self.eqns[node.anchor]
            env[bn.outvars[1]], env[bn.outvars[2]] = outs[1], outs[2]
        if node.kind == "bnx":
            env[node.extra["mean"]], env[node.extra["var"]] = outs[1], outs[2]
        if node.kind in ("conv", "dense", "bn", "bnx"):
            concat_src[node.out] = node.kind

    def _bn_args(self, node, read):
        """(x, scale, bias, epsilon) of a bn / bnx node."""
        if node.kind == "bn":
            x, scale, bias = (read(v) for v in self.eqns[node.anchor].invars)
            return x, scale, bias, node.extra["eps"]
        ex = node.extra
        x = read(ex["x"])
        c = x.shape[-1]
        scale = jnp.ones((c,), x.dtype) if ex["scale"] is None else read(ex["scale"])
        bias = jnp.zeros((c,), x.dtype) if ex["bias"] is None else read(ex["bias"])
        return x, scale, bias, ex["eps"]

    def _emit_group(self, g, read, env, where, concat_src):
        e = self.eqns[g.index]
        layout, arrays = [], []
        try:
            for k, m in g.members:
                if k == "bn":
                    x, scale, bias, eps = self._bn_args(m, read)
                    act = m.extra.get("act") or activation_code(m.act, "batch_norm")  # prefused: its own
                    layout.append(("bn", eps) + tuple(act))
                    arrays += [x, scale.astype(x.dtype), bias.astype(x.dtype)]
                else:
                    layout.append(("copy",))
                    arrays.append(jnp.asarray(read(m)))
            out, stats = concat_in_place(layout, arrays)
        except (ValueError, TypeError) as err:  # each member on its own, then XLA's concatenate
            for k, m in g.members:
                if k == "bn":
                    self._emit_node(m, read, env, where, concat_src)
            for j in g.absorbed + [g.index]:
                self.report.add(where, "concatenate", "left to XLA", f"in-place writing rejected: {err}")
                self._default(self.eqns[j], read, env)
            return
        bns = [m for k, m in g.members if k == "bn"]
        for m, (mean, var) in zip(bns, stats):
            for v, o in zip(self._node_outputs(m)[1:], (mean, var)):
                env[v] = o
            self._report_bn(m, where, " into its channel slice")
        env[e.outvars[0]] = out
        for _ in g.absorbed:
            self.report.add(where, "concatenate", "concat eliminated", "nested: joins the concatenation it feeds")
        self.report.add(where, "concatenate", "concat eliminated",
                        f"{len(g.members)} inputs -> (..., {out.shape[-1]}): {len(bns)} batch norms write their "
                        f"channel slice, {len(g.members) - len(bns)} copied in place")

    def _default(self, e, read, env):
        with e.ctx.manager:
            outs = _bind(e.primitive, e.params, [read(v) for v in e.invars])
        for v, o in zip(e.outvars, outs):
            env[v] = o

    def _note(self, e, concat_src, where):
        name = e.primitive.name
        if name == "conv_general_dilated" or name == "reduce_window_max" or name == "reduce_window_sum":
            if not self.opts.convert:
                self.report.add(where, name, "left to XLA", "convert=False")
        elif name == "dot_general":
            why = "convert=False" if not self.opts.convert else \
                "not the dense form x(..., In) @ w(In, Out) (batch dims or contraction elsewhere)"
            self.report.add(where, name, "left to XLA", why)
        elif name == "concatenate":
            d = e.params["dimension"]
            ins = [v for v in e.invars if _is_var(v)]
            srcs = [concat_src.get(v) for v in ins]
            if d == e.outvars[0].aval.ndim - 1 and any(srcs):
                why = "concat=False" if not self.opts.concat else \
                    "no input is a float32 batch norm read only by it (batch norms write in place)"
                self.report.add(where, name, "left to XLA",
                                f"channel concat of {sum(1 for s in srcs if s)}/{len(srcs)} runtime outputs: {why}")
            else:
                self.report.add(where, name, "left to XLA", "not a channel concat of runtime outputs")
        elif name == "custom_vjp_call":
            t = mps_target(e)
            if t:
                self.report.add(where, t[0][len("jax_mps_"):].rsplit("_fwd", 1)[0], "already jax_mps", t[0])
            else:
                self.report.other(name)
        elif name in ("scan", "while", "cond", "checkpoint", "remat"):
            self.report.add(where, name, "left to XLA", f"{name} bodies are not rewritten")
        else:
            self.report.other(name)

    def _nested(self, e, read, where):
        name = e.primitive.name
        if name in ("jit", "pjit", "closed_call", "core_call"):
            body = e.params.get("jaxpr") or e.params.get("call_jaxpr")
            if body is None:
                return None
            closed = body if hasattr(body, "consts") else jcore.ClosedJaxpr(body, ())
            label = e.params.get("name", name)
            return self.run(closed.jaxpr, closed.consts, [read(v) for v in e.invars], f"{where}{label}/")
        if name in ("custom_jvp_call", "custom_vjp_call") and not (name == "custom_vjp_call" and mps_target(e)):
            body = e.params["call_jaxpr"]
            before = self.report.changes()
            sub = jax.make_jaxpr(lambda *a: self.run(body.jaxpr, body.consts, a,
                                                     f"{where}{e.params.get('name', name)}/"))(
                *[v.aval for v in body.jaxpr.invars])
            if self.report.changes() == before:
                return None
            return _bind(e.primitive, {**e.params, "call_jaxpr": sub}, [read(v) for v in e.invars])
        return None

    def _bias_value(self, node, read):
        how = node.bias_from
        if how[0] == "reshape":
            return jnp.broadcast_to(jnp.reshape(read(node.bias), (-1,)), (how[1],))
        return jnp.broadcast_to(jnp.reshape(read(how[1]), (-1,)), (how[2],))

    def _report_bn(self, node, where, slot=""):
        act = f" + {node.act_desc}" if node.act else ""
        if node.extra.get("prefused"):
            self.report.add(where, "batch_norm", "already jax_mps", f"jax_mps_batch_norm_fwd{slot}")
        elif node.kind == "bnx":
            self.report.add(where, "batch norm (written out)", "fused" if node.act else "converted",
                            f"mps.batch_norm{act} ({len(node.idxs)} ops){slot}")
        else:
            self.report.add(where, "batch_norm", "fused", f"mps.batch_norm{act}{slot}")

    def _emit(self, node, read, where):
        e = self.eqns[node.anchor]
        name = e.primitive.name
        try:
            if node.kind == "act":
                nm, kw = _act_args(node.act)
                y = _act.activation(read(node.x), nm, **kw)
                self.report.add(where, self._act_label(node), "converted", f"-> mps.{_spec_name(node.act)}"
                                f" ({node.act_desc})")
                return [y]
            if node.kind in ("bn", "bnx"):
                x, scale, bias, eps = self._bn_args(node, read)
                outs = _norm.batch_norm(x, scale, bias, epsilon=eps, activation=node.act)
                self._report_bn(node, where)
                return list(outs)
            bias = self._bias_value(node, read) if node.bias is not None else None
            if node.kind == "conv":
                y, desc = _emit_conv(e, read, bias, node.act)
            elif node.kind == "dense":
                y, desc = _emit_dense(e, read, bias, node.act)
            else:
                y, desc = _emit_pool(node, e, read)
        except (ValueError, TypeError) as err:
            self.report.add(where, name, "left to XLA", f"jax_mps rejected it: {err}")
            return None
        if y.shape != node.out.aval.shape or y.dtype != node.out.aval.dtype:  # a planning bug: keep XLA's op
            self.report.add(where, name, "left to XLA", f"rewrite gave {y.shape} {y.dtype}, expected {node.out.aval}")
            return None
        parts = [desc]
        if node.bias is not None:
            parts.append("bias")
        if node.act is not None:
            parts.append(node.act_desc)
        self.report.add(where, name, "fused" if len(parts) > 1 else "converted", " + ".join(parts))
        return [y]

    def _act_label(self, node):
        e = self.eqns[node.anchor]
        return e.params.get("name", e.primitive.name) if len(node.idxs) == 1 else \
            f"{len(node.idxs)} element-wise ops"


@dataclasses.dataclass(eq=False)
class Group:
    index: int      # the concatenate equation
    members: list   # ("bn", Node) | ("copy", var or literal), in channel order
    absorbed: list = dataclasses.field(default_factory=list)  # nested concatenates it writes too


def _bind(prim, params, args):
    """prim.bind as eval_jaxpr does it (get_bind_params returns (subfuns, params) in some jax versions)."""
    bp = prim.get_bind_params(params)
    subfuns, bp = bp if isinstance(bp, tuple) else ((), bp)
    outs = prim.bind(*subfuns, *args, **bp)
    return outs if prim.multiple_results else [outs]


def _act_args(spec):
    return (spec, {}) if isinstance(spec, str) else spec


def _activation_arg(spec):
    return None if spec is None else spec


def _perm_inv(p):
    inv = [0] * len(p)
    for i, j in enumerate(p):
        inv[j] = i
    return tuple(inv)


def _precision(e):
    """The jax.default_matmul_precision under which a conv / dot eqn's replacement is traced: its own
    precision (lax has folded the default in at trace time), so HIGHEST stays full float32 on CUDA."""
    return jax.default_matmul_precision("highest" if precision_is_full(e.params.get("precision")) else "default")


def _emit_conv(e, read, bias, act):
    p = e.params
    x, w = read(e.invars[0]), read(e.invars[1])
    nsp = x.ndim - 2
    if nsp not in (1, 2):
        raise ValueError(f"{nsp}-D convolution (jax_mps has 1-D and 2-D)")
    if p["batch_group_count"] != 1:
        raise ValueError("batch_group_count > 1")
    pet = p.get("preferred_element_type")
    if pet is not None and pet != x.dtype:
        raise TypeError(f"preferred_element_type {pet} differs from the input dtype {x.dtype}")
    if x.dtype != w.dtype:
        raise TypeError(f"mixed input dtypes {x.dtype} and {w.dtype}")
    dn = p["dimension_numbers"]
    px = (dn.lhs_spec[0],) + tuple(dn.lhs_spec[2:]) + (dn.lhs_spec[1],)
    pw = tuple(dn.rhs_spec[2:]) + (dn.rhs_spec[1], dn.rhs_spec[0])
    po = (dn.out_spec[0],) + tuple(dn.out_spec[2:]) + (dn.out_spec[1],)
    notes = []
    if px != tuple(range(nsp + 2)):
        x = jnp.transpose(x, px)
        notes.append("input transposed to channels-last")
    if pw != tuple(range(nsp + 2)):
        w = jnp.transpose(w, pw)
        notes.append("kernel transposed to HWIO")
    pads = tuple(tuple(int(v) for v in pr) for pr in p["padding"])
    lhs_d, rhs_d, strides = tuple(p["lhs_dilation"]), tuple(p["rhs_dilation"]), tuple(p["window_strides"])
    groups = p["feature_group_count"]
    act = _activation_arg(act)
    with _precision(e):
        if any(d != 1 for d in lhs_d):
            if any(s != 1 for s in strides) or groups != 1:
                raise ValueError("input dilation with window strides or feature groups (no transposed-conv form)")
            if nsp == 1:
                y = _conv.conv_transpose2d(x[:, None], w[None], bias, stride=(1,) + lhs_d,
                                           padding=((0, 0),) + pads, dilation=(1,) + rhs_d, activation=act)[:, 0]
            else:
                y = _conv.conv_transpose2d(x, w, bias, stride=lhs_d, padding=pads, dilation=rhs_d, activation=act)
            desc = "mps.conv_transpose2d"
        else:
            f = _conv.conv2d if nsp == 2 else _conv.conv1d
            y = f(x, w, bias, stride=strides, padding=pads, dilation=rhs_d, groups=groups, activation=act)
            desc = "mps.conv2d" if nsp == 2 else "mps.conv1d"
    if po != tuple(range(nsp + 2)):
        y = jnp.transpose(y, _perm_inv(po))
        notes.append("output transposed back")
    return y, desc + (f" ({', '.join(notes)})" if notes else "")


def _emit_dense(e, read, bias, act):
    p = e.params
    x, w = read(e.invars[0]), read(e.invars[1])
    pet = p.get("preferred_element_type")
    if pet is not None and pet != x.dtype:
        raise TypeError(f"preferred_element_type {pet} differs from the input dtype {x.dtype}")
    if x.dtype != w.dtype:
        raise TypeError(f"mixed input dtypes {x.dtype} and {w.dtype}")
    (_, rc), _ = p["dimension_numbers"]
    desc = "mps.dense"
    if tuple(rc) == (1,):
        w = w.T
        desc += " (weight transposed)"
    with _precision(e):
        return _conv.dense(x, w, bias, activation=_activation_arg(act)), desc


def _emit_pool(node, e, read):
    p = e.params
    x = read(e.invars[0])
    nd = x.ndim
    if any(d != 1 for d in p["base_dilation"]) or any(d != 1 for d in p["window_dilation"]):
        raise ValueError("dilated pooling windows")
    win, st, pad = p["window_dimensions"], p["window_strides"], [tuple(q) for q in p["padding"]]
    pooled = [d for d in range(nd) if win[d] > 1 or st[d] > 1 or pad[d] != (0, 0)]
    if not pooled:
        pooled = [1] if nd >= 3 else []
    if not 1 <= len(pooled) <= 2 or len(pooled) >= nd:
        raise ValueError(f"pooling over {len(pooled)} of {nd} dims (jax_mps pools 1 or 2 dims with a channel dim)")
    rest = [d for d in range(nd) if d not in pooled]
    perm = tuple(rest[:-1]) + tuple(pooled) + (rest[-1],)
    xt = jnp.transpose(x, perm) if perm != tuple(range(nd)) else x
    lead = xt.shape[:len(rest) - 1]
    xt = xt.reshape((math.prod(lead),) + xt.shape[len(rest) - 1:])
    w = tuple(win[d] for d in pooled)
    s = tuple(st[d] for d in pooled)
    pd = tuple(pad[d] for d in pooled)
    two = len(pooled) == 2
    if node.kind == "max_pool":
        y = (_pool.max_pool2d if two else _pool.max_pool1d)(xt, w if two else w[0], s if two else s[0], pd)
        desc = "mps.max_pool2d" if two else "mps.max_pool1d"
    else:
        div = node.extra["div"]
        f = _pool.avg_pool2d if two else _pool.avg_pool1d
        y = f(xt, w if two else w[0], s if two else s[0], pd, count_include_pad=div != "count")
        desc = ("mps.avg_pool2d" if two else "mps.avg_pool1d") + \
            {"window": "", "count": " (count_include_pad=False)", None: " (times the window size: a sum pool)"}[div]
        if div is None:
            y = y * jnp.asarray(math.prod(w), y.dtype)
    y = y.reshape(lead + y.shape[1:])
    if perm != tuple(range(nd)):
        y = jnp.transpose(y, _perm_inv(perm))
        desc += " (transposed to channels-last)"
    return y, desc
