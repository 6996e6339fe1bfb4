import os

# Two cores on CI: keep oneDNN's OpenMP team from fighting XLA's threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)
# The references (tests/reference.py) compute float32 matmuls and convs at HIGHEST precision, so our
# ops run at full float32 too: on CUDA the default would allow TF32 (as XLA). Tests of the default
# set jax.default_matmul_precision themselves (test_conv.py, test_rnn.py).
jax.config.update("jax_default_matmul_precision", "highest")

# Every test runs once per backend: "cpu" always, "cuda" where jax sees a CUDA GPU (and the CUDA
# half of the runtime is built); elsewhere the cuda cases skip. JAX_MPS_TEST_BACKENDS=cuda (or cpu)
# narrows the set, e.g. for the GPU suite (tools/gpu_suite.sh).
BACKENDS = [b for b in ("cpu", "cuda")
            if b in os.environ.get("JAX_MPS_TEST_BACKENDS", "cpu,cuda").split(",")]


def _device(backend):
    try:
        devs = jax.devices(backend)
    except RuntimeError:
        return None
    return devs[0] if devs else None


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only: the test is about the CPU backend alone")


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request):
    """The backend a test runs on: its arrays and computations default to that device."""
    name = request.param
    if name == "cuda":
        if request.node.get_closest_marker("cpu_only"):
            pytest.skip("CPU-only test")
        dev = _device("cuda")
        if dev is None:
            pytest.skip("no CUDA device visible")
        import jax_mps  # noqa: F401  (loads the CUDA half where a GPU is visible)
        if "cuda" not in jax_mps.backends():
            pytest.skip("jax_mps was built without the CUDA backend")
        if "validates" in request.node.name:
            # Runtime errors of a GPU call surface when its result is awaited (asynchronous
            # dispatch); the validation tests expect them at the call, as on the CPU.
            request.getfixturevalue("monkeypatch").setattr(jax.ffi, "ffi_call", _blocking(jax.ffi.ffi_call))
    else:
        dev = _device("cpu")
    with jax.default_device(dev):
        yield name


def _blocking(ffi_call):
    def make(*a, **k):
        f = ffi_call(*a, **k)
        return lambda *args, **kw: jax.block_until_ready(f(*args, **kw))
    return make


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
