"""A jitted CNN training step lowers to our custom calls, with no XLA convolution, pooling or dot."""
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
