"""The activity classifier of `activity_classifier.ipynb`: data, augmentation, model, training.

    python examples/activity.py --attempts      # the notebook's table of training attempts (~45 min on 2 cores)

seglearn's smartwatch IMU set (``pip install --no-deps seglearn==1.2.5``). The model is the seed's:
series cut into chunks of 2000 samples -> `conv1d` (64 filters, kernel = stride = 100) + relu ->
dropout -> `lstm` -> dense 128 + `batch_norm` + relu -> dropout -> per-step logits. What changes
between attempts is only how it is trained (`Config`). Every choice is made on validation folds of
the training subjects (1-7); the held-out subjects (8-10) are only reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jax_mps as mps

CHUNK, WINDOW = 2000, 100
STEPS = CHUNK // WINDOW                 # 20 two-second windows per chunk
TRAIN_SUBJECTS, TEST_SUBJECTS = (1, 2, 3, 4, 5, 6, 7), (8, 9, 10)
# Validation folds inside the training subjects (model selection never sees subjects 8-10).
VAL_FOLDS = ((6, 7), (3, 4), (1, 2, 5))


@dataclasses.dataclass(frozen=True)
class Config:
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 2e-3
    schedule: str = "constant"          # "constant" or "cosine" (to 0 over the run, 1-epoch warm-up)
    weight_decay: float = 0.0           # > 0: mps.optim.adamw (decoupled), else mps.optim.adam
    label_smoothing: float = 0.0
    dropout: float = 0.3
    hidden: int = 200                   # LSTM units
    crops: bool = False                 # random crops (start anywhere, 50-100% of a chunk) instead
                                        # of consecutive chunks from a random offset below one window
    scale: float = 0.0                  # sd of a per-recording, per-channel gain (1 + N(0, scale))
    jitter: float = 0.0                 # sd of additive noise, in standardised units
    rotation: float = 0.0               # max angle [deg] of a random 3-D rotation of the watch frame
    time_warp: float = 0.0              # speed factor drawn from [1 - time_warp, 1 + time_warp]


def load():
    d = mps.data.load_watch()
    return d["X"], d["y"], d["subject"], d["labels"]


def random_rotation(rng, max_deg):
    """A rotation by an angle in [-max_deg, max_deg] about a uniformly random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return (np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k).astype(np.float32)


def augment(x, cfg, rng):
    """One random view of a raw recording (T, 6). Physical transforms act on the raw signals: a
    rotation of the watch on the wrist turns the accelerometer and the gyroscope vectors alike."""
    if cfg.rotation:
        r = random_rotation(rng, cfg.rotation)
        x = np.concatenate([x[:, :3] @ r.T, x[:, 3:] @ r.T], axis=1)
    if cfg.time_warp:
        # Exercising faster or slower: resample the series (angular rates scale with the speed).
        f = rng.uniform(1 - cfg.time_warp, 1 + cfg.time_warp)
        t = np.arange(0, len(x) - 1, f)
        x = np.stack([np.interp(t, np.arange(len(x)), x[:, c]) for c in range(6)], axis=1)
        x[:, 3:] *= f
    return x.astype(np.float32)


class Data:
    """Recordings of the training and evaluation subjects, standardised with statistics of the
    training subjects only, and their chunks."""

    def __init__(self, X, y, subject, train_subjects, eval_subjects):
        self.X, self.y = X, y
        self.train_ids = np.flatnonzero(np.isin(subject, train_subjects))
        self.eval_ids = np.flatnonzero(np.isin(subject, eval_subjects))
        all_train = np.concatenate([X[i] for i in self.train_ids])
        self.mu, self.sigma = all_train.mean(0), all_train.std(0)
        self.train = self.chunks([self.standardise(X[i]) for i in self.train_ids], self.train_ids)
        self.eval = self.chunks([self.standardise(X[i]) for i in self.eval_ids], self.eval_ids)

    def standardise(self, x):
        return ((x - self.mu) / self.sigma).astype(np.float32)

    def chunks(self, xs, ids, lengths=None):
        """Consecutive chunks of each series (the last one zero-padded); a 100-sample step counts
        (weight 1) only if it lies entirely inside the series. Returns (x, labels, weights, ids)."""
        out_x, out_y, out_w, out_s = [], [], [], []
        for x, i in zip(xs, ids):
            for start in range(0, len(x), CHUNK):
                part = x[start:start + CHUNK]
                w = (np.arange(1, STEPS + 1) * WINDOW <= len(part)).astype(np.float32)
                if w.sum() == 0:
                    continue
                pad = np.zeros((CHUNK, x.shape[1]), np.float32)
                pad[:len(part)] = part
                out_x.append(pad); out_y.append(self.y[i]); out_w.append(w); out_s.append(i)
        return np.stack(out_x), np.asarray(out_y, np.int32), np.stack(out_w), np.asarray(out_s)

    def epoch(self, cfg, seed):
        """The training chunks of one epoch: every recording augmented afresh."""
        rng = np.random.default_rng(seed)
        xs = []
        for i in self.train_ids:
            x = self.standardise(augment(self.X[i], cfg, rng))
            if cfg.scale:
                x = x * (1 + cfg.scale * rng.normal(size=(1, 6))).astype(np.float32)
            if cfg.jitter:
                x = x + cfg.jitter * rng.normal(size=x.shape).astype(np.float32)
            xs.append(x)
        if not cfg.crops:
            # The seed's augmentation: start each recording at a random offset below one window.
            return self.chunks([x[rng.integers(0, WINDOW):] for x in xs], self.train_ids)[:3]
        # As many crops per recording as it has chunks, each starting anywhere in the recording.
        crops, ids = [], []
        for x, i in zip(xs, self.train_ids):
            full = min(len(x), CHUNK)
            for _ in range(-(-len(x) // CHUNK)):
                n = int(rng.uniform(0.5, 1.0) * full) // WINDOW * WINDOW or WINDOW
                start = rng.integers(0, len(x) - n + 1)
                crops.append(x[start:start + n]); ids.append(i)
        return self.chunks(crops, ids)[:3]


def init(key, cfg, num_classes=7):
    k = jax.random.split(key, 4)
    glorot = jax.nn.initializers.glorot_uniform()
    params = {
        "conv": {"w": glorot(k[0], (WINDOW, 6, 64)), "b": jnp.zeros(64)},
        "lstm": mps.init_lstm(k[1], 64, cfg.hidden),
        "fc": {"w": glorot(k[2], (cfg.hidden, 128)), "scale": jnp.ones(128), "bias": jnp.zeros(128)},
        "out": {"w": glorot(k[3], (128, num_classes)), "b": jnp.zeros(num_classes)},
    }
    bn_stats = {"mean": jnp.zeros(128), "var": jnp.ones(128)}
    return params, bn_stats


def forward(params, bn_stats, x, weights, key, rate, train):
    # x (B, 2000, 6) -> per-step logits (B*20, classes) and the new batch-norm running statistics.
    B = x.shape[0]
    h = mps.conv1d(x, params["conv"]["w"], params["conv"]["b"], stride=WINDOW, padding="VALID",
                   activation="relu")                                       # (B, 20, 64)
    k1, k2 = jax.random.split(key)
    h = mps.dropout(k1, h, rate, deterministic=not train)
    lengths = jnp.sum(weights, axis=1).astype(jnp.int32)                   # padding only at the end
    h, _ = mps.lstm(h, params["lstm"], seq_lengths=lengths)                # (B, 20, hidden)
    h = mps.dense(h.reshape(B * STEPS, -1), params["fc"]["w"])             # (B*20, 128)
    if train:
        h, mean, var = mps.batch_norm(h, params["fc"]["scale"], params["fc"]["bias"], activation="relu")
        bn_stats = jax.tree_util.tree_map(lambda old, new: 0.9 * old + 0.1 * jax.lax.stop_gradient(new),
                                          bn_stats, {"mean": mean, "var": var})
    else:
        h = mps.batch_norm_inference(h, params["fc"]["scale"], params["fc"]["bias"],
                                     bn_stats["mean"], bn_stats["var"], activation="relu")
    h = mps.dropout(k2, h, rate, deterministic=not train)
    return mps.dense(h, params["out"]["w"], params["out"]["b"]), bn_stats


def make_optimizer(cfg, steps_per_epoch):
    lr = cfg.learning_rate
    if cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, lr, steps_per_epoch, cfg.epochs * steps_per_epoch)
    if cfg.weight_decay:
        return mps.optim.adamw(lr, weight_decay=cfg.weight_decay)
    return mps.optim.adam(lr)


def make_steps(cfg, opt, num_classes=7):
    def loss_fn(params, bn_stats, x, labels, weights, key):
        logits, bn_stats = forward(params, bn_stats, x, weights, key, cfg.dropout, train=True)
        loss = mps.softmax_cross_entropy(logits, jnp.repeat(labels, STEPS), weights=weights.reshape(-1),
                                         label_smoothing=cfg.label_smoothing,
                                         reduction="sum_by_nonzero_weights")
        return loss, bn_stats

    @partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        params, bn_stats, opt_state, key = state
        key, sub = jax.random.split(key)
        (loss, bn_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, bn_stats, *batch, sub)
        params, opt_state = opt.apply(params, grads, opt_state)
        return (params, bn_stats, opt_state, key), loss

    @jax.jit
    def predict(params, bn_stats, x, weights):
        logits, _ = forward(params, bn_stats, x, weights, jax.random.PRNGKey(0), 0.0, train=False)
        return mps.softmax(logits).reshape(x.shape[0], STEPS, num_classes)

    return train_step, predict


def window_metrics(probs, labels, weights):
    """Per-window accuracy and mean negative log-likelihood over the valid windows."""
    valid = weights > 0
    acc = float(((probs.argmax(-1) == labels[:, None]) & valid).sum() / valid.sum())
    p_true = np.take_along_axis(probs, np.broadcast_to(labels[:, None, None], weights.shape + (1,)), -1)[..., 0]
    return acc, float(-(np.log(p_true + 1e-9) * weights).sum() / weights.sum())


def recording_accuracy(pred, weights, ids, y):
    """Accuracy of the majority vote over each recording's windows."""
    votes = {}
    for p, w, s in zip(pred, weights, ids):
        votes.setdefault(s, []).extend(p[w > 0].tolist())
    return float(np.mean([Counter(v).most_common(1)[0][0] == y[s] for s, v in votes.items()]))


def train(data, cfg, seed, curves=True):
    """Train one model; returns (per-window accuracy, per-recording accuracy, predictions, history)
    on ``data.eval`` after the last epoch (the curves are only drawn, never used to choose)."""
    steps = -(-len(data.train[0]) // cfg.batch_size)
    opt = make_optimizer(cfg, steps)
    train_step, predict = make_steps(cfg, opt)
    params, bn_stats = init(jax.random.PRNGKey(seed), cfg)
    state = (params, bn_stats, opt.init(params), jax.random.PRNGKey(1000 + seed))
    x_ev, y_ev, w_ev, s_ev = data.eval
    x_tr, y_tr, w_tr, _ = data.train

    def eval_fn(state):
        acc, nll = window_metrics(np.asarray(predict(state[0], state[1], x_ev, w_ev)), y_ev, w_ev)
        train_acc, _ = window_metrics(np.asarray(predict(state[0], state[1], x_tr, w_tr)), y_tr, w_tr)
        return {"accuracy": acc, "eval_loss": nll, "train_accuracy": train_acc}

    state, history = mps.train.fit(
        train_step, state,
        lambda epoch: mps.data.Batches(data.epoch(cfg, seed * 1000 + epoch), cfg.batch_size,
                                       seed=seed * 1000 + epoch, drop_remainder=False),
        epochs=cfg.epochs, eval_fn=eval_fn if curves else None, progress=False)
    pred = np.asarray(predict(state[0], state[1], x_ev, w_ev)).argmax(-1)
    win = float(((pred == y_ev[:, None]) & (w_ev > 0)).sum() / (w_ev > 0).sum())
    return win, recording_accuracy(pred, w_ev, s_ev, data.y), pred, history


def logistic_baseline(data):
    """Logistic regression on the mean, sd, min and max of each channel of each 2-second window."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def features(x, w):
        win = x.reshape(len(x), STEPS, WINDOW, 6)
        return np.concatenate([win.mean(2), win.std(2), win.min(2), win.max(2)], axis=-1)[w > 0]

    (x_tr, y_tr, w_tr, _), (x_ev, y_ev, w_ev, s_ev) = data.train, data.eval
    scaler = StandardScaler().fit(features(x_tr, w_tr))
    model = LogisticRegression(max_iter=2000).fit(
        scaler.transform(features(x_tr, w_tr)), np.repeat(y_tr[:, None], STEPS, 1)[w_tr > 0])
    pred = np.zeros(w_ev.shape, np.int64)
    pred[w_ev > 0] = model.predict(scaler.transform(features(x_ev, w_ev)))
    win = float((pred == y_ev[:, None])[w_ev > 0].mean())
    return win, recording_accuracy(pred, w_ev, s_ev, data.y), pred


def attempts():
    """The training recipes tried, in order, as (name, Config). Each stage starts from the best
    of the stage before on the validation folds (mean of per-window and per-recording accuracy)."""
    r = dataclasses.replace
    seed = Config()
    cos = r(seed, schedule="cosine")                          # a final model that does not
    rot15 = r(cos, rotation=15.0)                             # depend on the last few steps
    rot30_sj = r(cos, rotation=30.0, scale=0.1, jitter=0.05)
    return [
        ("seed recipe: adam 2e-3, 40 epochs", seed),
        ("+ cosine learning-rate schedule", cos),
        ("cosine + random crops", r(cos, crops=True)),
        ("cosine + channel gain/jitter (0.1/0.05)", r(cos, scale=0.1, jitter=0.05)),
        ("cosine + rotation 15 deg", rot15),
        ("cosine + rotation 30 deg", r(cos, rotation=30.0)),
        ("cosine + rotation 45 deg", r(cos, rotation=45.0)),
        ("cosine + time warp 20%", r(cos, time_warp=0.2)),
        ("cosine + rotation 30 + gain/jitter", rot30_sj),
        ("rotation 15 + adamw weight decay 0.5", r(rot15, weight_decay=0.5)),
        ("rotation 15 + label smoothing 0.1", r(rot15, label_smoothing=0.1)),
        ("rotation 15 + dropout 0.5", r(rot15, dropout=0.5)),
        ("rotation 15 + LSTM 100 units", r(rot15, hidden=100)),
        ("rotation 15 + 60 epochs", r(rot15, epochs=60)),
        ("rotation 30 + gain/jitter + 60 epochs", r(rot30_sj, epochs=60)),
        ("rotation 30 + gain/jitter + 100 epochs", r(rot30_sj, epochs=100)),
    ]


CHOSEN = attempts()[-1][1]  # the best on the validation folds


def evaluate(cfg, seeds, folds, X, y, subject):
    """Mean and sd over ``seeds`` of (per-window, per-recording) accuracy averaged over ``folds``
    (the folds differ in difficulty by more than the seeds: their spread is not noise to report)."""
    res = []
    for train_subjects, eval_subjects in folds:
        data = Data(X, y, subject, train_subjects, eval_subjects)
        res.append([train(data, cfg, s, curves=False)[:2] for s in seeds])
    res = np.array(res).mean(0)                  # (seeds, 2)
    return res.mean(0), res.std(0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attempts", action="store_true", help="run the table of attempts")
    p.add_argument("--only", type=int, nargs="*", help="indices of the attempts to run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-test", action="store_true", help="validation folds only")
    p.add_argument("--set", nargs="*", default=None, metavar="FIELD=VALUE",
                   help="run one Config with these fields changed instead of the attempts")
    a = p.parse_args()
    X, y, subject, _ = load()
    seeds = list(range(a.seeds))
    val = [(tuple(s for s in TRAIN_SUBJECTS if s not in f), f) for f in VAL_FOLDS]
    test = [(TRAIN_SUBJECTS, TEST_SUBJECTS)]
    base_val = np.mean([logistic_baseline(Data(X, y, subject, *f))[:2] for f in val], 0)
    base_test = logistic_baseline(Data(X, y, subject, *test[0]))[:2]
    print(f"{'setting':44s} {'validation (1-7)':>22s} {'test (8-10)':>24s}")
    print(f"{'logistic regression':44s} {base_val[0]:9.3f} {base_val[1]:9.3f}"
          f" {base_test[0]:11.3f} {base_test[1]:9.3f}", flush=True)
    todo = attempts()
    if a.set is not None:
        fields = {f.name: f.type for f in dataclasses.fields(Config)}
        kv = dict(item.split("=", 1) for item in a.set)
        cast = {"int": int, "float": float, "bool": lambda v: v in ("1", "true", "True"), "str": str}
        todo = [(" ".join(a.set) or "default", Config(**{k: cast[fields[k]](v) for k, v in kv.items()}))]
    for i, (name, cfg) in enumerate(todo):
        if a.only and i not in a.only:
            continue
        t0 = time.perf_counter()
        (vw, vr), (vws, vrs) = evaluate(cfg, seeds, val, X, y, subject)
        line = f"{i:2d} {name:41s} {vw:.3f}±{vws:.3f} {vr:.3f}±{vrs:.3f}"
        if not a.no_test:
            (tw, tr), (tws, trs) = evaluate(cfg, seeds, test, X, y, subject)
            line += f"   {tw:.3f}±{tws:.3f} {tr:.3f}±{trs:.3f}"
        print(line + f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
