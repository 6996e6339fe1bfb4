"""The multi-threaded kernel paths: conftest pins OMP_NUM_THREADS=1 for the suite (2 shared
cores), so tests/threaded_cases.py runs again here in a subprocess with two OpenMP threads."""
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.cpu_only  # OpenMP threads of the CPU kernels
def test_kernels_with_two_threads():
    here = Path(__file__).parent
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        str(here / "threaded_cases.py")], cwd=here.parent, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
