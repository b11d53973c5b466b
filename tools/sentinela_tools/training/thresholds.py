"""Alert thresholds from out-of-fold clip scores, and the figures at a set of thresholds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sentinela_tools.classes import THREAT_CLASSES
from sentinela_tools.evaluate import BACKGROUND, ClipScore, clip_metrics

BG_WEIGHT = 3.0  # a background clip that alerts costs three missed threats: rangers stop reading floods
OTHER_WEIGHT = 1.0  # a clip of another threat alerting for this class (a chainsaw read as an engine)
PLATEAU = 0.01  # thresholds within this of the best objective are equally good; take the middle
QUIET_BUDGET = 0.03  # the quiet operating point: at most this fraction of background clips alert
T_MIN, T_MAX = 0.05, 0.99


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _candidates(s: np.ndarray) -> np.ndarray:
    u = np.unique(np.clip(s, T_MIN, T_MAX))
    mids = (u[1:] + u[:-1]) / 2 if len(u) > 1 else u
    return np.unique(np.concatenate((mids, [T_MIN, T_MAX])))


def choose_thresholds(scores: np.ndarray, labels: Sequence[str],
                      classes: Sequence[str] = THREAT_CLASSES) -> dict[str, float]:
    """Per class, the middle (in log-odds) of the plateau of thresholds that maximise
    ``recall - 3 x background clips alerting - other-threat clips alerting`` over the given clip scores."""
    lab = np.asarray(labels)
    out: dict[str, float] = {}
    for j, c in enumerate(classes):
        s = scores[:, j]
        pos, bg, other = s[lab == c], s[lab == BACKGROUND], s[(lab != c) & (lab != BACKGROUND)]
        if not len(pos):
            out[c] = T_MAX
            continue
        t = _candidates(s)
        j_t = ((pos[None, :] >= t[:, None]).mean(axis=1)
               - BG_WEIGHT * ((bg[None, :] >= t[:, None]).mean(axis=1) if len(bg) else 0.0)
               - OTHER_WEIGHT * ((other[None, :] >= t[:, None]).mean(axis=1) if len(other) else 0.0))
        best = int(np.argmax(j_t))
        ok = j_t >= j_t[best] - PLATEAU
        lo = hi = best
        while lo > 0 and ok[lo - 1]:
            lo -= 1
        while hi + 1 < len(t) and ok[hi + 1]:
            hi += 1
        out[c] = round(min(T_MAX, max(T_MIN, _sigmoid((_logit(t[lo]) + _logit(t[hi])) / 2))), 3)
    return out


def quiet_thresholds(scores: np.ndarray, labels: Sequence[str], balanced: Mapping[str, float],
                     classes: Sequence[str] = THREAT_CLASSES) -> dict[str, float]:
    """Per class the lowest threshold (never below the balanced one) at which at most QUIET_BUDGET / 5 of
    background clips alert for it: summed over the classes, at most QUIET_BUDGET alert (an upper bound)."""
    lab = np.asarray(labels)
    per = QUIET_BUDGET / len(classes)
    out: dict[str, float] = {}
    for j, c in enumerate(classes):
        bg = np.sort(scores[lab == BACKGROUND, j])[::-1]
        allowed = math.floor(per * len(bg))
        need = float(bg[allowed]) + 1e-4 if len(bg) > allowed else 0.0
        out[c] = min(T_MAX, max(balanced[c], math.ceil(need * 1000) / 1000))  # up: 0.9501 must not become 0.95
    return out


def at_recall(scores: np.ndarray, labels: Sequence[str], recall: float,
              classes: Sequence[str] = THREAT_CLASSES) -> dict[str, float]:
    """Per class the highest threshold that still reaches ``recall`` on these clips (for comparing recipes
    at the same recall; not a threshold to ship: it is chosen on the clips it is measured on)."""
    lab = np.asarray(labels)
    out: dict[str, float] = {}
    for j, c in enumerate(classes):
        pos = np.sort(scores[lab == c, j])[::-1]
        out[c] = float(pos[max(0, math.ceil(recall * len(pos)) - 1)]) if len(pos) else 1.0
    return out


def to_clip_scores(scores: np.ndarray, labels: Sequence[str], rels: Sequence[str], durations: Sequence[float],
                   thresholds: Sequence[Mapping[str, float]] | Mapping[str, float],
                   classes: Sequence[str] = THREAT_CLASSES) -> list[ClipScore]:
    """ClipScores for ``clip_metrics``; ``thresholds`` is one mapping, or one per clip."""
    out = []
    for n in range(len(labels)):
        thr = thresholds[n] if isinstance(thresholds, Sequence) else thresholds
        ms = {c: float(scores[n, j]) for j, c in enumerate(classes)}
        out.append(ClipScore(rels[n], labels[n], float(durations[n]), ms, {c: ms[c] >= thr[c] for c in classes}))
    return out


def metrics_at(scores: np.ndarray, labels: Sequence[str], rels: Sequence[str], durations: Sequence[float],
               thresholds: Sequence[Mapping[str, float]] | Mapping[str, float]) -> dict[str, Any]:
    """clip_metrics (AUC, precision, recall, six-way accuracy, background alerting) at these thresholds.
    With one mapping per clip, the ``alert`` column is the mean threshold."""
    cs = to_clip_scores(scores, labels, rels, durations, thresholds)
    if isinstance(thresholds, Sequence):
        mean = {c: float(np.mean([t[c] for t in thresholds])) for c in THREAT_CLASSES}
        m = clip_metrics(cs, mean)
    else:
        m = clip_metrics(cs, thresholds)
    aucs = [v["auc"] for v in m["classes"].values() if v["auc"] is not None]
    m["min_auc"] = min(aucs) if aucs else None
    return m
