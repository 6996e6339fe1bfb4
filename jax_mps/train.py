"""A training loop with bounded asynchronous dispatch, prefetching, progress, early stop and checkpoints.

The loop follows the double-buffered pattern of Apple's MPS training samples: the host dispatches
step ``i`` while step ``i - 1`` still runs on the device, and before dispatching step ``i`` it waits for
step ``i - max_in_flight`` (default 2).  So it never blocks on every step (the device never idles on
the host) and never runs unboundedly ahead (memory stays bounded, losses are reported promptly).
A background thread prepares the next batch and ``jax.device_put``-s it while the current step runs.

Typical use::

    import jax, optax, jax_mps as mps

    opt = mps.optim.adam(1e-3)

    @partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        params, opt_state = opt.apply(params, grads, opt_state)
        return (params, opt_state), loss

    def eval_fn(state):
        return {"accuracy": accuracy(state[0], x_test, y_test)}

    state, history = mps.train.fit(
        train_step, (params, opt.init(params)),
        lambda epoch: batches(x_train, y_train, 128, seed=epoch),
        epochs=10, eval_fn=eval_fn, target_accuracy=0.99, checkpoint_dir="/tmp/ckpt")
    print(history.reached_target, history[-1]["accuracy"])

Data parallel, on every device of a host or of several hosts, is the same code with a mesh:
``fit(..., mesh=jax.make_mesh((jax.device_count(),), ("data",)))`` puts the state replicated on
the mesh and each batch split along its leading axis over all the mesh's axes (from the batches
each process reads: with several processes every process passes its own part of the global
batch); the jitted step then runs every jax_mps call on the local shard (see _sharding.py).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["fit", "evaluate", "History", "save_checkpoint", "restore_checkpoint", "latest_checkpoint",
           "data_parallel"]


# ----------------------------------------------------------------------------------------------
# History
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class History:
    """What `fit` did: one dict per completed epoch plus how the run ended.

    ``history.epochs[k]`` holds ``epoch`` (1-based), ``loss`` (mean training loss of the epoch),
    ``steps``, ``samples``, ``seconds`` (wall time of the epoch's steps), ``samples_per_sec``
    (measured from the end of the epoch's first step, so compilation is not counted) and every
    metric returned by ``eval_fn``.  ``history["accuracy"]`` gives one metric as a list over epochs and
    ``history[-1]`` the last epoch's dict.
    """

    epochs: list = dataclasses.field(default_factory=list)
    reached_target: bool = False
    resumed_from: int | None = None  # epoch restored from a checkpoint, if any
    total_steps: int = 0

    def __getitem__(self, key):
        if isinstance(key, str):
            return [e.get(key) for e in self.epochs]
        return self.epochs[key]

    def __len__(self):
        return len(self.epochs)

    def _to_json(self):
        return {"epochs": self.epochs, "reached_target": self.reached_target, "total_steps": self.total_steps}

    @classmethod
    def _from_json(cls, d):
        return cls(epochs=list(d.get("epochs", [])), reached_target=bool(d.get("reached_target", False)),
                   total_steps=int(d.get("total_steps", 0)))


# ----------------------------------------------------------------------------------------------
# Checkpoints (orbax)
# ----------------------------------------------------------------------------------------------
def _manager(directory, max_to_keep=None):
    import orbax.checkpoint as ocp

    # Synchronous saves: the next training step donates the state's buffers, which an
    # asynchronous save could still be reading.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)


def save_checkpoint(directory, step: int, state, metadata: Mapping | None = None, *, max_to_keep=None):
    """Save the pytree ``state`` (e.g. params + optimizer state) as checkpoint ``step`` under ``directory``.

    ``metadata`` is an optional JSON-serialisable dict stored beside it.  Uses orbax-checkpoint.
    """
    import orbax.checkpoint as ocp

    mngr = _manager(directory, max_to_keep)
    try:
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave(dict(metadata or {}))), force=True)
        mngr.wait_until_finished()
    finally:
        mngr.close()


def latest_checkpoint(directory) -> int | None:
    """The newest checkpoint step saved under ``directory``, or None."""
    if directory is None or not os.path.isdir(directory):
        return None
    mngr = _manager(directory)
    try:
        return mngr.latest_step()
    finally:
        mngr.close()


def _leaf_name(path) -> str:
    # orbax's leaf names: the path's dict keys, sequence indices and field names joined by dots.
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def _check_matches(mngr, step, like, directory) -> None:
    """Raise ValueError naming every leaf whose shape or dtype differs between the checkpoint and
    ``like`` (or that only one of them has), before orbax's restore fails deep inside its
    asynchronous machinery with a traceback per leaf."""
    import orbax.checkpoint as ocp

    try:
        meta = ocp.StandardCheckpointer().metadata(os.path.join(os.fspath(mngr.directory), str(step), "state"))
        meta = getattr(meta, "item_metadata", meta)
        saved = {m.name: (tuple(m.shape), np.dtype(m.dtype)) for _, m in jax.tree_util.tree_flatten_with_path(meta)[0]}
    except Exception:  # metadata not readable with this orbax: leave the checks to orbax's restore
        return
    if not saved:
        return
    model = {_leaf_name(p): (tuple(np.shape(x)), np.dtype(jax.numpy.asarray(x).dtype))
             for p, x in jax.tree_util.tree_flatten_with_path(like)[0]}
    problems = [f"`{n}`: checkpoint {saved[n][0]} {saved[n][1]}, model {model[n][0]} {model[n][1]}"
                for n in sorted(model.keys() & saved.keys()) if saved[n] != model[n]]
    problems += [f"`{n}` {model[n][0]} is in the model but not in the checkpoint" for n in sorted(model.keys() - saved.keys())]
    problems += [f"`{n}` {saved[n][0]} is in the checkpoint but not in the model" for n in sorted(saved.keys() - model.keys())]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ValueError(f"restore_checkpoint: checkpoint {step} in {os.fspath(directory)!r} does not match the "
                         f"model's state: " + "; ".join(problems[:10]) + more)


def restore_checkpoint(directory, like, step: int | None = None):
    """Restore ``(state, metadata)`` from ``directory`` (newest step unless ``step``).

    ``like`` is a pytree with the structure, shapes and dtypes of the saved state (e.g. the freshly
    initialised state); the restored state has its structure (optax NamedTuples included). A
    checkpoint of another model raises ValueError naming the leaves that differ.
    """
    import orbax.checkpoint as ocp

    mngr = _manager(directory)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"restore_checkpoint: no checkpoint in {directory!r}")
        _check_matches(mngr, step, like, directory)
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), jax.numpy.asarray(x).dtype,
                                           sharding=getattr(x, "sharding", None)), like)
        out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                         meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"] or {})
    finally:
        mngr.close()


# ----------------------------------------------------------------------------------------------
# Prefetching
# ----------------------------------------------------------------------------------------------
_END = object()


class _Prefetcher:
    """Iterates ``it`` on a daemon thread, ``jax.device_put``-ting up to ``size`` batches ahead."""

    def __init__(self, it: Iterable, size: int, device_put: Callable):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(it), device_put), daemon=True)
        self._thread.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it, device_put):
        try:
            for batch in it:
                if not self._put(("ok", device_put(batch))):
                    return
            self._put(("end", _END))
        except BaseException as e:  # re-raised on the consumer thread
            self._put(("err", e))

    def __iter__(self):
        while True:
            kind, item = self._q.get()
            if kind == "end":
                return
            if kind == "err":
                raise item
            yield item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


def _batch_size(batch) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    shape = np.shape(leaves[0]) if leaves else ()
    return int(shape[0]) if shape else 1


def _loss_of(out):
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise ValueError("fit: step_fn's metrics dict must contain 'loss'")
        return out["loss"]
    return out


def _epoch_iterable(train_data, epoch):
    if callable(train_data):
        return train_data(epoch)
    if iter(train_data) is train_data:
        raise TypeError("fit: train_data must be re-iterable (a list or a callable epoch -> iterable), "
                        "not a one-shot iterator/generator")
    return train_data


def _as_float(x):
    return float(np.mean(np.asarray(x)))


# ----------------------------------------------------------------------------------------------
# Data parallelism
# ----------------------------------------------------------------------------------------------
def data_parallel(mesh=None, *, data_sharding=None, state_sharding=None):
    """(put_batch, put_state) for data-parallel training on `mesh`.

    put_batch makes a global array from each process's part of a batch (its leading axis split
    over `data_sharding`, default every axis of the mesh); put_state places the state with
    `state_sharding` (default replicated). Either sharding may be given without a mesh.
    """
    if mesh is None and data_sharding is None:
        raise ValueError("data_parallel: pass a mesh or a data_sharding")
    if data_sharding is None:
        data_sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    if state_sharding is None:
        state_sharding = NamedSharding(data_sharding.mesh, PartitionSpec())

    def put_leaf(x):
        if jax.process_count() == 1:
            return jax.device_put(x, data_sharding)
        return jax.make_array_from_process_local_data(data_sharding, np.asarray(x))

    def put_batch(batch):
        return jax.tree_util.tree_map(put_leaf, batch)

    def put_state(state):
        return jax.device_put(state, state_sharding)

    return put_batch, put_state


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def fit(step_fn: Callable, state, train_data, *, epochs: int = 1, eval_fn: Callable | None = None,
        target_accuracy: float | None = None, target_metric: str = "accuracy",
        checkpoint_dir=None, resume: bool = True, max_to_keep: int | None = 2,
        max_in_flight: int = 2, prefetch: int = 1, device_put: Callable | None = None,
        steps_per_epoch: int | None = None, progress: bool = True, file=None, desc: str = "epoch",
        on_step: Callable | None = None, mesh=None, data_sharding=None, state_sharding=None):
    """Train ``state`` with ``step_fn`` for up to ``epochs`` epochs; returns ``(state, History)``.

    Args:
      step_fn: ``(state, batch) -> (state, loss)`` or ``(state, metrics)`` with ``metrics["loss"]``;
        usually ``jax.jit(..., donate_argnums=0)``.  It is called asynchronously: the loop only
        waits for the loss of the step ``max_in_flight`` steps back.
      state: any pytree (e.g. ``(params, opt_state)``), also what gets checkpointed.
      train_data: a callable ``epoch -> iterable of batches`` (``epoch`` is 0-based, so a shuffle
        seeded by it makes resumed runs see the same data), or a re-iterable (e.g. a list).
        Batches are pytrees of arrays whose leading axis is the batch (used for samples/s).
      epochs: the number of epochs to run in total (a resumed run continues up to this count).
      eval_fn: ``state -> dict`` of metrics, run after every epoch (see also `evaluate`).
      target_accuracy: stop as soon as ``eval_fn(state)[target_metric] >= target_accuracy``.
      checkpoint_dir: save ``state`` + history with orbax after every epoch (keeping
        ``max_to_keep``); with ``resume=True`` an existing checkpoint there is restored first and
        training continues from the epoch after it (a run that had reached its target returns
        at once).
      max_in_flight: the most steps dispatched and not yet waited for (>= 1; 1 = synchronous).
      prefetch: batches prepared ahead on a background thread (0 = prepare inline).
      device_put: how a batch is moved to the device (default ``jax.device_put``).
      mesh, data_sharding, state_sharding: train data parallel (see `data_parallel`): the state
        is placed with ``state_sharding`` (default replicated on ``mesh``) and every batch split
        on its leading axis with ``data_sharding`` (default over all of ``mesh``'s axes); with
        several processes each one passes its own part of every batch. Samples/s count the
        global batch.
      steps_per_epoch: the progress bar's total (default ``len(data)`` when defined).
      progress: show a tqdm bar with the running loss and samples/s (to ``file``, default stderr).
      on_step: optional hook ``on_step(step, loss)``, called with the global step index and the
        float loss once a step is known complete (i.e. in order, lagging dispatch by
        ``max_in_flight - 1``).

    Returns:
      ``(state, history)``; see `History`.
    """
    if max_in_flight < 1:
        raise ValueError(f"fit: max_in_flight must be >= 1, got {max_in_flight}")
    if epochs < 0:
        raise ValueError(f"fit: epochs must be >= 0, got {epochs}")
    if target_accuracy is not None and eval_fn is None:
        raise ValueError("fit: target_accuracy needs an eval_fn")
    if mesh is not None or data_sharding is not None:
        if device_put is not None:
            raise ValueError("fit: pass either device_put or a mesh / data_sharding, not both")
        device_put, put_state = data_parallel(mesh, data_sharding=data_sharding, state_sharding=state_sharding)
        state = put_state(state)
    device_put = jax.device_put if device_put is None else device_put
    file = sys.stderr if file is None else file
    history = History()
    start_epoch = 0

    if checkpoint_dir is not None and resume and latest_checkpoint(checkpoint_dir) is not None:
        state, meta = restore_checkpoint(checkpoint_dir, state)
        history = History._from_json(meta.get("history", {}))
        start_epoch = int(meta.get("epoch", len(history.epochs)))
        history.resumed_from = start_epoch
        _write(file, progress, f"resumed from {checkpoint_dir} at epoch {start_epoch}")
        if history.reached_target:
            return state, history

    step = history.total_steps
    for epoch in range(start_epoch, epochs):
        data = _epoch_iterable(train_data, epoch)
        total = steps_per_epoch
        if total is None:
            try:
                total = len(data)
            except TypeError:
                total = None
        bar = _bar(progress, total, f"{desc} {epoch + 1}/{epochs}", file)
        batches = _Prefetcher(data, prefetch, device_put) if prefetch > 0 else (device_put(b) for b in data)
        in_flight: collections.deque = collections.deque()
        t0 = time.perf_counter()
        loss_sum, n_done, samples_done = 0.0, 0, 0
        t_first, samples_first = t0, 0  # the rate is measured from the first step's end (compiles excluded)

        def retire():
            # Block on the oldest in-flight step (its loss comes out of the same executable).
            nonlocal loss_sum, n_done, samples_done, t_first, samples_first
            s, n, loss = in_flight.popleft()
            value = _as_float(jax.block_until_ready(loss))
            loss_sum += value
            n_done += 1
            samples_done += n
            if n_done == 1:
                t_first, samples_first = time.perf_counter(), samples_done
            if on_step is not None:
                on_step(s, value)
            if bar is not None:
                bar.set_postfix_str(f"loss={value:.4f}, {rate():,.0f} samples/s", refresh=False)
                bar.update(1)

        def rate():
            if n_done < 2:
                return samples_done / max(time.perf_counter() - t0, 1e-9)
            return (samples_done - samples_first) / max(time.perf_counter() - t_first, 1e-9)

        try:
            for batch in batches:
                while len(in_flight) >= max_in_flight:
                    retire()
                n = _batch_size(batch)
                state, out = step_fn(state, batch)
                in_flight.append((step, n, _loss_of(out)))
                step += 1
            while in_flight:
                retire()
        finally:
            if prefetch > 0:
                batches.close()
            if bar is not None:
                bar.close()

        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": loss_sum / max(n_done, 1), "steps": n_done,
                  "samples": samples_done, "seconds": seconds, "samples_per_sec": rate()}
        if eval_fn is not None:
            metrics = eval_fn(state) or {}
            record.update({k: _as_float(v) if _scalar(v) else v for k, v in dict(metrics).items()})
        history.epochs.append(record)
        history.total_steps = step
        reached = (target_accuracy is not None and target_metric in record
                   and record[target_metric] >= target_accuracy)
        history.reached_target = bool(reached)
        _write(file, progress, _summary(record))
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, epoch + 1, state,
                            {"epoch": epoch + 1, "history": history._to_json()}, max_to_keep=max_to_keep)
        if reached:
            _write(file, progress, f"reached {target_metric} {record[target_metric]:.4f} >= "
                                   f"{target_accuracy} after epoch {epoch + 1}; stopping")
            break
    return state, history


def evaluate(eval_step: Callable, state, data: Iterable, *, max_in_flight: int = 2,
             device_put: Callable | None = None, mesh=None, data_sharding=None) -> dict:
    """Sum ``eval_step(state, batch) -> dict`` over ``data`` with bounded async dispatch.

    If the dict has a ``"count"`` entry, every other entry is divided by the total count, so
    ``{"accuracy": (pred == y).sum(), "count": len(y)}`` yields the accuracy over the whole set.
    With a mesh / data_sharding the batches are split as in `fit`.
    """
    if mesh is not None or data_sharding is not None:
        device_put = data_parallel(mesh, data_sharding=data_sharding)[0]
    device_put = jax.device_put if device_put is None else device_put
    totals: dict = {}
    in_flight: collections.deque = collections.deque()

    def retire():
        for k, v in jax.device_get(in_flight.popleft()).items():
            totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))

    for batch in data:
        while len(in_flight) >= max_in_flight:
            retire()
        in_flight.append(dict(eval_step(state, device_put(batch))))
    while in_flight:
        retire()
    if "count" in totals:
        count = totals.pop("count")
        totals = {k: v / max(count, 1.0) for k, v in totals.items()}
        totals["count"] = int(count)
    return totals


def _scalar(v):
    return np.ndim(v) == 0


def _summary(record):
    parts = [f"epoch {record['epoch']}: loss {record['loss']:.4f}",
             f"{record['samples_per_sec']:,.0f} samples/s", f"{record['seconds']:.1f}s"]
    for k, v in record.items():
        if k in ("epoch", "loss", "steps", "samples", "seconds", "samples_per_sec", "count"):
            continue
        if isinstance(v, float) and math.isfinite(v):
            parts.append(f"{k} {v:.4f}")
    return ", ".join(parts)


def _bar(progress, total, desc, file):
    if not progress:
        return None
    from tqdm import tqdm  # the text bar: readable in terminals, logs and saved notebooks alike

    return tqdm(total=total, desc=desc, file=file, dynamic_ncols=True, unit="step")


def _write(file, progress, msg):
    if not progress:
        return
    from tqdm import tqdm

    tqdm.write(msg, file=file)
