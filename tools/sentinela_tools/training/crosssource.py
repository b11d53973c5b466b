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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sentinela_tools.classes import THREAT_CLASSES
from sentinela_tools.evaluate import BACKGROUND, roc_auc
from sentinela_tools.progress import Stage
from sentinela_tools.training.embed import Embedded, Mixes
from sentinela_tools.training.fit import (
    BLEND_GRID,
    HEAD_CLASSES,
    Prior,
    base_logits,
    clip_matrix,
    fit_head,
    window_probs,
)
from sentinela_tools.training.recipe import Recipe
from sentinela_tools.training.thresholds import at_recall, choose_thresholds, metrics_at

FALLBACK_FOLDS = 5
MATCHED_RECALL = 0.9
# A share below 1 must rank the class better than the head alone by this much ROC AUC: the blend is a
# choice made on other sources, and a tiny gain there is noise that a new source does not repeat.
BLEND_MARGIN = 0.005


@dataclass
class CrossSource:
    recipe: Recipe
    oof: np.ndarray  # [clips, threats] out-of-fold clip scores (with the blend chosen on all of them)
    fold_of: list[str]  # the held-out unit of each clip (its source, or "fold N" in the fallback)
    scheme: str  # "leave-one-source-out" | "grouped folds (one source only)"
    win: list[np.ndarray] = field(default_factory=list)  # out-of-fold window probabilities per clip
    honest: dict[str, Any] = field(default_factory=dict)  # metrics at thresholds chosen without the unit
    honest_scores: np.ndarray | None = None  # [clips, threats] as judged (blend chosen without the unit)
    honest_thresholds: list[dict[str, float]] = field(default_factory=list)  # per clip
    matched: dict[str, Any] = field(default_factory=dict)  # background alerting at equal recall
    per_source: dict[str, dict[str, Any]] = field(default_factory=dict)
    folder_to_folder: dict[str, Any] = field(default_factory=dict)
    blend: dict[str, float] | None = None  # per class, the head's share (chosen on every clip's OOF scores)
    blend_range: dict[str, list[float]] | None = None  # what each held-out unit's choice ranged over
    # With a blend: each share's clip scores [clips, threats], and each clip's base-model logits per window
    # (folder_to_folder chooses its own share on them)
    blend_grid: dict[float, np.ndarray] | None = None
    base_win: list[np.ndarray] | None = None


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
    k = len(HEAD_CLASSES)
    win: list[np.ndarray] = [np.zeros((0, k), np.float32)] * len(data)
    for u in sorted(set(units)):
        test = [i for i, v in enumerate(units) if v == u]
        train = [i for i, v in enumerate(units) if v != u]
        labels = {data[i].label for i in train}
        # With nothing to fit on (no background, one class) the clips score nothing: counted as misses.
        if BACKGROUND in labels and len(labels) >= 2:
            for i, p in zip(test, window_probs(fit_head(data, train, mixes, r, prior=prior), data, test),
                            strict=True):
                win[i] = p
        if tick:
            tick()
    return CrossSource(r, clip_matrix(win, None, None), units, scheme, win=win)


def _choose_blend(grid: Mapping[float, np.ndarray], labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per class the head's share whose clip scores rank that class best (ROC AUC) on the masked clips;
    the base model must earn its place: a smaller share has to beat the best so far by BLEND_MARGIN."""
    out = np.ones(len(THREAT_CLASSES))
    for j, c in enumerate(THREAT_CLASSES):
        best = -1.0
        for a in BLEND_GRID:  # from 1 down: a tie keeps the earlier, larger share
            s = grid[a][:, j]
            auc = roc_auc(list(s[mask & (labels == c)]), list(s[mask & (labels != c)]))
            if auc is not None and auc > best + (BLEND_MARGIN if a < 1.0 else 0.0):
                best, out[j] = auc, a
    return out


def _assemble(grid: Mapping[float, np.ndarray], a: np.ndarray) -> np.ndarray:
    return np.stack([grid[float(a[j])][:, j] for j in range(len(THREAT_CLASSES))], axis=1)


def apply_blend(cs: CrossSource, data: Sequence[Embedded], rows: Prior) -> None:
    """Choose each class's blend with the base model's own label logit on the cross-source scores: the
    final share on every clip's out-of-fold scores, and for the honest figures, each held-out unit's
    share (and thresholds) on the other units' clips only."""
    zwin = [base_logits(e.emb[e.signal], rows.w, rows.b) for e in data]
    grid = {a: clip_matrix(cs.win, zwin, np.full(len(THREAT_CLASSES), a)) for a in BLEND_GRID}
    labels = np.asarray([e.label for e in data])
    units = np.asarray(cs.fold_of)
    final = _choose_blend(grid, labels, np.ones(len(data), dtype=bool))
    cs.oof = _assemble(grid, final)
    cs.blend = {c: float(final[j]) for j, c in enumerate(THREAT_CLASSES)}
    by_unit = {u: _choose_blend(grid, labels, units != u) for u in sorted(set(cs.fold_of))}
    cs.blend_range = {c: sorted({float(a[j]) for a in by_unit.values()}) for j, c in enumerate(THREAT_CLASSES)}
    score_cross_source(cs, data, lambda u: _assemble(grid, by_unit[u]))
    cs.blend_grid, cs.base_win = grid, zwin


def score_cross_source(cs: CrossSource, data: Sequence[Embedded],
                       per_unit: Callable[[str], np.ndarray] | None = None) -> None:
    """Honest figures: each unit's clips judged with thresholds (and, via ``per_unit``, scores) chosen on
    the other units' out-of-fold scores."""
    labels, rels, durs = _describe(data)
    lab = np.asarray(labels)
    per_clip: list[dict[str, float]] = [{}] * len(data)
    judged = np.zeros_like(cs.oof)
    for u in sorted(set(cs.fold_of)):
        inside = np.array([v == u for v in cs.fold_of])
        m = per_unit(u) if per_unit is not None else cs.oof
        thr = choose_thresholds(m[~inside], list(lab[~inside]))
        judged[inside] = m[inside]
        for i in np.flatnonzero(inside):
            per_clip[int(i)] = thr
    cs.honest_scores, cs.honest_thresholds = judged, per_clip
    cs.honest = metrics_at(judged, labels, rels, durs, per_clip)
    matched = at_recall(judged, labels, MATCHED_RECALL)
    at_r = metrics_at(judged, labels, rels, durs, matched)
    cs.matched = {"recall": MATCHED_RECALL, "thresholds": matched,
                  "background_false_alarm_rate": at_r["background_false_alarm_rate"],
                  "false_alarms_per_hour": at_r["false_alarms_per_hour"],
                  "background_alerting_clips": at_r["background_alerting_clips"]}
    per: dict[str, dict[str, Any]] = {}
    for n, u in enumerate(cs.fold_of):
        row = per.setdefault(u, {"clips": 0, **{c: [0, 0] for c in (*THREAT_CLASSES, BACKGROUND)}})
        row["clips"] += 1
        thr = per_clip[n]
        alerts = [c for j, c in enumerate(THREAT_CLASSES) if judged[n, j] >= thr[c]]
        cell = row[labels[n]]
        cell[1] += 1
        if labels[n] == BACKGROUND:
            cell[0] += int(bool(alerts))
        else:
            cell[0] += int(labels[n] in alerts)
    cs.per_source = per


def folder_to_folder(data: Sequence[Embedded], mixes: Mixes | None, r: Recipe, cs: CrossSource,
                     tick: Callable[[], None] | None = None, prior: Prior | None = None) -> dict[str, Any]:
    """Fit on one folder, score the other's clips from sources the first does not hold. Thresholds (and the
    blend): chosen on the fitting folder's own clips' leave-one-source-out scores."""
    folders = sorted({e.folder for e in data})
    out: dict[str, Any] = {}
    if len(folders) < 2:
        return out
    labels, rels, durs = _describe(data)
    lab = np.asarray(labels)
    grid, zwin = cs.blend_grid, cs.base_win
    for a_name in folders:
        train = [i for i, e in enumerate(data) if e.folder == a_name]
        mask = np.array([e.folder == a_name for e in data])
        seen = {data[i].source for i in train}
        for b_name in folders:
            if a_name == b_name:
                continue
            test = [i for i, e in enumerate(data) if e.folder == b_name and e.source not in seen]
            key = f"{a_name} -> {b_name}"
            if not test or BACKGROUND not in {data[i].label for i in train}:
                out[key] = None
                continue
            win = window_probs(fit_head(data, train, mixes, r, prior=prior), data, test)
            if grid is not None and zwin is not None:
                a = _choose_blend(grid, lab, mask)
                s = clip_matrix(win, [zwin[i] for i in test], a)
                ref = _assemble(grid, a)
            else:
                s, ref = clip_matrix(win, None, None), cs.oof
            thr = choose_thresholds(ref[train], list(lab[train]))
            m = metrics_at(s, [labels[i] for i in test], [rels[i] for i in test], [durs[i] for i in test], thr)
            m["thresholds"] = thr
            m["left_out_shared_sources"] = sorted({e.source for e in data if e.folder == b_name and e.source in seen})
            out[key] = m
            if tick:
                tick()
    return out


def run(data: Sequence[Embedded], mixes: Mixes | None, r: Recipe, what: str,
        prior: Prior | None = None, blend_rows: Prior | None = None) -> CrossSource:
    n_units = len(set(_units(data)[0]))
    n_folders = len({e.folder for e in data})
    prog = Stage(n_units + (n_folders * (n_folders - 1) if n_folders > 1 else 0), what)
    cs = leave_one_source_out(data, mixes, r, prog.step, prior)
    if r.base_blend and blend_rows is not None:
        apply_blend(cs, data, blend_rows)  # scores the honest figures with each unit's own blend
    else:
        score_cross_source(cs, data)
    cs.folder_to_folder = folder_to_folder(data, mixes, r, cs, prog.step, prior)
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
