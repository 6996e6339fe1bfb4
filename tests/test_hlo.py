"""A jitted CNN training step lowers to our custom calls, with no XLA convolution, pooling or dot."""
import re

import jax
import jax.numpy as jnp
import optax

import jax_mps as mps


def _loss(p, x, y):
    h = mps.conv2d(x, p["c1"], p["b1"], padding="SAME", activation="relu")
    h = mps.max_pool2d(h, 2)
    h = mps.batch_norm(h, p["s"], p["o"])[0]
    h = mps.avg_pool2d(h, 2)
    h = mps.dense(h.reshape(h.shape[0], -1), p["d"], p["db"], activation="relu")
    return mps.softmax_cross_entropy(h, y)


def test_training_step_is_custom_calls():
    p = {"c1": jnp.ones((3, 3, 1, 4)) * 0.1, "b1": jnp.zeros(4), "s": jnp.ones(4), "o": jnp.zeros(4),
         "d": jnp.ones((16, 10)) * 0.01, "db": jnp.zeros(10)}
    opt = optax.adam(1e-3)

    @jax.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(_loss)(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    args = (p, opt.init(p), jnp.ones((2, 8, 8, 1)), jnp.array([1, 2]))
    lowered = step.lower(*args)
    texts = {"stablehlo": lowered.as_text(), "hlo": lowered.compile().as_text()}
    for name, text in texts.items():
        assert "jax_mps_conv_" in text and "jax_mps_dense_" in text, name
        for op in ("convolution", "reduce_window", "reduce-window", "dot_general", " dot("):
            assert op not in text, f"{op} in {name}"
    for t in ("conv_fwd", "conv_bwd_weights", "max_pool_fwd", "max_pool_bwd", "avg_pool_bwd", "batch_norm_bwd",
              "dense_fwd", "dense_bwd_data", "loss_fwd", "loss_bwd"):
        assert f"@jax_mps_{t}" in texts["stablehlo"], t


def test_grad_scale_unscales_inside_the_optimizer_call():
    # Loss-scaled float16 gradients reach the fused step as they are: no convert or multiply of a
    # gradient leaf is left to XLA (the kernel unscales while it reads them). Shapes (7,) and
    # (2, 3) are only the leaves'; the scalar step count may still be converted.
    p = {"a": jnp.ones((7,)), "b": jnp.ones((2, 3))}
    g = {"a": jnp.ones((7,), jnp.float16), "b": jnp.ones((2, 3), jnp.float16)}
    leaf = re.compile(r"tensor<(7|2x3)x|\[(7|2,3)\]")
    for opt in (mps.optim.adam(1e-3, clip_norm=1.0), mps.optim.sgd(0.1, 0.9)):
        lowered = jax.jit(opt.apply).lower(p, g, opt.init(p), jnp.float32(1 / 1024))
        texts = {"stablehlo": lowered.as_text(), "hlo": lowered.compile().as_text()}
        for name, text in texts.items():
            for line in text.splitlines():
                if "convert" in line or "multiply" in line:
                    assert not leaf.search(line), f"{name}: {line}"
        call = next(line for line in texts["stablehlo"].splitlines() if "@jax_mps_optim_step_fwd" in line)
        operand_types = call.rsplit(":", 1)[1].split("->")[0]
        assert "tensor<7xf16>" in operand_types and "tensor<2x3xf16>" in operand_types, call


def test_activation_gradient_formed_once():
    # With dx wanted, dz = dy * relu'(y) is one call that both backward passes read (act 0 there);
    # on the model's input (no dx) the weights pass forms it itself and there is no extra call.
    x, w, b = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)) * 0.1, jnp.zeros(4)
    f = lambda x, w, b: jnp.sum(mps.conv2d(x, w, b, activation="relu") ** 2)
    both = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(x, w, b).as_text()
    assert both.count("@jax_mps_activation_bwd") == 1
    for t in ("conv_bwd_data", "conv_bwd_weights"):
        call = next(line for line in both.splitlines() if f"@jax_mps_{t}" in line)
        assert re.search(r"\bact = 0 ", call), call
    weights_only = jax.jit(jax.grad(f, argnums=(1, 2))).lower(x, w, b).as_text()
    assert "@jax_mps_activation_bwd" not in weights_only and "@jax_mps_conv_bwd_data" not in weights_only
