"""The headline evaluation: every figure is measured on source datasets the head was not fitted on.

- Leave one source dataset out: each source (a dataset's recorders, places and editing) is held out
  whole in turn; the head is fitted on all the others and scores the held-out clips. Every clip thus gets
  one out-of-fold clip score per class from a head that never heard its source.
- Honest operating point: the clips of a held-out source are judged at thresholds chosen on the
  out-of-fold scores of the *other* sources' clips, so no threshold is chosen on the clips it is
  reported on.
- Folder to folder: fitted on one folder, scored on the other folder's clips whose source the first
  folder does not hold (shared sources are left out of the score, or they would flatter it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..card import THREAT_CLASSES
from ..evaluate import BACKGROUND
from .embed import Embedded, Mixes
from .fit import Prior, clip_scores, fit_head
from .progress import Progress
from .recipe import Recipe
from .thresholds import at_recall, choose_thresholds, metrics_at

FALLBACK_FOLDS = 5
MATCHED_RECALL = 0.9


@dataclass
class CrossSource:
    recipe: Recipe
    oof: np.ndarray  # [clips, threats] out-of-fold clip scores
    fold_of: list[str]  # the held-out unit of each clip (its source, or "fold N" in the fallback)
    scheme: str  # "leave-one-source-out" | "grouped folds (one source only)"
    honest: dict[str, Any] = field(default_factory=dict)  # metrics at thresholds chosen without the unit
    matched: dict[str, Any] = field(default_factory=dict)  # background alerting at equal recall
    per_source: dict[str, dict[str, Any]] = field(default_factory=dict)
    folder_to_folder: dict[str, Any] = field(default_factory=dict)


def _units(data: Sequence[Embedded]) -> tuple[list[str], str]:
    sources = sorted({e.source for e in data})
    if len(sources) >= 2:
        return [e.source for e in data], "leave-one-source-out"
    # One source only (a deployment's own first export, the tests): folds grouped by recording, which
    # flatters; the report says so.
    groups = sorted({e.clip.group for e in data})
    rng = np.random.default_rng(20240)
    order = rng.permutation(len(groups))
    fold = {g: f"fold {int(order[n]) % FALLBACK_FOLDS + 1}" for n, g in enumerate(groups)}
    return [fold[e.clip.group] for e in data], "grouped folds (one source only)"


def _describe(data: Sequence[Embedded]) -> tuple[list[str], list[str], list[float]]:
    return [e.label for e in data], [e.clip.rel for e in data], [e.duration_s for e in data]


def leave_one_source_out(data: Sequence[Embedded], mixes: Mixes | None, r: Recipe,
                         tick: Callable[[], None] | None = None, prior: Prior | None = None) -> CrossSource:
    units, scheme = _units(data)
    oof = np.zeros((len(data), len(THREAT_CLASSES)))
    for u in sorted(set(units)):
        test = [i for i, v in enumerate(units) if v == u]
        train = [i for i, v in enumerate(units) if v != u]
        labels = {data[i].label for i in train}
        if BACKGROUND not in labels or len(labels) < 2:
            oof[test] = 0.0  # nothing to fit on: the clips score nothing (counted as misses)
        else:
            oof[test] = clip_scores(fit_head(data, train, mixes, r, prior=prior), data, test)
        if tick:
            tick()
    cs = CrossSource(r, oof, units, scheme)
    score_cross_source(cs, data)
    return cs


def score_cross_source(cs: CrossSource, data: Sequence[Embedded]) -> None:
    labels, rels, durs = _describe(data)
    lab = np.asarray(labels)
    per_clip: list[dict[str, float]] = [{}] * len(data)
    for u in sorted(set(cs.fold_of)):
        inside = np.array([v == u for v in cs.fold_of])
        thr = choose_thresholds(cs.oof[~inside], list(lab[~inside]))
        for i in np.flatnonzero(inside):
            per_clip[int(i)] = thr
    cs.honest = metrics_at(cs.oof, labels, rels, durs, per_clip)
    matched = at_recall(cs.oof, labels, MATCHED_RECALL)
    m = metrics_at(cs.oof, labels, rels, durs, matched)
    cs.matched = {"recall": MATCHED_RECALL, "thresholds": matched,
                  "background_false_alarm_rate": m["background_false_alarm_rate"],
                  "false_alarms_per_hour": m["false_alarms_per_hour"],
                  "background_alerting_clips": m["background_alerting_clips"]}
    per: dict[str, dict[str, Any]] = {}
    for n, u in enumerate(cs.fold_of):
        row = per.setdefault(u, {"clips": 0, **{c: [0, 0] for c in (*THREAT_CLASSES, BACKGROUND)}})
        row["clips"] += 1
        thr = per_clip[n]
        alerts = [c for j, c in enumerate(THREAT_CLASSES) if cs.oof[n, j] >= thr[c]]
        cell = row[labels[n]]
        cell[1] += 1
        if labels[n] == BACKGROUND:
            cell[0] += int(bool(alerts))
        else:
            cell[0] += int(labels[n] in alerts)
    cs.per_source = per


def folder_to_folder(data: Sequence[Embedded], mixes: Mixes | None, r: Recipe, oof: np.ndarray,
                     tick: Callable[[], None] | None = None, prior: Prior | None = None) -> dict[str, Any]:
    """Fit on one folder, score the other's clips from sources the first does not hold. Thresholds: chosen
    on the fitting folder's own leave-one-source-out scores (``oof`` restricted to it)."""
    folders = sorted({e.folder for e in data})
    out: dict[str, Any] = {}
    if len(folders) < 2:
        return out
    labels, rels, durs = _describe(data)
    lab = np.asarray(labels)
    for a in folders:
        train = [i for i, e in enumerate(data) if e.folder == a]
        seen = {data[i].source for i in train}
        for b in folders:
            if a == b:
                continue
            test = [i for i, e in enumerate(data) if e.folder == b and e.source not in seen]
            key = f"{a} -> {b}"
            if not test or BACKGROUND not in {data[i].label for i in train}:
                out[key] = None
                continue
            head = fit_head(data, train, mixes, r, prior=prior)
            s = clip_scores(head, data, test)
            thr = choose_thresholds(oof[train], list(lab[train]))
            m = metrics_at(s, [labels[i] for i in test], [rels[i] for i in test], [durs[i] for i in test], thr)
            m["thresholds"] = thr
            m["left_out_shared_sources"] = sorted({e.source for e in data if e.folder == b and e.source in seen})
            out[key] = m
            if tick:
                tick()
    return out


def run(data: Sequence[Embedded], mixes: Mixes | None, r: Recipe, what: str,
        prior: Prior | None = None) -> CrossSource:
    n_units = len(set(_units(data)[0]))
    n_folders = len({e.folder for e in data})
    prog = Progress(n_units + (n_folders * (n_folders - 1) if n_folders > 1 else 0), what)
    cs = leave_one_source_out(data, mixes, r, prog.step, prior)
    cs.folder_to_folder = folder_to_folder(data, mixes, r, cs.oof, prog.step, prior)
    prog.close()
    return cs


def zero_shot(data: Sequence[Embedded]) -> CrossSource:
    """The base model's own threat labels, no head: nothing is fitted, so every clip is out of sample."""
    oof = np.array([e.zero_shot[e.signal].max(axis=0) if e.signal.any() else np.zeros(len(THREAT_CLASSES))
                    for e in data])
    units, scheme = _units(data)
    cs = CrossSource(Recipe(name="the base model's own labels (no head)", plain=True), oof, units, scheme)
    score_cross_source(cs, data)
    return cs
