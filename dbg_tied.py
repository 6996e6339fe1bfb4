import jax, jax.numpy as jnp, optax, jax_mps as mps
w = jnp.arange(3.0)
p = {"a": w, "b": w}
g = {"a": jnp.ones(3), "b": jnp.ones(3)}
opt = mps.optim.adam(0.1)
st = opt.init(p)
try:
    p2, st2 = opt.apply(p, g, st); print("tied ok", p2)
except Exception as e: print("tied", type(e).__module__, type(e).__name__, str(e)[:200])
g1 = jnp.ones(3); p = {"a": jnp.arange(3.0)}; g = {"a": g1}; st = opt.init(p)
st = st._replace(mu={"a": g1})   # state slot aliasing the grad buffer
try:
    p2, st2 = opt.apply(p, g, st); print("slot=grad ok", p2)
except Exception as e: print("slot=grad", type(e).__module__, type(e).__name__, str(e)[:200])
z = jnp.zeros(3); p = {"a": jnp.arange(3.0)}; st = opt.init(p); st = st._replace(mu={"a": z}, nu={"a": z})
try:
    p2, st2 = opt.apply(p, {"a": jnp.ones(3)}, st); print("mu is nu ok", p2)
except Exception as e: print("mu is nu", type(e).__module__, type(e).__name__, str(e)[:200])
# bf16 params, f32 grads, apply
pb = {"a": jnp.array([1.0, -2.0, 3.0], jnp.bfloat16)}; gb = {"a": jnp.array([0.3, 0.2, -0.1])}
o = mps.optim.adam(0.1); p2, _ = o.apply(jax.tree_util.tree_map(jnp.copy, pb), gb, o.init(pb))
u, _ = optax.adam(0.1).update(gb, optax.adam(0.1).init(gb))
print("bf16 apply", p2["a"], p2["a"].dtype, (pb["a"].astype(jnp.float32) + u["a"]).astype(jnp.bfloat16))
# count shape bad
p = {"a": jnp.ones(3)}
st = opt.init(p)._replace(count=jnp.zeros((2,), jnp.int32))
try: print(opt.update(p, st, p)[0])
except Exception as e: print("count(2,)", type(e).__module__, type(e).__name__, str(e)[:200])
st = opt.init(p)._replace(count=jnp.zeros((1,), jnp.int32))
try: print("count(1,)", opt.update(p, st, p)[1].count.shape)
except Exception as e: print("count(1,)", type(e).__module__, type(e).__name__, str(e)[:200])
