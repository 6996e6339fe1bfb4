import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_mps as mps
from jax_mps._runtime import contract
import reference as ref
from helpers import assert_close

STEPS = 50


def _tree(big=True, dtypes=None):
    shapes = {"s": (), "layer": {"w": (8, 5, 3, 3), "b": (7,)}, "odd": [(13, 1, 2), (1,)],
              "big": (1000, 1000) if big else (33, 17)}
    leaves, tdef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    rng = np.random.default_rng(0)
    dtypes = dtypes or [jnp.float32] * len(leaves)
    return jax.tree.unflatten(tdef, [jnp.asarray(rng.normal(size=s), dt) for s, dt in zip(leaves, dtypes)])


_BASES = {}


def _bases(shapes):
    if shapes not in _BASES:
        rng = np.random.default_rng(1)
        _BASES[shapes] = [(jnp.asarray(rng.normal(size=s) * (1 + k), jnp.float32),
                           jnp.asarray(rng.normal(size=s), jnp.float32)) for k, s in enumerate(shapes)]
    return _BASES[shapes]


@jax.jit
def _grads_jit(params, bases, i):
    # Cheap step-dependent gradients (a PRNG on the 1M leaf would dominate the test time).
    return [(a * jnp.cos(0.37 * i) + b * jnp.sin(1.3 * i + 0.5) + 0.3 * p).astype(p.dtype)
            for p, (a, b) in zip(params, bases)]


def _grads(params, i):
    leaves, tdef = jax.tree.flatten(params)
    bases = _bases(tuple(tuple(p.shape) for p in leaves))
    return jax.tree.unflatten(tdef, _grads_jit(leaves, bases, jnp.float32(i)))


def _find(state, name):
    """The field `name` anywhere in an optax state (nested chain/NamedTuple)."""
    if hasattr(state, "_fields") and name in state._fields:
        return getattr(state, name)
    if isinstance(state, tuple):
        for s in state:
            r = _find(s, name)
            if r is not None:
                return r
    return None


def _close(a, b, what, rtol=1e-5, atol=1e-6):
    """Elementwise rtol, with atol scaled by the leaf's magnitude (entries near 0 carry the
    rounding of larger terms that cancelled)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb), what
    for i, (x, y) in enumerate(zip(la, lb)):
        scale = max(1.0, float(np.max(np.abs(np.asarray(y, np.float64)), initial=0.0)))
        assert_close(x, y, rtol, atol * scale, f"{what} leaf {i}")


# (mps factory, optax factory, {our slot: optax field} to compare)
OPTAX_CASES = {
    "sgd": (lambda: mps.optim.sgd(0.05), lambda: optax.sgd(0.05), {}),
    "sgd_momentum": (lambda: mps.optim.sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, momentum=0.9),
                     {"trace": "trace"}),
    "sgd_nesterov": (lambda: mps.optim.sgd(0.05, momentum=0.8, nesterov=True),
                     lambda: optax.sgd(0.05, momentum=0.8, nesterov=True), {"trace": "trace"}),
    "adam": (lambda: mps.optim.adam(1e-2), lambda: optax.adam(1e-2), {"mu": "mu", "nu": "nu"}),
    "adam_hyper": (lambda: mps.optim.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6),
                   lambda: optax.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6), {"mu": "mu", "nu": "nu"}),
    "adamw": (lambda: mps.optim.adamw(1e-2, weight_decay=0.1), lambda: optax.adamw(1e-2, weight_decay=0.1),
              {"mu": "mu", "nu": "nu"}),
    "adamw_default": (lambda: mps.optim.adamw(1e-2), lambda: optax.adamw(1e-2, weight_decay=1e-4),
                      {"mu": "mu", "nu": "nu"}),
    "rmsprop": (lambda: mps.optim.rmsprop(1e-2), lambda: optax.rmsprop(1e-2), {"nu": "nu"}),
    "rmsprop_centered": (lambda: mps.optim.rmsprop(1e-2, decay=0.8, centered=True),
                         lambda: optax.rmsprop(1e-2, decay=0.8, centered=True), {"nu": "nu", "mu": "mu"}),
    "rmsprop_momentum": (lambda: mps.optim.rmsprop(1e-2, momentum=0.9),
                         lambda: optax.rmsprop(1e-2, momentum=0.9), {"nu": "nu", "momentum": "trace"}),
    "rmsprop_centered_momentum": (lambda: mps.optim.rmsprop(1e-2, centered=True, momentum=0.5, eps=1e-4),
                                  lambda: optax.rmsprop(1e-2, centered=True, momentum=0.5, eps=1e-4),
                                  {"nu": "nu", "mu": "mu", "momentum": "trace"}),
}


# centered rmsprop divides by sqrt(nu - mu^2 + eps): where nu ~ mu^2 the difference's float32
# rounding depends on FMA contraction, which differs between our kernel and XLA:GPU's fusion
# (seen: 1 of 1M elements 2.9e-5 relative off optax on the H200).
RTOL = {"rmsprop_centered": 1e-4}


@pytest.mark.parametrize("case", list(OPTAX_CASES))
def test_matches_optax(case):
    make, make_ref, slots = OPTAX_CASES[case]
    opt, oref = make(), make_ref()
    params = _tree()
    p_upd, s_upd = params, opt.init(params)           # optax protocol
    p_app, s_app = jax.tree.map(jnp.copy, params), opt.init(params)  # fused in place (donates)
    p_ref, s_ref = params, oref.init(params)
    upd = jax.jit(opt.update)
    upd_ref = jax.jit(oref.update)
    for i in range(STEPS):
        g = _grads(p_ref, i)
        u, s_upd = upd(g, s_upd, p_upd)
        p_upd = optax.apply_updates(p_upd, u)
        p_app, s_app = opt.apply(p_app, g, s_app)
        u, s_ref = upd_ref(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    for p, s, how in ((p_upd, s_upd, "update"), (p_app, s_app, "apply")):
        _close(p, p_ref, f"{case} {how} params", RTOL.get(case, 1e-5))
        assert int(s.count) == STEPS
        for ours, theirs in slots.items():
            _close(getattr(s, ours), _find(s_ref, theirs), f"{case} {how} state.{ours}")


# NaN / inf as optax treats them: a parameter only enters the update through a term that reads it
# (an inf weight with plain Adam stays inf, never 0 * inf = NaN); jnp.maximum in AMSGrad's running
# max keeps a NaN; `update` without params is the plain rule.
NONFINITE_CASES = {**OPTAX_CASES,
                   "amsgrad": (lambda: mps.optim.adam(1e-2, amsgrad=True), lambda: optax.amsgrad(1e-2),
                               {"mu": "mu", "nu": "nu", "nu_max": "nu_max"})}


@pytest.mark.parametrize("case", list(NONFINITE_CASES))
def test_non_finite_like_optax(case):
    make, make_ref, slots = NONFINITE_CASES[case]
    opt, oref = make(), make_ref()
    bad = [1.0, np.inf, -np.inf, np.nan, -2.0, 0.5, 3.0, -0.25]
    params = {"w": jnp.asarray(bad, jnp.float32), "b": jnp.asarray([0.5, -1.0, 2.0], jnp.float32)}
    grads = [{"w": jnp.full(8, 0.5, jnp.float32), "b": jnp.asarray([np.nan, 1.0, -1.0], jnp.float32)},
             {"w": jnp.asarray(bad[::-1], jnp.float32), "b": jnp.asarray([0.25, np.inf, 0.5], jnp.float32)},
             {"w": jnp.full(8, -0.5, jnp.float32), "b": jnp.asarray([1.0, 2.0, -np.inf], jnp.float32)}]
    with np.errstate(invalid="ignore"):
        p_ref, s_ref, s_upd = params, oref.init(params), opt.init(params)
        p_app, s_app = jax.tree.map(jnp.copy, params), opt.init(params)
        needs_params = case.startswith("adamw")
        s_none, s_none_ref = opt.init(params), oref.init(params)
        for g in grads:
            u, s_upd = opt.update(g, s_upd, p_ref)
            u_ref, s_ref = oref.update(g, s_ref, p_ref)
            _close(u, u_ref, f"{case} updates")
            p_app, s_app = opt.apply(p_app, g, s_app)
            p_ref = optax.apply_updates(p_ref, u_ref)
            _close(p_app, p_ref, f"{case} apply params")
            if not needs_params:
                u, s_none = opt.update(g, s_none)
                u_ref, s_none_ref = oref.update(g, s_none_ref)
                _close(u, u_ref, f"{case} updates without params")
        for s, how in ((s_upd, "update"), (s_app, "apply")):
            for ours, theirs in slots.items():
                _close(getattr(s, ours), _find(s_ref, theirs), f"{case} {how} state.{ours}")


# (rule, hyperparameters for both mps factory and the reference)
REF_CASES = {
    "amsgrad": ("adam", dict(amsgrad=True)),
    "amsgrad_w": ("adamw", dict(amsgrad=True, weight_decay=0.05)),
    "sgd_clip_value": ("sgd", dict(momentum=0.9, clip_value=0.5)),
    "sgd_clip_norm": ("sgd", dict(clip_norm=1.0)),
    "sgd_clip_norm_inactive": ("sgd", dict(clip_norm=1e6)),
    "adam_clip_norm": ("adam", dict(clip_norm=2.0, clip_value=1.5)),
    "sgd_rescale_l2": ("sgd", dict(momentum=0.5, nesterov=True, gradient_rescale=0.25, regularization="l2",
                                   regularization_scale=0.1)),
    "adam_l1": ("adam", dict(regularization="l1", regularization_scale=0.01, gradient_rescale=2.0)),
    "adamw_l2_all": ("adamw", dict(weight_decay=0.01, regularization="l2", regularization_scale=0.05,
                                   clip_value=2.0, clip_norm=3.0, gradient_rescale=0.5, amsgrad=True)),
    "rmsprop_everything": ("rmsprop", dict(centered=True, momentum=0.9, clip_norm=1.0, regularization="l1",
                                           regularization_scale=0.001, gradient_rescale=3.0, clip_value=0.7)),
}


def _ref_run(rule, params, lr, hyper, steps, grads_fn=_grads):
    slots = {"sgd": ["trace"] if hyper.get("momentum") else [],
             "adam": ["mu", "nu"] + (["nu_max"] if hyper.get("amsgrad") else []),
             "rmsprop": ["nu"] + (["mu"] if hyper.get("centered") else []) + (["momentum"] if hyper.get("momentum") else [])}[rule]
    state = {"count": jnp.zeros([], jnp.int32)}
    for s in slots:
        state[s] = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    step = jax.jit(lambda p, g, s: ref.optim_step(rule, p, g, s, lr, **hyper))
    for i in range(steps):
        params, state = step(params, grads_fn(params, i), state)
    return params, state


@pytest.mark.parametrize("case", list(REF_CASES))
def test_matches_reference(case):
    rule, hyper = REF_CASES[case]
    lr = 0.02
    opt = getattr(mps.optim, rule)(lr, **hyper)
    ref_rule = "adam" if rule == "adamw" else rule
    ref_hyper = dict(hyper)
    if rule == "adamw":
        ref_hyper.setdefault("weight_decay", 1e-4)
    if rule == "rmsprop":
        ref_hyper["decay"] = 0.9
    params = _tree(big=False)
    p_ref, s_ref = _ref_run(ref_rule, params, lr, ref_hyper, STEPS)
    p, s = params, opt.init(params)
    for i in range(STEPS):
        p, s = opt.apply(p, _grads(p, i), s)
    _close(p, p_ref, f"{case} params")
    for name, tree in s._asdict().items():
        if name != "count" and tree is not None:
            _close(tree, s_ref[name], f"{case} state.{name}")


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("rule,hyper", [("adam", dict(clip_norm=1.0)), ("sgd", dict(momentum=0.9)),
                                        ("rmsprop", dict(centered=True, clip_norm=2.0))])
def test_mixed_dtypes(dtype, rule, hyper):
    """Low-precision leaves get float32 state; a tree of several dtype groups shares one global norm."""
    dtypes = [jnp.float32, dtype, jnp.float32, dtype, dtype, jnp.float32]
    params = _tree(big=False, dtypes=dtypes)
    opt = getattr(mps.optim, rule)(0.01, **hyper)
    s = opt.init(params)
    for tree in s[1:]:
        if tree is not None:
            assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree))
    steps = 10
    p_ref, s_ref = _ref_run(rule, params, 0.01, dict(hyper, decay=0.9) if rule == "rmsprop" else hyper, steps)
    p = params
    for i in range(steps):
        p, s = opt.apply(p, _grads(p, i), s)
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-3
    assert [x.dtype for x in jax.tree.leaves(p)] == [jnp.dtype(d) for d in dtypes]
    _close(p, p_ref, "params", rtol=tol, atol=tol)


@pytest.mark.parametrize("make,make_ref", [
    (lambda s: mps.optim.sgd(s, momentum=0.9), lambda s: optax.sgd(s, momentum=0.9)),
    (lambda s: mps.optim.adam(s), lambda s: optax.adam(s)),
    (lambda s: mps.optim.rmsprop(s, momentum=0.9), lambda s: optax.rmsprop(s, momentum=0.9)),
])
def test_schedule(make, make_ref):
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.05, 5, 30, 0.001)
    opt, oref = make(sched), make_ref(sched)
    params = _tree(big=False)
    p, s, pr, sr = jax.tree.map(jnp.copy, params), opt.init(params), params, oref.init(params)
    for i in range(30):
        g = _grads(pr, i)
        p, s = opt.apply(p, g, s)
        u, sr = oref.update(g, sr, pr)
        pr = optax.apply_updates(pr, u)
    _close(p, pr, "params")


def test_chain_and_optax_protocol():
    params = _tree(big=False)
    opt = optax.chain(optax.clip(0.5), mps.optim.adamw(1e-2, weight_decay=0.01))
    oref = optax.chain(optax.clip(0.5), optax.adamw(1e-2, weight_decay=0.01))
    assert isinstance(mps.optim.sgd(0.1), optax.GradientTransformation)
    p, s, pr, sr = params, opt.init(params), params, oref.init(params)
    for i in range(5):
        g = _grads(pr, i)
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        u, sr = oref.update(g, sr, pr)
        pr = optax.apply_updates(pr, u)
    _close(p, pr, "params")
    # params are optional where the rule does not read them
    u, _ = mps.optim.adam(0.1).update(_grads(params, 0), mps.optim.adam(0.1).init(params))
    assert jax.tree.structure(u) == jax.tree.structure(params)


def _n_calls(fn, *args, target="jax_mps_optim_step_fwd"):
    return jax.jit(fn).lower(*args).as_text().count(target)


def test_one_call_per_dtype_group():
    params = _tree(big=False)
    opt = mps.optim.adam(0.1, clip_norm=1.0)
    s = opt.init(params)
    g = _grads(params, 0)
    assert _n_calls(opt.apply, params, g, s) == 1
    assert _n_calls(opt.apply, params, g, s, target="jax_mps_optim_sqnorm_fwd") == 0
    mixed = _tree(big=False, dtypes=[jnp.float32, jnp.bfloat16, jnp.float32, jnp.float16, jnp.bfloat16, jnp.float32])
    s = opt.init(mixed)
    g = _grads(mixed, 0)
    assert _n_calls(opt.apply, mixed, g, s) == 3
    assert _n_calls(opt.apply, mixed, g, s, target="jax_mps_optim_sqnorm_fwd") == 3


def test_apply_donates_and_jits():
    params = _tree(big=False)
    opt = mps.optim.sgd(0.1, momentum=0.9)
    s = opt.init(params)
    g = _grads(params, 0)
    want, _ = mps.optim.sgd(0.1, momentum=0.9).update(g, opt.init(params), params)
    want = optax.apply_updates(params, want)
    p = jax.tree.map(jnp.copy, params)
    leaf = p["big"]
    p2, s2 = opt.apply(p, g, s)
    assert leaf.is_deleted() and s.trace["big"].is_deleted()  # buffers were donated
    _close(p2, want, "apply")
    # in place inside the caller's own jit with donation
    hlo = jax.jit(opt.apply, donate_argnums=(0, 2)).lower(p2, g, s2).as_text()
    assert "output_operand_aliases" in hlo
    train = jax.jit(lambda p, s, g: opt.apply(p, g, s), donate_argnums=(0, 1))
    p3, s3 = train(p2, s2, _grads(p2, 1))
    assert int(s3.count) == 2
    # update under jit with vmap-free grads, and value_and_grad-produced grads
    loss = lambda p: sum(jnp.sum(x * x) for x in jax.tree.leaves(p))
    _, g = jax.value_and_grad(loss)(p3)
    u, _ = jax.jit(opt.update)(g, s3, p3)
    assert jax.tree.structure(u) == jax.tree.structure(p3)


@pytest.mark.parametrize("name", ["sgd_nesterov", "adamw_clip_norm"])
def test_vmap_ensembles(name):
    # An ensemble's members (vmapped params, grads and state) step one after another, each as optax.
    mk = {"sgd_nesterov": lambda m: m.sgd(0.1, momentum=0.9, nesterov=True),
          "adamw_clip_norm": lambda m: optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(0.01, weight_decay=0.1))
          if m is optax else m.adamw(0.01, weight_decay=0.1, clip_norm=0.5)}[name]
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params) for _ in range(3)]
    ours, ref = mk(mps.optim), mk(optax)
    s, sr = jax.vmap(ours.init)(params), jax.vmap(ref.init)(params)
    p, pr, pa = params, params, jax.tree.map(jnp.copy, params)
    sa = jax.vmap(ours.init)(params)
    apply = jax.jit(jax.vmap(lambda p, g, s: ours.apply(p, g, s)))
    for g in grads:
        u, s = jax.jit(jax.vmap(ours.update))(g, s, p)
        ur, sr = jax.vmap(ref.update)(g, sr, pr)
        p, pr = optax.apply_updates(p, u), optax.apply_updates(pr, ur)
        pa, sa = apply(pa, g, sa)
        _close(u, ur, "vmap update")
    _close(p, pr, "vmap params")
    _close(pa, pr, "vmap apply")
    assert s.count.shape == (3,) and int(s.count[0]) == 3

def test_bad_input():
    params = _tree(big=False)
    opt = mps.optim.adam(0.1)
    s = opt.init(params)
    g = _grads(params, 0)
    with pytest.raises(ValueError, match="tree structure"):
        opt.update({"x": g["big"]}, s, params)
    with pytest.raises(ValueError, match="tree structure"):
        opt.apply({**params, "extra": params["s"]}, g, s)
    with pytest.raises(ValueError, match="shape"):
        opt.update({**g, "big": g["big"][:3]}, s, params)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        opt.init({"a": jnp.ones(3, jnp.int32)})
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        opt.update({**g, "s": jnp.asarray(1, jnp.int32)}, s, params)
    with pytest.raises(TypeError, match="state"):
        opt.update(g, mps.optim.sgd(0.1).init(params), params)
    with pytest.raises(ValueError, match="state.nu_max"):
        mps.optim.adam(0.1, amsgrad=True).update(g, s, params)
    with pytest.raises(ValueError, match="needs params"):
        mps.optim.adamw(0.1).update(g, s)
    for bad in (lambda: mps.optim.sgd(-0.1), lambda: mps.optim.adam(-1e-3), lambda: mps.optim.rmsprop(float("nan"))):
        with pytest.raises(ValueError, match="learning_rate"):
            bad()
    with pytest.raises(TypeError, match="learning_rate"):
        mps.optim.sgd("0.1")
    for bad in (lambda: mps.optim.adam(0.1, eps=-1e-8), lambda: mps.optim.rmsprop(0.1, eps=-1.0)):
        with pytest.raises(ValueError, match="eps"):
            bad()
    with pytest.raises(ValueError, match="regularization"):
        mps.optim.sgd(0.1, regularization="l3")
    with pytest.raises(ValueError, match="regularization_scale"):
        mps.optim.sgd(0.1, regularization="l2", regularization_scale=-1.0)
    with pytest.raises(ValueError, match="clip_value"):
        mps.optim.sgd(0.1, clip_value=0.0)
    with pytest.raises(ValueError, match="clip_norm"):
        mps.optim.sgd(0.1, clip_norm=-1.0)
    with pytest.raises(ValueError, match="b1"):
        mps.optim.adam(0.1, b1=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        mps.optim.adamw(0.1, weight_decay=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        mps.optim.sgd(0.1, nesterov=True)


def _hp(**over):
    values = dict(learning_rate=0.1, grad_scale=1.0, rescale=1.0, b1=0.9, ob1=0.1, b2=0.999, ob2=0.001, eps=1e-8,
                  clip_value=np.inf, clip_norm=np.inf)  # inf: clipping off
    values.update(over)
    return jnp.asarray([values.get(k, 0.0) for k in contract.OPTIM_HYPER], jnp.float32)


def _raw_step(operands, results, **over):
    attrs = dict(rule=np.int64(1), n=np.int64(1), nslots=np.int64(2), write_updates=np.int64(1),
                 nesterov=np.int64(0), amsgrad=np.int64(0), centered=np.int64(0), norm_mode=np.int64(0))
    scalars = over.pop("scalars", (jnp.int32(1), jnp.float32(0), _hp()))
    attrs.update(over)
    return jax.ffi.ffi_call("jax_mps_optim_step_fwd", results)(*scalars, *operands, **attrs)


def test_runtime_validation():
    x = jnp.ones((4, 3))
    z = jnp.zeros((4, 3))
    ok = _raw_step([x, x, z, z], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3)
    assert_close(ok[0], -0.1 * np.ones((4, 3)), what="raw step")
    bad = [
        ([x, x, x, jnp.ones((5,))], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3, {}),   # slot size
        ([x, x, x], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3, {}),                   # operand count
        ([x, x, x, x], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3, {"nslots": np.int64(3)}),
        ([x, x, x, x], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3, {"rule": np.int64(7)}),
        ([x, x, x, x], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3, {"nesterov": np.int64(1)}),  # adam
        ([x, x, x], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 2,  # centered rmsprop has >= 2 slots
         {"rule": np.int64(2), "centered": np.int64(1), "nslots": np.int64(1)}),
        ([x, x, x, x], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3, {"norm_mode": np.int64(3)}),
        # float32 params take float16 / bfloat16 grads (mixed precision); other pairings are errors
        ([x.astype(jnp.bfloat16), x.astype(jnp.float16), x, x],
         [jax.ShapeDtypeStruct(x.shape, jnp.bfloat16)] + [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 2, {}),
        ([x, x.astype(jnp.bfloat16), x, x], [jax.ShapeDtypeStruct(x.shape, jnp.bfloat16)] * 3, {}),  # result
        # the scalars: count int32, sqnorm float32, hp float32 with one entry per hyperparameter
        ([x, x, z, z], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3,
         {"scalars": (jnp.float32(1), jnp.float32(0), _hp())}),
        ([x, x, z, z], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3,
         {"scalars": (jnp.int32(1), jnp.ones(2), _hp())}),
        ([x, x, z, z], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3,
         {"scalars": (jnp.int32(1), jnp.float32(0), _hp()[1:])}),
        ([x, x, z, z], [jax.ShapeDtypeStruct(x.shape, x.dtype)] * 3,
         {"scalars": (jnp.int32(1), jnp.float32(0), _hp().astype(jnp.float16))}),
    ]
    for operands, results, over in bad:
        with pytest.raises(Exception, match="optim"):
            jax.block_until_ready(_raw_step(operands, results, **over))


def test_array_hyperparameters():
    # optax takes 0-d arrays for numbers.
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    g = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
    a = mps.optim.adam(jnp.float32(0.1), b1=np.float32(0.8), eps=jnp.asarray(1e-6))
    u, _ = a.update(g, a.init(params), params)
    u_ref, _ = optax.adam(0.1, b1=0.8, eps=1e-6).update(g, optax.adam(0.1).init(params), params)
    _close(u, u_ref, "array hyperparameters")
    with pytest.raises(ValueError, match="learning_rate"):
        mps.optim.sgd(jnp.float32(-1.0))
    with pytest.raises(TypeError, match="momentum"):  # traced, but not a scalar
        jax.jit(lambda m: mps.optim.sgd(0.1, momentum=m))(jnp.ones(2))


# optax.inject_hyperparams passes every numeric hyperparameter traced under jit (the kernels read
# them as data): trajectories equal optax's, also when a hyperparameter changes between steps
# (momentum from 0: an array momentum always has its buffer).
INJECT = [
    (mps.optim.sgd, optax.sgd, dict(learning_rate=0.1, momentum=0.0), dict(momentum=0.9)),
    (mps.optim.sgd, optax.sgd, dict(learning_rate=0.1, momentum=0.9, nesterov=True), dict(momentum=0.5)),
    (mps.optim.adam, optax.adam, dict(learning_rate=0.05), dict(b1=0.8, b2=0.99, eps=1e-3)),
    (mps.optim.adam, optax.amsgrad, dict(learning_rate=0.05, amsgrad=True), dict(b2=0.9)),
    (mps.optim.adamw, optax.adamw, dict(learning_rate=0.05, weight_decay=1e-2), dict(weight_decay=0.1)),
    (mps.optim.rmsprop, optax.rmsprop, dict(learning_rate=0.01, momentum=0.9, centered=True),
     dict(decay=0.5, eps=1e-2, momentum=0.0)),
]


@pytest.mark.parametrize("make, make_ref, kw, later", INJECT, ids=lambda v: getattr(v, "__name__", ""))
def test_inject_hyperparams(make, make_ref, kw, later):
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    ref_kw = {k: v for k, v in kw.items() if k != "amsgrad"}
    opt, oref = optax.inject_hyperparams(make)(**kw), optax.inject_hyperparams(make_ref)(**ref_kw)
    s, s_ref, p, p_ref = opt.init(params), oref.init(params), params, params
    step, step_ref = jax.jit(opt.update), jax.jit(oref.update)
    for i in range(5):
        g = jax.tree.map(lambda x: jnp.cos(3.0 * x + i), p)
        g_ref = jax.tree.map(lambda x: jnp.cos(3.0 * x + i), p_ref)
        s.hyperparams["learning_rate"] = s_ref.hyperparams["learning_rate"] = jnp.float32(kw["learning_rate"] / (i + 1))
        if i == 2:
            for k, v in later.items():
                s.hyperparams[k] = s_ref.hyperparams[k] = jnp.float32(v)
        u, s = step(g, s, p)
        u_ref, s_ref = step_ref(g_ref, s_ref, p_ref)
        p, p_ref = optax.apply_updates(p, u), optax.apply_updates(p_ref, u_ref)
    _close(p, p_ref, f"inject_hyperparams({make.__name__})")


def test_apply_repeated_buffers():
    # Tied weights, grads that are the params, slots sharing one array: apply copies the repeats
    # (XLA donates a buffer once) and steps as update + apply_updates.
    opt = mps.optim.adam(0.1)
    for tied in (True, False):
        w = jnp.linspace(-1.0, 1.0, 6)  # fresh each time: apply donates it
        params, grads = ({"a": w, "b": w}, {"a": jnp.cos(w), "b": jnp.sin(w)}) if tied else ({"a": w}, {"a": w})
        state = opt.init(params)
        u, want_state = opt.update(grads, state, params)
        want = optax.apply_updates(params, u)
        got, got_state = opt.apply(params, grads, state)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     (got, got_state), (want, want_state))
    z = jnp.zeros(6)
    shared = opt.init({"a": z})._replace(mu={"a": z}, nu={"a": z})
    got, _ = opt.apply({"a": jnp.ones(6)}, {"a": jnp.ones(6)}, shared)
    np.testing.assert_allclose(np.asarray(got["a"]), 0.9, rtol=1e-5)
    with pytest.raises(ValueError, match="state.count"):
        p = {"a": jnp.ones(6)}
        opt.update(p, opt.init(p)._replace(count=jnp.zeros(2, jnp.int32)), p)


def test_momentum_none_as_optax():
    # optax's own default for sgd / rmsprop momentum is None: no momentum.
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    g = {"w": jnp.cos(3.0 * params["w"])}
    for ours, theirs in ((mps.optim.sgd(0.1, momentum=None), optax.sgd(0.1, momentum=None)),
                         (mps.optim.rmsprop(0.1, momentum=None), optax.rmsprop(0.1, momentum=None))):
        _close(ours.update(g, ours.init(params), params)[0], theirs.update(g, theirs.init(params), params)[0],
               "momentum=None")


@pytest.mark.parametrize("opt", ["clip_value", "clip_norm"])
def test_inject_zero_clip(opt):
    # A traced clip of 0 clips everything to 0, as optax.clip(0) / clip_by_global_norm(0) do; None is off.
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    g = {"w": jnp.cos(3.0 * params["w"])}
    step = jax.jit(lambda c: mps.optim.sgd(0.1, **{opt: c}).update(g, mps.optim.sgd(0.1).init(params), params)[0])
    clip = optax.clip(0.0) if opt == "clip_value" else optax.clip_by_global_norm(0.0)
    want = optax.chain(clip, optax.sgd(0.1)).update(g, optax.chain(clip, optax.sgd(0.1)).init(params))[0]
    np.testing.assert_array_equal(np.asarray(step(jnp.float32(0.0))["w"]), np.asarray(want["w"]))


def test_inject_hyperparams_common_options():
    # Rescale, clipping and L1/L2 traced equal the same numbers compiled in, over two dtype groups
    # (the global norm summed across groups) and through apply.
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "h": jnp.linspace(2.0, -1.0, 6).astype(jnp.bfloat16)}
    g = jax.tree.map(lambda x: (jnp.cos(3.0 * x) * 2).astype(x.dtype), params)
    kw = dict(learning_rate=0.1, momentum=0.9, gradient_rescale=0.5, clip_value=0.8, clip_norm=0.5,
              regularization="l1", regularization_scale=0.01)
    fixed = mps.optim.sgd(**kw)
    injected = optax.inject_hyperparams(mps.optim.sgd)(**kw)
    u, _ = jax.jit(injected.update)(g, injected.init(params), params)
    u_ref, _ = fixed.update(g, fixed.init(params), params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    inner = jax.jit(lambda p, g, s, cn: mps.optim.adam(0.1, clip_norm=cn, gradient_rescale=cn).apply(p, g, s))
    p1, _ = inner(params, g, mps.optim.adam(0.1).init(params), jnp.float32(0.5))
    a = mps.optim.adam(0.1, clip_norm=0.5, gradient_rescale=0.5)
    p2, _ = a.apply(params, g, a.init(params))
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))
