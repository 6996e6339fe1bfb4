"""The generic (non-AVX-512) CPU kernel paths: on a CPU with AVX-512 the LSTM cell, dropout's
Philox and small-row softmax run hand-written AVX-512 code, so their reference tests run again
here in a subprocess with JAX_MPS_NO_AVX512=1 (the paths other x86-64 CPUs take)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _has_avx512():
    try:
        return " avx512f " in f" {Path('/proc/cpuinfo').read_text()} ".replace("\n", " ")
    except OSError:
        return False


@pytest.mark.cpu_only
@pytest.mark.skipif(not _has_avx512(), reason="no AVX-512: the suite already runs the generic paths")
def test_generic_paths_without_avx512():
    here = Path(__file__).parent
    env = dict(os.environ, JAX_MPS_NO_AVX512="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        str(here / "test_rnn.py"), str(here / "test_dropout.py"), str(here / "test_losses.py"),
                        "-k", "not cuda and not gpu"],
                       cwd=here.parent, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


_LSTM_SCRIPT = """
import sys, numpy as np, jax, jax.numpy as jnp, jax_mps as mps
x = jax.random.normal(jax.random.key(0), (4, 6, 8))
y, _ = mps.lstm(x, mps.init_lstm(jax.random.key(1), 8, 40))
np.save(sys.argv[1], np.asarray(y))
"""


@pytest.mark.cpu_only
@pytest.mark.skipif(not _has_avx512(), reason="no AVX-512 kernels to switch off")
def test_no_avx512_switch_takes_effect(tmp_path):
    """Both LSTM cells agree to float32 accuracy and are not the same code (last bits differ)."""
    out = {}
    for flag in ("0", "1"):
        env = dict(os.environ, JAX_MPS_NO_AVX512=flag)
        f = tmp_path / f"y{flag}.npy"
        r = subprocess.run([sys.executable, "-c", _LSTM_SCRIPT, str(f)], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        out[flag] = np.load(f)
    np.testing.assert_allclose(out["1"], out["0"], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(out["1"], out["0"])
