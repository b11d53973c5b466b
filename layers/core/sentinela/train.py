"""`sentinela train DIR`: a threat head on the base model's embedding, thresholds from grouped CV.

What it does, in order (every choice below was measured by grouped cross-validation; see
models/TRAINING_REPORT.md for the figures):

1. Embed every clip of ``DIR/<label>/`` with the production front-end (``audio.windows`` -> 3 s windows,
   1.5 s hop, short clips padded) and the base model (``Model.infer``); cache per file sha256.
2. Augment: the loudest stretch of each threat clip mixed into a background window at several SNRs, at a
   random position, with a random gain. Each mix remembers its two source clips, so in cross-validation
   a mix is only used when both sources are in the training folds.
3. Fit one-vs-rest L2 logistic regressions (scikit-learn, training time only), one per class including
   background, with each clip weighing the same whatever its length (near-duplicate windows of one
   recording do not outvote other recordings) and each class weighing the same (imbalance).
   Multiple instances: not every window of a threat clip holds the threat, so a first fit scores the
   windows of each threat clip and the second fit keeps as positives only the clip's best window and
   those the first fit already believes (p >= 0.5); the rest are left out rather than called negative.
4. Cross-validate with folds grouped by source recording (repeated), choose each class's alert
   threshold on the out-of-fold clip scores (clip score = max window score, as the Detector does), and
   measure the whole procedure honestly with nested CV (thresholds chosen inside each outer fold).
5. Write the head as a tiny ONNX graph (embedding -> MatMul -> Add -> Sigmoid -> probabilities), the
   report, and the thresholds into the model card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .card import THREAT_CLASSES, CardError, ModelCard, load_card
from .evaluate import (
    BACKGROUND,
    LABELS,
    ClipScore,
    DatasetError,
    LabelledClip,
    clip_metrics,
    file_sha256,
    manifest_hash,
    scan_dataset,
)

HEAD_CLASSES: tuple[str, ...] = LABELS  # the five threats, then background
SEED = 20240
CACHE_VERSION = 1


class TrainError(ValueError):
    """Training that cannot proceed for a reason the user can fix."""


@dataclass(frozen=True)
class Config:
    """One training recipe. The defaults are the committed head's."""

    c: float = 0.1  # inverse L2 strength of the logistic regressions
    mil: bool = True  # second fit on each threat clip's best windows only
    augment: bool = False  # measured both ways by grouped CV every run; mixes did not help (see report)
    aug_per_clip: int = 6
    aug_snrs_db: tuple[float, ...] = (6.0, 0.0, -6.0)
    aug_weight: float = 0.5  # the mixes of one clip weigh this many clips
    min_windows: int = 1

    def describe(self) -> dict[str, Any]:
        return {"c": self.c, "mil": self.mil, "augment": self.augment, "aug_per_clip": self.aug_per_clip,
                "aug_snrs_db": list(self.aug_snrs_db), "aug_weight": self.aug_weight,
                "min_windows": self.min_windows}


@dataclass
class Embedded:
    clip: LabelledClip
    sha256: str
    duration_s: float
    emb: np.ndarray  # float32 [n_windows, d]
    zero_shot: np.ndarray  # float32 [n_windows, 5] the base model's own threat-label scores


@dataclass
class AugSet:
    emb: np.ndarray  # float32 [n, d]
    label: np.ndarray  # int [n] index into HEAD_CLASSES
    threat_clip: np.ndarray  # int [n] index of the threat clip mixed in
    bg_clip: np.ndarray  # int [n] index of the background clip it was mixed into


# --- embedding ---------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def embedding_model(card: ModelCard, threads: int | None) -> Any:
    """The base model without any head, asked for its embedding output as well as its scores."""
    from .model import Model

    if not card.embedding_output:
        raise TrainError("the model card names no embedding_output; a head needs the model's embedding")
    return Model(replace(card, head=None), threads=threads, embeddings=True)


def _model_key(card: ModelCard) -> str:
    sha = file_sha256(card.path)  # the bytes in use, not what the card claims: a rebuild may differ
    return f"{sha[:16]}-sr{card.sample_rate}-w{card.window_samples}-h{card.hop_samples}-s{card.sensitivity:g}"


def _embed_windows(model: Any, wins: list[np.ndarray], batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    embs: list[np.ndarray] = []
    zs: list[np.ndarray] = []
    for i in range(0, len(wins), batch):
        scores, emb = model.infer(np.stack(wins[i : i + batch]).astype(np.float32))
        assert emb is not None
        embs.append(np.asarray(emb, dtype=np.float32))
        zs.append(model.threat_scores(scores, None))
    return np.concatenate(embs), np.concatenate(zs)


def embed_clip(model: Any, clip: LabelledClip, sha: str, cache: Path | None) -> Embedded:
    """Windows of one clip through the production front-end and the base model (cached by sha256)."""
    from .audio import windows

    card = model.card
    path = cache / f"{sha}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return Embedded(clip, sha, float(z["duration_s"]), z["emb"], z["zero_shot"])
    wins = windows(clip.path, sample_rate=card.sample_rate, window=card.window_samples, hop=card.hop_samples)
    buf = [w for _, w in wins]
    emb, zs = _embed_windows(model, buf)
    out = Embedded(clip, sha, wins.info.duration_s, emb, zs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, duration_s=np.float64(out.duration_s), emb=emb, zero_shot=zs)
        os.replace(tmp, path)
    return out


def embed_dataset(
    model: Any, clips: Sequence[LabelledClip], cache: Path | None
) -> tuple[list[Embedded], list[dict[str, str]]]:
    from .audio import AudioError

    done: list[Embedded] = []
    skipped: list[dict[str, str]] = []
    t0 = time.perf_counter()
    for i, clip in enumerate(clips):
        try:
            sha = file_sha256(clip.path)
            done.append(embed_clip(model, clip, sha, cache))
        except (AudioError, OSError) as exc:
            reason = exc.reason if isinstance(exc, AudioError) else str(exc)
            skipped.append({"file": clip.rel, "reason": reason})
            _log(f"skipped {clip.rel}: {reason}")
        if (i + 1) % 25 == 0:
            _log(f"embedded {i + 1}/{len(clips)} clips ({time.perf_counter() - t0:.0f} s)")
    return done, skipped


# --- augmentation ------------------------------------------------------------------------------------


def _loudest_segment(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    if x.size <= window:
        return x
    starts = range(0, x.size - window + 1, hop)
    best = max(starts, key=lambda s: float(np.dot(x[s : s + window], x[s : s + window])))
    return x[best : best + window]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def build_augmentations(
    model: Any, data: Sequence[Embedded], cfg: Config, cache: Path | None, seed: int = SEED
) -> AugSet:
    """Threat-in-background mixes, each tagged with both source clips (for leak-free CV)."""
    from .audio import read_mono

    card = model.card
    win, hop, sr = card.window_samples, card.hop_samples, card.sample_rate
    threat_idx = [i for i, e in enumerate(data) if e.clip.label != BACKGROUND]
    bg_idx = [i for i, e in enumerate(data) if e.clip.label == BACKGROUND]
    d = data[0].emb.shape[1] if data else 0
    empty = AugSet(np.zeros((0, d), np.float32), np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))
    if not threat_idx or not bg_idx or cfg.aug_per_clip <= 0:
        return empty
    recipe = json.dumps({"v": CACHE_VERSION, "seed": seed, "cfg": [cfg.aug_per_clip, list(cfg.aug_snrs_db)],
                         "files": [[e.clip.rel, e.clip.label, e.sha256] for e in data]}, sort_keys=True)
    key = hashlib.sha256(recipe.encode()).hexdigest()[:24]
    path = cache / f"aug-{key}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return AugSet(z["emb"], z["label"], z["threat_clip"], z["bg_clip"])
    rng = np.random.default_rng(seed)
    bg_audio: dict[int, np.ndarray] = {}
    wins: list[np.ndarray] = []
    labels: list[int] = []
    t_src: list[int] = []
    b_src: list[int] = []
    for ti in threat_idx:
        seg = _loudest_segment(read_mono(data[ti].clip.path, sr), win, hop)
        rms_t = max(_rms(seg), 1e-5)
        for k in range(cfg.aug_per_clip):
            bi = int(rng.choice(bg_idx))
            if bi not in bg_audio:
                bg_audio[bi] = read_mono(data[bi].clip.path, sr)
            bg = bg_audio[bi]
            if bg.size < win:
                bg = np.pad(bg, (0, win - bg.size))
            b0 = int(rng.integers(0, bg.size - win + 1))
            mix = bg[b0 : b0 + win].astype(np.float64)
            snr = cfg.aug_snrs_db[k % len(cfg.aug_snrs_db)]
            scale = max(_rms(mix), 1e-4) / rms_t * 10 ** (snr / 20)
            off = int(rng.integers(0, win - seg.size + 1))
            mix[off : off + seg.size] += scale * seg
            mix *= 10 ** (float(rng.uniform(-12.0, 6.0)) / 20)
            peak = float(np.abs(mix).max())
            if peak > 0.99:
                mix *= 0.99 / peak
            wins.append(mix.astype(np.float32))
            labels.append(HEAD_CLASSES.index(data[ti].clip.label))
            t_src.append(ti)
            b_src.append(bi)
    emb, _ = _embed_windows(model, wins)
    out = AugSet(emb, np.array(labels), np.array(t_src), np.array(b_src))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, emb=out.emb, label=out.label, threat_clip=out.threat_clip, bg_clip=out.bg_clip)
        os.replace(tmp, path)
    return out


# --- the head ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    w: np.ndarray  # float32 [d, classes], input standardisation folded in
    b: np.ndarray  # float32 [classes]

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = x.astype(np.float64) @ self.w.astype(np.float64) + self.b.astype(np.float64)
        return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)


def _fit_ovr(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float) -> Head:
    """One L2 logistic regression per class, on standardised inputs, each side of each class weighing
    the same; the standardisation is folded into the weights so the ONNX graph is MatMul + Add."""
    from sklearn.linear_model import LogisticRegression

    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-3
    xs = (x - mu) / sd
    k = len(HEAD_CLASSES)
    coef = np.zeros((k, x.shape[1]))
    icpt = np.full(k, -12.0)  # a class without examples never fires
    for j in range(k):
        pos = y == j
        if not pos.any() or pos.all():
            continue
        sw = np.where(pos, w / w[pos].sum(), w / w[~pos].sum()) * len(y) / 2
        lr = LogisticRegression(C=c, max_iter=2000, tol=1e-4)
        lr.fit(xs, pos.astype(int), sample_weight=sw)
        coef[j] = lr.coef_[0]
        icpt[j] = lr.intercept_[0]
    wmat = (coef / sd).T
    bias = icpt - (mu / sd) @ coef.T
    return Head(wmat.astype(np.float32), bias.astype(np.float32))


def _window_rows(
    data: Sequence[Embedded], idx: Sequence[int], aug: AugSet | None, cfg: Config
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training rows: embeddings, class, weight (each clip weighs 1, whatever its windows), clip index
    (-1 for mixes). Mixes are used only when both of their source clips are among ``idx``."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    cs: list[np.ndarray] = []
    for i in idx:
        e = data[i]
        n = len(e.emb)
        xs.append(e.emb)
        ys.append(np.full(n, HEAD_CLASSES.index(e.clip.label)))
        ws.append(np.full(n, 1.0 / n))
        cs.append(np.full(n, i))
    if aug is not None and cfg.augment and len(aug.emb):
        allowed = np.zeros(len(data), bool)
        allowed[list(idx)] = True
        keep = allowed[aug.threat_clip] & allowed[aug.bg_clip]
        if keep.any():
            per_clip = np.bincount(aug.threat_clip[keep], minlength=len(data)).astype(float)
            xs.append(aug.emb[keep])
            ys.append(aug.label[keep])
            ws.append(cfg.aug_weight / per_clip[aug.threat_clip[keep]])
            cs.append(np.full(int(keep.sum()), -1))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(cs)


def train_head(data: Sequence[Embedded], idx: Sequence[int], aug: AugSet | None, cfg: Config) -> Head:
    x, y, w, clip_of = _window_rows(data, idx, aug, cfg)
    head = _fit_ovr(x, y, w, cfg.c)
    if not cfg.mil:
        return head
    # Multiple instances: keep each threat clip's best window and the windows already believed.
    p = head.predict(x)
    keep = np.ones(len(y), bool)
    bg = HEAD_CLASSES.index(BACKGROUND)
    for i in set(clip_of.tolist()) - {-1}:
        rows = np.flatnonzero(clip_of == i)
        cls = int(y[rows[0]])
        if cls == bg or len(rows) == 1:
            continue
        pc = p[rows, cls]
        keep[rows] = (pc >= 0.5) | (pc == pc.max())
        w[rows[keep[rows]]] = 1.0 / int(keep[rows].sum())
    return _fit_ovr(x[keep], y[keep], w[keep], cfg.c)


# --- cross-validation and thresholds -----------------------------------------------------------------


def _folds(
    data: Sequence[Embedded], idx: Sequence[int], k: int, seed: int
) -> list[tuple[list[int], list[int]]]:
    """Stratified folds of ``idx`` in which no source recording straddles train and test."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = [data[i].clip.label for i in idx]
    groups = [data[i].clip.group for i in idx]
    per_class = min(len({g for g, lab in zip(groups, labels, strict=True) if lab == c}) for c in set(labels))
    k = max(2, min(k, per_class, len(set(groups))))
    if len(set(groups)) < 2:
        raise TrainError("cross-validation needs clips from at least two source recordings")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    arr = np.asarray(idx)
    return [(arr[a].tolist(), arr[b].tolist())
            for a, b in sgkf.split(np.zeros(len(idx)), labels, groups)]


def oof_window_probs(
    data: Sequence[Embedded], idx: Sequence[int], aug: AugSet | None, cfg: Config, k: int, seed: int
) -> dict[int, np.ndarray]:
    """Out-of-fold window probabilities [n_windows, 6] of every clip in ``idx``."""
    out: dict[int, np.ndarray] = {}
    for tr, te in _folds(data, idx, k, seed):
        head = train_head(data, tr, aug, cfg)
        for i in te:
            out[i] = head.predict(data[i].emb)
    return out


def clip_scores(
    data: Sequence[Embedded], probs: Mapping[int, np.ndarray], thresholds: Mapping[str, float],
    min_windows: int,
) -> list[ClipScore]:
    """What the Detector makes of these window scores: max per class, alert on >= min_windows windows."""
    out = []
    for i, p in probs.items():
        e = data[i]
        maxs = {c: float(p[:, j].max()) for j, c in enumerate(THREAT_CLASSES)}
        alerts = {c: int((p[:, j] >= thresholds[c]).sum()) >= min_windows
                  for j, c in enumerate(THREAT_CLASSES)}
        out.append(ClipScore(e.clip.rel, e.clip.label, e.duration_s, maxs, alerts))
    return out


def _kth_max(p: np.ndarray, k: int) -> float:
    return float(np.sort(p)[-k]) if len(p) >= k else 0.0


def choose_thresholds(
    data: Sequence[Embedded], probs: Sequence[Mapping[int, np.ndarray]], min_windows: int
) -> dict[str, float]:
    """Per class, the middle of the plateau of ``recall - 3 x background alert rate - other-threat alert
    rate`` over the out-of-fold clip scores of every repetition: a threshold in the middle of the gap
    between the classes, not at the edge of the last clip seen, travels better to new recordings."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    out: dict[str, float] = {}
    for j, c in enumerate(THREAT_CLASSES):
        obj = np.zeros(len(grid))
        for rep in probs:
            score = {i: _kth_max(p[:, j], min_windows) for i, p in rep.items()}
            pos = np.array([s for i, s in score.items() if data[i].clip.label == c])
            bg = np.array([s for i, s in score.items() if data[i].clip.label == BACKGROUND])
            oth = np.array([s for i, s in score.items() if data[i].clip.label not in (c, BACKGROUND)])
            for g, t in enumerate(grid):
                rec = (pos >= t).mean() if len(pos) else 0.0
                fa = (bg >= t).mean() if len(bg) else 0.0
                ot = (oth >= t).mean() if len(oth) else 0.0
                obj[g] += rec - 3.0 * fa - ot
        best = obj.max()
        near = np.flatnonzero(obj >= best - 0.02 * len(probs))
        # the contiguous run of near-best thresholds around the best one
        top = int(obj.argmax())
        lo = hi = top
        while lo - 1 in near:
            lo -= 1
        while hi + 1 in near:
            hi += 1
        out[c] = float(np.round((grid[lo] + grid[hi]) / 2, 3))
    return out


def _mean_metrics(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean (and spread) of the headline figures over CV repetitions; the confusion matrix summed."""
    def values(*path: str) -> list[float]:
        out = []
        for r in runs:
            v: Any = r
            for p in path:
                v = v[p]
            if v is not None:
                out.append(float(v))
        return out

    def avg(*path: str) -> float | None:
        vals = values(*path)
        return round(float(np.mean(vals)), 4) if vals else None

    def spread(*path: str) -> float | None:
        vals = values(*path)
        return round(float(np.std(vals)), 4) if len(vals) > 1 else None

    classes: dict[str, dict[str, float | None]] = {}
    for c in runs[0]["classes"]:
        classes[c] = {k: avg("classes", c, k) for k in ("n", "auc", "precision", "recall")}
        classes[c]["auc_sd"] = spread("classes", c, "auc")
        classes[c]["recall_sd"] = spread("classes", c, "recall")
    labels = runs[0]["confusion_labels"]
    conf = {t: {p: int(sum(r["confusion"][t][p] for r in runs)) for p in labels} for t in labels}
    keys = ("accuracy", "macro_recall", "background_false_alarm_rate", "false_alarms_per_hour")
    out: dict[str, Any] = {"repetitions": len(runs), "classes": classes}
    for k in keys:
        out[k] = avg(k)
        out[f"{k}_sd"] = spread(k)
    out["background_hours"] = runs[0]["background_hours"]
    out["confusion_labels"] = labels
    out["confusion_summed_over_repetitions"] = conf
    return out


def cross_validate(
    data: Sequence[Embedded], aug: AugSet | None, cfg: Config, *, folds: int, repeats: int, nested: int,
    seed: int = SEED,
) -> tuple[dict[str, Any], list[dict[int, np.ndarray]]]:
    """Repeated grouped CV. ``tuned``: thresholds chosen on the very out-of-fold scores they are scored on
    (optimistic). ``nested``: each outer fold's thresholds chosen by an inner grouped CV of its training
    part (honest: the figures of the whole procedure on recordings it never saw), over ``nested``
    repetitions. Also returns the out-of-fold window probabilities of each repetition."""
    idx = list(range(len(data)))
    reps = [oof_window_probs(data, idx, aug, cfg, folds, seed + r) for r in range(repeats)]
    thr = choose_thresholds(data, reps, cfg.min_windows)
    tuned = [clip_metrics(clip_scores(data, rep, thr, cfg.min_windows), thr) for rep in reps]
    at_half = {c: 0.5 for c in THREAT_CLASSES}
    fixed = [clip_metrics(clip_scores(data, rep, at_half, cfg.min_windows), at_half) for rep in reps]
    out: dict[str, Any] = {"config": cfg.describe(), "folds": folds, "repeats": repeats, "thresholds": thr,
                           "tuned": _mean_metrics(tuned), "at_0.5": _mean_metrics(fixed)}
    if nested:
        runs = []
        chosen: dict[str, list[float]] = {c: [] for c in THREAT_CLASSES}
        for r in range(nested):
            scores: list[ClipScore] = []
            for tr, te in _folds(data, idx, folds, seed + r):
                inner = oof_window_probs(data, tr, aug, cfg, folds - 1, seed + 100 + r)
                t_in = choose_thresholds(data, [inner], cfg.min_windows)
                for c in THREAT_CLASSES:
                    chosen[c].append(t_in[c])
                head = train_head(data, tr, aug, cfg)
                scores += clip_scores(data, {i: head.predict(data[i].emb) for i in te}, t_in, cfg.min_windows)
            # per-fold thresholds: metrics' "alert" column is not meaningful here; the spread is reported
            runs.append(clip_metrics(scores, thr))
        out["nested"] = _mean_metrics(runs)
        out["nested"]["inner_thresholds"] = {c: {"min": min(v), "median": float(np.median(v)), "max": max(v)}
                                             for c, v in chosen.items()}
        out["nested"]["repetitions"] = nested
    return out, reps


def zero_shot_cv(data: Sequence[Embedded], folds: int, seed: int = SEED) -> dict[str, Any]:
    """The base model's own labels (no head) with thresholds chosen the same way, for comparison."""
    idx = list(range(len(data)))
    # scores need no fitting: the "out-of-fold" scores are the scores themselves
    rep = {i: np.concatenate([data[i].zero_shot, np.zeros((len(data[i].zero_shot), 1), np.float32)], axis=1)
           for i in idx}
    thr = choose_thresholds(data, [rep], 1)
    at_half = {c: 0.5 for c in THREAT_CLASSES}
    return {"thresholds_tuned_in_sample": thr,
            "tuned_in_sample": clip_metrics(clip_scores(data, rep, thr, 1), thr),
            "at_0.5": clip_metrics(clip_scores(data, rep, at_half, 1), at_half)}


# --- writing the head, the report and the card -------------------------------------------------------


def head_onnx_bytes(head: Head, input_name: str = "embedding", output_name: str = "probabilities") -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d, k = head.w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["logits_mm"]),
         helper.make_node("Add", ["logits_mm", "B"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], [output_name])],
        "sentinela-threat-head",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", k])],
        initializer=[numpy_helper.from_array(head.w.astype(np.float32), "W"),
                     numpy_helper.from_array(head.b.astype(np.float32), "B")],
        doc_string="One-vs-rest logistic regressions on the base model's embedding; columns: "
                   + ", ".join(HEAD_CLASSES),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="sentinela-train", producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def check_onnx(blob: bytes, head: Head, x: np.ndarray) -> float:
    """Largest |ONNX - numpy| probability on ``x``: the exported graph must compute what CV measured."""
    import onnxruntime as ort

    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    return float(np.abs(got - head.predict(x)).max())


def update_card(
    card_path: Path, head_path: Path, thresholds: Mapping[str, float], stores: Mapping[str, float],
    min_windows: int, operating: Mapping[str, Mapping[str, Any]],
) -> None:
    """Set the card's head and per-threat thresholds; every other key is kept as it is."""
    raw = json.loads(card_path.read_text(encoding="utf-8"))
    rel = os.path.relpath(head_path.resolve(), card_path.resolve().parent)
    # The card names the columns a threat rule reads (the loader accepts threat classes only); the sixth
    # column, background, is last and only the report and training use it.
    raw["head"] = {"path": Path(rel).as_posix(), "input": "embedding", "output": "probabilities",
                   "classes": list(THREAT_CLASSES)}
    threats = raw.setdefault("threats", {})
    for c in THREAT_CLASSES:
        rule = threats.setdefault(c, {})
        rule["store"] = stores[c]
        rule["alert"] = thresholds[c]
        rule["min_windows"] = min_windows
        rule["operating_point"] = dict(operating[c])
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, card_path)


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _table(m: Mapping[str, Any]) -> list[str]:
    lines = ["| class | n | ROC AUC | precision | recall |", "|---|---|---|---|---|"]
    for c, v in m["classes"].items():
        lines.append(f"| {c} | {_fmt(v['n'], '.0f')} | {_fmt(v['auc'])} | {_fmt(v['precision'])} | "
                     f"{_fmt(v['recall'])} |")
    lines.append("")
    lines.append(f"Six-way accuracy **{_fmt(m['accuracy'])}**, macro recall **{_fmt(m['macro_recall'])}**, "
                 f"background clips alerting **{_fmt(m['background_false_alarm_rate'])}** "
                 f"(**{_fmt(m['false_alarms_per_hour'], '.1f')}** false alarms per hour of background "
                 "audio).")
    return lines


def _confusion(m: Mapping[str, Any], key: str) -> list[str]:
    labels = m["confusion_labels"]
    lines = ["| truth \\ decision | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for t in labels:
        lines.append(f"| {t} | " + " | ".join(str(m[key][t][p]) for p in labels) + " |")
    return lines


def render_report(rep: Mapping[str, Any]) -> str:
    main, noaug = rep["cv"]["with_augmentation"], rep["cv"]["without_augmentation"]
    honest = "nested" in main
    m_main = main["nested"] if honest else main["tuned"]
    m_noaug = noaug["nested"] if honest else noaug["tuned"]
    inner = main["nested"]["inner_thresholds"] if honest else {}
    lines = [
        "# Threat head: training report",
        "",
        "A one-vs-rest logistic-regression head on BirdNET V2.4's 1024-d embedding, for the five threats "
        "and background. Generated by `sentinela train`; the figures below are from cross-validation "
        "grouped by source recording (clips of one recording never straddle train and test), never from "
        "clips a model was fitted to.",
        "",
        f"- data: `{rep['data']['dir']}`, {rep['data']['clips']} clips ({rep['data']['per_label']}), "
        f"{rep['data']['groups']} source recordings; manifest sha256 `{rep['data']['manifest_sha256']}` "
        "(sha256 of the sorted `relative path  file sha256` lines)",
        f"- skipped (unreadable): {len(rep['data']['skipped'])}"
        + "".join(f"\n  - `{s['file']}`: {s['reason']}" for s in rep["data"]["skipped"]),
        f"- base model: `{rep['base_model']['id']}`, `{rep['base_model']['key']}`",
        f"- head: `{rep['head']['path']}` ({rep['head']['bytes']} bytes, sha256 `{rep['head']['sha256']}`); "
        f"graph `embedding[batch,1024] -> MatMul -> Add -> Sigmoid -> probabilities[batch,6]`, columns "
        f"{', '.join(HEAD_CLASSES)}; |ONNX - numpy| <= {rep['head']['onnx_max_abs_diff']:.1e}",
        f"- recipe: `{json.dumps(rep['config'])}`",
        f"- CV: {main['folds']}-fold StratifiedGroupKFold x {main['repeats']} repetitions (seeds {SEED}+r)",
        "",
        "## Reproduce",
        "",
        "```",
        rep["command"],
        "```",
        "",
        rep["reproducibility"],
        "",
        "## Thresholds (written into the card)",
        "",
        "| class | store | alert | min_windows | CV recall | CV precision | background clips alerting | "
        "false alarms / h |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in THREAT_CLASSES:
        op = rep["operating_points"][c]
        lines.append(f"| {c} | {rep['stores'][c]} | {rep['thresholds'][c]} | {rep['config']['min_windows']} "
                     f"| {_fmt(op['recall'])} | {_fmt(op['precision'])} "
                     f"| {_fmt(op['background_false_alarm_rate'])} "
                     f"| {_fmt(op['background_false_alarms_per_hour'], '.1f')} |")
    lines += [
        "",
        "Alert thresholds: per class, the middle of the plateau where `recall - 3 x (background clips "
        "alerting) - (other-threat clips alerting)` is within 0.02 of its best, over the out-of-fold clip "
        "scores of every repetition. Taking the middle of the gap rather than its edge is the robust choice "
        "for recordings the set does not contain. Store thresholds are half the alert threshold (detections "
        "worth recording for review, well below what pages a ranger).",
        "",
        "## Cross-validated figures",
        "",
        f"The committed head is trained **{'with' if rep['config']['augment'] else 'without'} augmentation**; "
        "both recipes are cross-validated on the same folds.",
        "",
        "### Honest: nested CV, with augmentation" if honest
        else "### With augmentation (nested CV skipped: thresholds tuned on these scores, optimistic)",
        "",
        "Thresholds chosen by an inner grouped CV inside each outer training part, applied to the outer "
        "test fold: the figures of the whole procedure on recordings it never saw." if honest else "",
        "",
        *_table(m_main),
        "",
        *_confusion(m_main, "confusion_summed_over_repetitions"),
        "",
        f"(confusion summed over {main['repeats']} repetitions"
        + ("; inner thresholds ranged " + ", ".join(f"{c} {v['min']:.2f}-{v['max']:.2f}" for c, v in inner.items())
           if inner else "")
        + ")",
        "",
        "### Nested CV, without augmentation" if honest else "### Without augmentation",
        "",
        *_table(m_noaug),
        "",
        "### At thresholds chosen on these same out-of-fold scores (slightly optimistic; the committed "
        "thresholds are those of the committed recipe)",
        "",
        "With augmentation:",
        "",
        *_table(main["tuned"]),
        "",
        "Without augmentation:",
        "",
        *_table(noaug["tuned"]),
        "",
        "### At a fixed 0.5 (no threshold tuning at all), without augmentation",
        "",
        *_table(noaug["at_0.5"]),
        "",
        "### For comparison: the base model's own labels, no head (zero-shot, not cross-validated: "
        "nothing is fitted except thresholds, chosen in-sample)",
        "",
        *_table(rep["zero_shot"]["tuned_in_sample"]),
        "",
    ]
    if rep.get("variants"):
        lines += ["## What else was tried (nested grouped CV, same folds)", "",
                  "| variant | min AUC | macro recall | background alerting | FA / h | accuracy |",
                  "|---|---|---|---|---|---|"]
        for name, v in rep["variants"].items():
            m = v["nested"]
            aucs = [x["auc"] for x in m["classes"].values() if x["auc"] is not None]
            lines.append(f"| {name} | {_fmt(min(aucs) if aucs else None)} | {_fmt(m['macro_recall'])} | "
                         f"{_fmt(m['background_false_alarm_rate'])} | "
                         f"{_fmt(m['false_alarms_per_hour'], '.1f')} | "
                         f"{_fmt(m['accuracy'])} |")
        lines.append("")
    lines += rep.get("notes_md", [])
    lines += RETRAIN_SECTION
    return "\n".join(lines) + "\n"


RETRAIN_SECTION = [
    "## Retraining on your own clips",
    "",
    "A deployment hears its own forest, its own chainsaws and its own roads; the head is cheap to retrain on "
    "them (minutes on a laptop; the base model is not touched).",
    "",
    "1. Collect labelled clips into one folder per label: `gunshot/ chainsaw/ engine/ human_voice/ dog/ "
    "background/` (any other folder name is refused, with the allowed list). WAV, FLAC, OGG or MP3, any "
    "sample rate, mono or stereo, any length: the production front-end reads them.",
    "2. Rangers' verdicts are labels. When a ranger answers an alert with \"false alarm\", that clip (its "
    "`clips/<site>/<device>/<time>` object) goes into `background/` (or into the right threat's folder when "
    "the ranger says what it really was); a confirmed alert goes into its threat's folder. False alarms from the "
    "deployment's own site are the most valuable negatives there are: they are exactly what the head gets "
    "wrong. Keep the clips of one long recording, or of one incident, recognisable by name "
    "(`<name>_tSTART-END.<ext>` cuts are grouped), or add a `MANIFEST.csv` with "
    "`file,source_repo,source_path` columns: clips of one source are kept in one cross-validation fold.",
    "3. Keep the original development clips in the folders too, unless you have many of your own: a few "
    "dozen local clips plus the development set beats either alone.",
    "4. Train and write the head, its report and the thresholds into a copy of the card, then evaluate and "
    "compare with the current card before switching:",
    "",
    "   ```",
    "   SENTINELA_THREADS=2 .venv/bin/sentinela train clips/ \\",
    "       --out site/threat_head.onnx --card site/card.json",
    "   .venv/bin/sentinela eval held_out_clips/ --card site/card.json \\",
    "       --json site/eval.json --plots site/plots",
    "   ```",
    "",
    "   (`site/card.json` is a copy of `models/card.json` whose `model` paths point at the base model.) Read "
    "the nested-CV figures in the new `TRAINING_REPORT.md`: if a class's recall or the background "
    "false-alarm rate got worse than the committed head's, find out why before deploying (usually: too few "
    "clips of that class, or a recording that dominates it).",
    "5. Deploy the new `threat_head.onnx` and card with the model layer; every alert records the card it was "
    "decided with.",
    "",
    "Embeddings are cached per file sha256 under `.cache/embeddings/`, so adding clips re-embeds only the "
    "new ones.",
]


def _operating(
    data: Sequence[Embedded], reps: Sequence[Mapping[int, np.ndarray]], thr: Mapping[str, float],
    min_windows: int,
) -> dict[str, dict[str, Any]]:
    runs = [clip_metrics(clip_scores(data, rep, thr, min_windows), thr) for rep in reps]
    m = _mean_metrics(runs)
    bg_hours = m["background_hours"]
    out: dict[str, dict[str, Any]] = {}
    for c in THREAT_CLASSES:
        fa = []
        for rep in reps:
            fa.append(sum(1 for i, p in rep.items() if data[i].clip.label == BACKGROUND
                          and int((p[:, THREAT_CLASSES.index(c)] >= thr[c]).sum()) >= min_windows))
        rate = float(np.mean(fa)) / max(1, sum(1 for e in data if e.clip.label == BACKGROUND))
        per_hour = round(float(np.mean(fa)) / bg_hours, 2) if bg_hours else None
        out[c] = {"recall": m["classes"][c]["recall"], "precision": m["classes"][c]["precision"],
                  "background_false_alarm_rate": round(rate, 4),
                  "background_false_alarms_per_hour": per_hour,
                  "source": "grouped cross-validation (out-of-fold clip scores), see TRAINING_REPORT.md"}
    return out


# --- the command -------------------------------------------------------------------------------------


def run_training(args: argparse.Namespace) -> int:
    from .config import default_card_path
    from .model import ModelError

    t0 = time.perf_counter()
    card_path = Path(args.card) if args.card else default_card_path()
    try:
        clips = scan_dataset(args.dir)
        card = load_card(card_path)
        model = embedding_model(card, args.threads)
    except (DatasetError, CardError, ModelError, TrainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else card_path.parent / "threat_head.onnx"
    cache = None if args.no_cache else Path(args.cache) / _model_key(card)
    data, skipped = embed_dataset(model, clips, cache)
    present = {e.clip.label for e in data}
    if BACKGROUND not in present or len(present) < 2:
        print(f"error: need readable background clips and at least one threat class; have {sorted(present)}",
              file=sys.stderr)
        return 2
    _log(f"embedded {len(data)} clips ({sum(len(e.emb) for e in data)} windows) in "
         f"{time.perf_counter() - t0:.0f} s; skipped {len(skipped)}")
    cfg = Config(c=args.c, min_windows=args.min_windows, augment=args.augment)
    aug = build_augmentations(model, data, cfg, cache)
    _log(f"{len(aug.emb)} augmented windows ({time.perf_counter() - t0:.0f} s)")
    try:
        cv_aug, reps_aug = cross_validate(data, aug, replace(cfg, augment=True), folds=args.folds,
                                          repeats=args.repeats, nested=args.nested_repeats)
        _log(f"CV with augmentation done ({time.perf_counter() - t0:.0f} s)")
        cv_plain, reps_plain = cross_validate(data, aug, replace(cfg, augment=False), folds=args.folds,
                                              repeats=args.repeats, nested=args.nested_repeats)
        _log(f"CV without augmentation done ({time.perf_counter() - t0:.0f} s)")
        variants: dict[str, Any] = {}
        if args.compare:
            for name, v in VARIANTS.items():
                variants[name] = cross_validate(data, aug, v(cfg), folds=args.folds, repeats=args.repeats,
                                                nested=args.nested_repeats)[0]
                _log(f"variant {name} done ({time.perf_counter() - t0:.0f} s)")
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = cv_aug if cfg.augment else cv_plain
    thr = chosen["thresholds"]
    stores = {c: round(thr[c] / 2, 3) for c in THREAT_CLASSES}
    idx = list(range(len(data)))
    reps = reps_aug if cfg.augment else reps_plain
    operating = _operating(data, reps, thr, cfg.min_windows)
    head = train_head(data, idx, aug, cfg)
    blob = head_onnx_bytes(head)
    diff = check_onnx(blob, head, np.concatenate([e.emb for e in data]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    shas = {e.clip.rel: e.sha256 for e in data}
    per_label = {lab: sum(1 for e in data if e.clip.label == lab) for lab in LABELS}
    command = ("SENTINELA_THREADS=2 .venv/bin/sentinela train " + str(args.dir)
               + (f" --out {args.out}" if args.out else "") + (f" --card {args.card}" if args.card else "")
               + ("" if cfg.c == 0.1 else f" --c {cfg.c}") + (" --augment" if cfg.augment else "")
               + ("" if args.folds == 5 else f" --folds {args.folds}")
               + ("" if args.repeats == 3 else f" --repeats {args.repeats}")
               + ("" if args.nested_repeats == 1 else f" --nested-repeats {args.nested_repeats}")
               + (" --compare" if args.compare else ""))
    report: dict[str, Any] = {
        "generated_by": "sentinela train",
        "command": command,
        "reproducibility": REPRODUCIBILITY,
        "data": {"dir": str(args.dir), "clips": len(data), "per_label": per_label,
                 "groups": len({e.clip.group for e in data}), "manifest_sha256": manifest_hash(clips, shas),
                 "skipped": skipped, "windows": int(sum(len(e.emb) for e in data)),
                 "augmented_windows": len(aug.emb)},
        "base_model": {"id": card.id, "key": _model_key(card)},
        "head": {"path": out.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                 "classes": list(HEAD_CLASSES), "onnx_max_abs_diff": diff},
        "config": cfg.describe(),
        "thresholds": thr,
        "stores": stores,
        "operating_points": operating,
        "cv": {"with_augmentation": cv_aug, "without_augmentation": cv_plain},
        "zero_shot": zero_shot_cv(data, args.folds),
        "variants": variants,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    notes = Path(args.notes) if args.notes else None
    if notes is not None and notes.is_file():
        report["notes_md"] = notes.read_text(encoding="utf-8").splitlines()
    (out.parent / "training_report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out.parent / "TRAINING_REPORT.md").write_text(render_report(report), encoding="utf-8")
    try:
        update_card(card_path, out, thr, stores, cfg.min_windows, operating)
    except (OSError, ValueError) as exc:
        print(f"error: could not update the card {card_path}: {exc}", file=sys.stderr)
        return 2
    n = chosen["nested"] if "nested" in chosen else chosen["tuned"]
    print(f"wrote {out} ({len(blob)} bytes), {out.parent / 'TRAINING_REPORT.md'}, updated {card_path}")
    kind = "nested" if "nested" in chosen else "tuned"
    print(f"grouped CV ({kind}): macro recall {_fmt(n['macro_recall'])}, "
          f"accuracy {_fmt(n['accuracy'])}, background alerting {_fmt(n['background_false_alarm_rate'])}, "
          f"thresholds " + ", ".join(f"{c} {t}" for c, t in thr.items()))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): " + ", ".join(s["file"] for s in skipped))
    return 0


REPRODUCIBILITY = (
    "Fixed seeds throughout (CV folds, augmentation mixes). Given the same embeddings the head is a "
    "deterministic function of them; the embeddings themselves come from onnxruntime and can differ in the "
    "last bits between machines or thread counts."
)

VARIANTS: dict[str, Callable[[Config], Config]] = {
    "no multiple-instance step (every window of a threat clip positive)": lambda c: replace(c, mil=False),
    "C = 1.0 (weaker regularisation)": lambda c: replace(c, c=1.0),
    "C = 0.01 (stronger regularisation)": lambda c: replace(c, c=0.01),
    "min_windows = 2 (two alerting windows per clip)": lambda c: replace(c, min_windows=2),
}


def register(subparsers: Any) -> None:
    t = subparsers.add_parser(
        "train", help="train the threat head on labelled folders (<label>/ clips)",
        description=f"Train the threat head on DIR/<label>/ clips (labels: {', '.join(LABELS)}), choose the "
                    "alert thresholds by grouped cross-validation, write the head ONNX, its report, and the "
                    "head and thresholds into the model card.",
    )
    t.add_argument("dir", help="folder with <label>/ sub-folders")
    t.add_argument("--out", help="head ONNX to write (default: threat_head.onnx beside the card); the report "
                                 "is written beside it")
    t.add_argument("--card", help="model card to read the base model from and to update "
                                  "(default models/card.json)")
    t.add_argument("--cache", default=".cache/embeddings",
                   help="embedding cache folder (default .cache/embeddings)")
    t.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--c", type=float, default=0.1, help="inverse L2 regularisation strength (default 0.1)")
    t.add_argument("--min-windows", type=int, default=1, help="alerting windows a clip needs (default 1)")
    t.add_argument("--augment", action="store_true",
                   help="train the written head with the augmented mixes (both are cross-validated either way)")
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--nested-repeats", type=int, default=1,
                   help="repetitions of the nested CV (default 1; 0 skips it: faster, less honest figures)")
    t.add_argument("--compare", action="store_true", help="also cross-validate the variants that were tried")
    t.add_argument("--notes", help="markdown lines to include in the report (findings, caveats)")
    t.set_defaults(fn=run_training)
