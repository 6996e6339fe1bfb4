"""The runtime contract: every FFI target re-validates what reaches it through a raw
`jax.ffi.ffi_call` (shapes, result sizes, attribute ranges) and answers with an exception, never a
crash or an out-of-bounds write; the shared constants come from the extension; backends() reports."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mps as mps
from jax_mps import _runtime

F, S32, U32, U8 = jnp.float32, jnp.int32, jnp.uint32, jnp.uint8
i64, f32 = np.int64, np.float32


def sds(shape, dtype=F):
    return jax.ShapeDtypeStruct(shape, dtype)


def z(shape, dtype=F):
    return jnp.zeros(shape, dtype)


def pair(a, b):
    return np.array([a, b], np.int64)


DENSE = dict(act=i64(1), alpha=f32(0), accumulate=i64(0), precision=i64(0))
CONV = dict(DENSE, stride=pair(1, 1), pad_lo=pair(1, 1), pad_hi=pair(1, 1), dilation=pair(1, 1), groups=i64(1),
            transpose=i64(0))
POOL = dict(window=pair(2, 2), stride=pair(2, 2), pad_lo=pair(0, 0), pad_hi=pair(0, 0))
BN = dict(act=i64(1), alpha=f32(0))
LRN = dict(size=i64(3), alpha=f32(1e-4), beta=f32(0.75), k=f32(1))
LOSS = dict(kind=i64(2), reduction=i64(2), param=f32(0))
RNN = dict(cell=i64(0), num_layers=i64(1), num_dirs=i64(1), hidden=i64(2), time_major=i64(0),
           precision=i64(0))
RNN_BWD = dict(RNN, state_grads=i64(1))
RNN_W = [z((4, 8)), z((2, 8)), z((8,)), z((8,))]
OPT = dict(rule=i64(0), n=i64(1), nslots=i64(0), write_updates=i64(0), b1=f32(0), b2=f32(0), ob1=f32(1),
           ob2=f32(1), eps=f32(0), momentum=f32(0), weight_decay=f32(0), nesterov=i64(0), amsgrad=i64(0),
           centered=i64(0), rescale=f32(1), clip_value=f32(0), clip_norm=f32(0), norm_mode=i64(0), l1=f32(0),
           l2=f32(0))
OPT_SCALARS = [z((), F), z((), S32), z((), F), z((), F)]  # lr, count, sqnorm, grad_scale
SQNORM = dict(rescale=f32(1), clip_value=f32(0))
x2, x4, y4 = z((2, 3)), z((2, 5, 5, 4)), z((2, 5, 5, 6))
p4, q4 = z((1, 4, 4, 2)), z((1, 2, 2, 2))
bn_x, c3 = z((4, 3)), z((3,))
in_x, st = z((2, 3, 3)), z((2, 3))

# target -> (operands, a result list with one inconsistent result, attributes). Each call is
# well-formed except for that one result.
BAD_RESULT = {
    "activation_fwd": ([x2], [sds((2, 4))], dict(act=i64(1), alpha=f32(0))),
    "activation_bwd": ([x2, x2], [sds((5,))], dict(act=i64(1), alpha=f32(0))),
    "prelu_fwd": ([x2, c3], [sds((2, 2))], {}),
    "prelu_bwd": ([x2, c3, x2], [sds((2, 3)), sds((4,))], {}),
    "softmax_fwd": ([x2], [sds((3, 3))], dict(axis=i64(1), log=i64(0))),
    "softmax_bwd": ([x2, x2], [sds((2, 2))], dict(axis=i64(1), log=i64(0))),
    "conv_fwd": ([x4, z((3, 3, 4, 6)), z((6,))], [sds((2, 5, 5, 5))], dict(CONV, has_bias=i64(1))),
    "conv_bwd_data": ([y4, y4, z((3, 3, 4, 6))], [sds((2, 5, 5, 5))], dict(CONV, from_output=i64(1))),
    "conv_bwd_weights": ([x4, y4, y4], [sds((3, 3, 4, 6)), sds((5,))],
                         dict(CONV, has_bias=i64(1), from_output=i64(1))),
    "dense_fwd": ([z((3, 4)), z((4, 2)), z((2,))], [sds((3, 3))], dict(DENSE, has_bias=i64(1))),
    "dense_bwd_data": ([z((3, 2)), z((3, 2)), z((4, 2))], [sds((3, 5))], dict(DENSE, from_output=i64(1))),
    "dense_bwd_weights": ([z((3, 4)), z((3, 2)), z((3, 2))], [sds((4, 2)), sds((3,))],
                          dict(DENSE, has_bias=i64(1), from_output=i64(1))),
    "max_pool_fwd": ([p4], [sds((1, 2, 2, 2)), sds((1, 2, 2, 1), S32)], dict(POOL, with_index=i64(1))),
    "max_pool_bwd": ([z((1, 2, 2, 2), S32), q4], [sds((1, 4, 4, 3))], POOL),
    "avg_pool_fwd": ([p4], [sds((1, 3, 2, 2))], dict(POOL, count_include_pad=i64(0))),
    "avg_pool_bwd": ([q4], [sds((1, 4, 3, 2))], dict(POOL, count_include_pad=i64(0))),
    "global_avg_pool2d_fwd": ([p4], [sds((1, 3))], {}),
    "global_avg_pool2d_bwd": ([z((1, 2))], [sds((1, 4, 4, 3))], {}),
    "upsample2d_fwd": ([z((1, 2, 2, 3))], [sds((1, 4, 5, 3))], dict(sh=i64(2), sw=i64(2), method="nearest")),
    "upsample2d_bwd": ([z((1, 4, 4, 3))], [sds((1, 2, 2, 2))], dict(sh=i64(2), sw=i64(2), method="bilinear")),
    "batch_norm_fwd": ([bn_x, c3, c3], [sds((4, 3)), sds((3,)), sds((3,)), sds((2,))],
                       dict(BN, epsilon=f32(1e-5))),
    "batch_norm_bwd": ([bn_x, c3, c3, c3, c3, bn_x, bn_x, c3, c3], [sds((4, 3)), sds((3,)), sds((2,))],
                       dict(BN, from_output=i64(1))),
    "batch_norm_fwd_slice": ([bn_x, c3, c3], [sds((4, 5)), sds((3,)), sds((3,)), sds((3,))],
                             dict(BN, epsilon=f32(1e-5), offset=i64(3))),
    "batch_norm_fwd_into": ([bn_x, c3, c3, z((4, 5))], [sds((4, 6)), sds((3,)), sds((3,)), sds((3,))],
                            dict(BN, epsilon=f32(1e-5), offset=i64(0))),
    "batch_norm_bwd_slice": ([bn_x, c3, c3, c3, c3, z((4, 5)), z((4, 5)), c3, c3], [sds((4, 3)), sds((3,)), sds((3,))],
                             dict(BN, from_output=i64(1), offset=i64(3))),
    "batch_norm_inference_fwd": ([bn_x, c3, c3, c3, c3], [sds((4, 2))], dict(BN, epsilon=f32(1e-5))),
    "batch_norm_inference_bwd": ([bn_x, c3, c3, c3, c3, bn_x, bn_x],
                                 [sds((4, 3)), sds((3,)), sds((3,)), sds((3,)), sds((4,))],
                                 dict(BN, epsilon=f32(1e-5), from_output=i64(1))),
    "instance_norm_fwd": ([in_x, c3, c3], [sds((2, 3, 3)), sds((2, 3)), sds((3, 3))], dict(epsilon=f32(1e-5))),
    "instance_norm_bwd": ([in_x, c3, st, st, in_x], [sds((2, 3, 3)), sds((3,)), sds((2,))], {}),
    "local_response_norm_fwd": ([z((2, 5))], [sds((2, 4))], LRN),
    "local_response_norm_bwd": ([z((2, 5)), z((2, 5))], [sds((2, 6))], LRN),
    "loss_fwd": ([z((3, 4)), z((3, 4)), z((0,))], [sds((3,)), sds((0,))], LOSS),
    "loss_bwd": ([z((3, 4)), z((3, 4)), z((0,)), z((0,)), z((1,))], [sds((3, 4)), sds((3, 4)), sds((2,))], LOSS),
    "dropout_fwd": ([z((2,), U32), z((10,))], [sds((10,)), sds((1,), U8)], dict(threshold=i64(2**31), scale=f32(2))),
    "dropout_offset_fwd": ([z((4,), U32), z((10,))], [sds((10,)), sds((1,), U8)],
                           dict(threshold=i64(2**31), scale=f32(2))),
    "dropout_bwd": ([z((2,), U8), z((10,))], [sds((9,))], dict(scale=f32(2))),
    "rnn_fwd": ([z((2, 3, 4)), z((1, 2, 2)), z((1, 2, 2)), z((2,), S32), *RNN_W],
                [sds((2, 3, 2)), sds((1, 2, 2)), sds((1, 2, 2)), sds((83,))], RNN),
    "rnn_bwd": ([z((2, 3, 4)), z((1, 2, 2)), z((1, 2, 2)), z((2,), S32), z((84,)), z((2, 3, 2)), z((1, 2, 2)),
                 z((1, 2, 2)), *RNN_W],
                [sds((2, 3, 4)), sds((1, 2, 2)), sds((1, 2, 2)), sds((4, 8)), sds((2, 8)), sds((8,)), sds((7,))], RNN_BWD),
    "optim_step_fwd": ([*OPT_SCALARS, z((3,)), z((3,))], [sds((4,))], OPT),
    "optim_sqnorm_fwd": ([z(()), z((3,))], [sds((2,))], SQNORM),
}

# Well-formed buffers with one attribute out of its range.
BAD_ATTR = {
    "activation_fwd": ([x2], [sds((2, 3))], dict(act=i64(99), alpha=f32(0))),
    "softmax_fwd": ([x2], [sds((2, 3))], dict(axis=i64(1), log=i64(2))),
    "conv_fwd": ([x4, z((3, 3, 4, 6)), z((6,))], [sds((2, 5, 5, 6))], dict(CONV, has_bias=i64(1),
                                                                           accumulate=i64(2))),
    "conv_bwd_data": ([y4, y4, z((3, 3, 4, 6))], [sds((2, 5, 5, 4))], dict(CONV, act=i64(10), from_output=i64(1))),
    "dense_fwd": ([z((3, 4)), z((4, 2)), z((2,))], [sds((3, 2))], dict(DENSE, has_bias=i64(3))),
    "dense_bwd_data": ([z((3, 2)), z((3, 2)), z((4, 2))], [sds((3, 4))], dict(DENSE, from_output=i64(1),
                                                                              precision=i64(2))),
    "max_pool_fwd": ([p4], [sds((1, 2, 2, 2)), sds((1, 2, 2, 2), S32)], dict(POOL, with_index=i64(3))),
    "avg_pool_fwd": ([p4], [sds((1, 2, 2, 2))], dict(POOL, pad_lo=pair(2, 0), count_include_pad=i64(0))),
    "upsample2d_fwd": ([z((1, 2, 2, 3))], [sds((1, 4, 4, 3))], dict(sh=i64(2), sw=i64(2), method="cubic")),
    "batch_norm_fwd": ([bn_x, c3, c3], [sds((4, 3)), sds((3,)), sds((3,)), sds((3,))],
                       dict(BN, epsilon=f32(-1))),
    "batch_norm_fwd_slice": ([bn_x, c3, c3], [sds((4, 5)), sds((3,)), sds((3,)), sds((3,))],
                             dict(BN, epsilon=f32(1e-5), offset=i64(-1))),
    "local_response_norm_fwd": ([z((2, 5))], [sds((2, 5))], dict(LRN, size=i64(4))),
    "loss_fwd": ([z((3, 4)), z((3, 4)), z((0,))], [sds((1,)), sds((0,))], dict(LOSS, kind=i64(42))),
    "dropout_fwd": ([z((2,), U32), z((10,))], [sds((10,)), sds((2,), U8)], dict(threshold=i64(0), scale=f32(2))),
    "rnn_fwd": ([z((2, 3, 4)), z((1, 2, 2)), z((1, 2, 2)), z((2,), S32), *RNN_W],
                [sds((2, 3, 2)), sds((1, 2, 2)), sds((1, 2, 2)), sds((84,))], dict(RNN, cell=i64(9))),
    "rnn_bwd": ([z((2, 3, 4)), z((1, 2, 2)), z((1, 2, 2)), z((2,), S32), z((84,)), z((2, 3, 2)), z((1, 2, 2)),
                 z((1, 2, 2)), *RNN_W],
                [sds((2, 3, 4)), sds((1, 2, 2)), sds((1, 2, 2)), sds((4, 8)), sds((2, 8)), sds((8,)), sds((8,))],
                dict(RNN_BWD, precision=i64(-1))),
    "optim_step_fwd": ([*OPT_SCALARS, z((3,)), z((3,))], [sds((3,))], dict(OPT, rule=i64(7))),
}

# The optimizer's scalar operands (lr, count, sqnorm, grad_scale): one with a wrong size or dtype.
BAD_SCALAR = [
    ("optim_step_fwd", [z((), F), z((), S32), z((), F), z((2,), F), z((3,)), z((3,))], [sds((3,))], OPT),
    ("optim_step_fwd", [z((), F), z((), S32), z((), F), z((), jnp.float16), z((3,)), z((3,))], [sds((3,))], OPT),
    ("optim_step_fwd", [z((), F), z((), S32), z((1, 2), F), z((), F), z((3,)), z((3,))], [sds((3,))], OPT),
    ("optim_step_fwd", [z((), F), z((), F), z((), F), z((), F), z((3,)), z((3,))], [sds((3,))], OPT),
    ("optim_sqnorm_fwd", [z((2,)), z((3,))], [sds(())], SQNORM),
    ("optim_sqnorm_fwd", [z((), S32), z((3,))], [sds(())], SQNORM),
]

# Our validation's words (not XLA's attribute decoding, which would mean a wrong test table).
OURS = r"must|unknown|expected|out of range|larger than|cannot|smaller than|differs"


def _call(name, args, results, attrs):
    out = jax.ffi.ffi_call(f"jax_mps_{name}", results)(*args, **attrs)
    jax.block_until_ready(out)


def test_every_target_is_covered():
    names = {n for n, _, _ in _runtime.contract.registrations()}
    assert names == {f"jax_mps_{k}" for k in BAD_RESULT}


@pytest.mark.parametrize("name", sorted(BAD_RESULT))
def test_inconsistent_result_is_an_error(name):
    with pytest.raises(Exception, match=OURS):
        _call(name, *BAD_RESULT[name])


@pytest.mark.parametrize("name", sorted(BAD_ATTR))
def test_bad_attribute_is_an_error(name):
    with pytest.raises(Exception, match=OURS):
        _call(name, *BAD_ATTR[name])


def test_rnn_bwd_state_grads_is_a_flag():
    args, results, attrs = BAD_ATTR["rnn_bwd"]
    with pytest.raises(Exception, match="state_grads must be 0 or 1"):
        _call("rnn_bwd", args, results, dict(attrs, precision=i64(0), state_grads=i64(2)))


@pytest.mark.parametrize("case", range(len(BAD_SCALAR)))
def test_bad_optimizer_scalar_is_an_error(case):
    with pytest.raises(Exception, match=OURS):
        _call(*BAD_SCALAR[case])


def test_wrong_dtype_is_an_error():
    with pytest.raises(Exception, match="float32, float16 or bfloat16"):
        _call("activation_fwd", [jnp.zeros((2, 3), jnp.int32)], [sds((2, 3), jnp.int32)],
              dict(act=i64(1), alpha=f32(0)))
    with pytest.raises(Exception, match="uint32"):
        _call("dropout_fwd", [z((2,)), z((10,))], [sds((10,)), sds((2,), U8)],
              dict(threshold=i64(2**31), scale=f32(2)))


def test_low_precision_runs_in_the_backend():
    # float16 / bfloat16 reach the runtime as they are (no upcast in Python).
    for dt in (jnp.float16, jnp.bfloat16):
        x = jnp.linspace(-2, 2, 12, dtype=dt).reshape(3, 4)
        y = jax.ffi.ffi_call("jax_mps_activation_fwd", sds(x.shape, dt))(x, act=i64(1), alpha=f32(0))
        assert y.dtype == dt
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.maximum(np.asarray(x, np.float32), 0))


def test_constants_come_from_the_runtime():
    c = _runtime.contract
    assert c.act_grad_from_output(c.ACTIVATIONS["relu"], 0.0)
    assert c.act_grad_from_output(c.ACTIVATIONS["leaky_relu"], 0.1)
    assert not c.act_grad_from_output(c.ACTIVATIONS["leaky_relu"], -0.1)
    assert not c.act_grad_from_output(c.ACTIVATIONS["gelu"], 0.0)
    assert c.rnn_workspace_size(c.RNN_CELLS["lstm"], 1, 1, 2, 3, 2) == 84
    assert c.RNN_GATES[c.RNN_CELLS["gru"]] == 3


def test_activation_prelu_by_name():
    x, a = jnp.array([[-2.0, 3.0]]), jnp.array([0.5, 0.1])
    np.testing.assert_allclose(mps.activation(x, "prelu", alpha=a), mps.prelu(x, a))
    with pytest.raises(ValueError, match="alpha"):
        mps.activation(x, "prelu")
    with pytest.raises(ValueError, match="cannot be fused"):
        mps.dense(x, jnp.ones((2, 2)), activation="prelu")


class _FakeCuda:
    @staticmethod
    def backend():
        return "cuda", "cuDNN 9.x, CUDA 13.x"


@pytest.mark.parametrize("platform", ["gpu", "cuda"])
def test_backends_reports_cuda(monkeypatch, platform):
    monkeypatch.setattr(_runtime, "_cuda", _FakeCuda)
    monkeypatch.setattr(_runtime, "_platforms", lambda: {platform})
    b = mps.backends()
    assert b["cuda"] == "cuDNN 9.x, CUDA 13.x" and "cpu" in b


def test_backends_cpu_only(monkeypatch):
    monkeypatch.setattr(_runtime, "_platforms", lambda: {"cpu"})
    monkeypatch.setattr(_runtime, "_cuda", _FakeCuda)
    assert set(mps.backends()) == {"cpu"}
    monkeypatch.setattr(_runtime, "_platforms", lambda: {"gpu"})
    monkeypatch.setattr(_runtime, "_cuda", None)  # a GPU, but no CUDA backend built
    assert set(mps.backends()) == {"cpu"}
