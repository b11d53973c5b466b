"""Rows and weights from a recipe, the logistic fits (scikit-learn), and the head as numpy arrays."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sentinela_tools.classes import THREAT_CLASSES
from sentinela_tools.evaluate import BACKGROUND
from sentinela_tools.training.embed import BANDLIMIT_RATES, Embedded, Mixes
from sentinela_tools.training.recipe import Recipe

HEAD_CLASSES: tuple[str, ...] = (*THREAT_CLASSES, BACKGROUND)


BLEND_GRID = (1.0, 0.75, 0.5, 0.25, 0.0)  # the head's share of each threat class's log-odds
LOGIT_CLIP = 15.0  # the base model's logits are clipped here in classify (model.py), so here too
P_CLIP = 1e-7


@dataclass(frozen=True)
class Blend:
    """Per threat class, the head's log-odds mixed with the base model's own label logit:
    ``score = sigmoid(a * logit(p_head) + (1 - a) * clip(x @ w + b))``; a = 1 is the head alone."""

    a: np.ndarray  # float64 [threats]
    w: np.ndarray  # float64 [d, threats] the base model's rows for each class's label
    b: np.ndarray  # float64 [threats]

    def base_logits(self, x: np.ndarray) -> np.ndarray:
        return base_logits(x, self.w, self.b)


def base_logits(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.asarray(x, np.float64) @ w + b, -LOGIT_CLIP, LOGIT_CLIP), dtype=np.float64)


def blend_scores(p: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Blended threat scores [n, threats] from head probabilities [n, >= threats] and base logits [n, threats]."""
    k = len(THREAT_CLASSES)
    pc = np.clip(np.asarray(p[:, :k], np.float64), P_CLIP, 1 - P_CLIP)
    mix = a * (np.log(pc) - np.log1p(-pc)) + (1 - a) * z
    return np.asarray(1.0 / (1.0 + np.exp(-mix)), dtype=np.float64)


@dataclass(frozen=True)
class Head:
    """probabilities = act(x @ w + b); act = softmax over the columns, or a sigmoid per column; with a
    blend, each threat column is then mixed with the base model's own label logit (``Blend``)."""

    w: np.ndarray  # float64 [d, k] with the standardisation folded in
    b: np.ndarray  # float64 [k]
    softmax: bool
    classes: tuple[str, ...] = HEAD_CLASSES
    blend: Blend | None = None

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.asarray(x, np.float64) @ self.w + self.b, dtype=np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        if self.softmax:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            p = e / e.sum(axis=1, keepdims=True)
        else:
            p = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        if self.blend is not None:
            p = p.copy()
            p[:, : len(THREAT_CLASSES)] = blend_scores(p, self.blend.base_logits(x), self.blend.a)
        return np.asarray(p, dtype=np.float32)

    def describe(self) -> str:
        act = "Softmax" if self.softmax else "Sigmoid"
        tail = (" -> threat columns: Sigmoid(a x logit(p) + (1 - a) x Clip(embedding @ base rows))"
                if self.blend is not None else "")
        return (f"embedding[batch,{self.w.shape[0]}] -> MatMul -> Add -> {act}{tail}"
                f" -> probabilities[batch,{self.w.shape[1]}]")


@dataclass(frozen=True)
class Prior:
    """The base model's own classifier rows for some labels: logits = embedding @ w + b exactly (BirdNET's
    logits are one dense layer on its embedding), so as features they still fold into the head's one MatMul."""

    labels: tuple[str, ...]
    w: np.ndarray  # float64 [d, m]
    b: np.ndarray  # float64 [m]


def base_rows(card: Any, labels: Sequence[str]) -> Prior | None:
    """``Prior`` for ``labels`` when the card's logits are ``MatMul(embedding, W) (+ Add b)`` in its ONNX
    graph; None when they are not a dense layer of the embedding (the tiny test model) or a label is unknown."""
    import onnx
    from onnx import numpy_helper

    if not labels or not card.embedding_output or any(lab not in card.labels for lab in labels):
        return None
    m = onnx.load(str(card.path))
    init = {t.name: t for t in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    node = prod.get(card.logits_output)
    bias = None
    if node is not None and node.op_type == "Add":
        src = [i for i in node.input if i not in init]
        consts = [i for i in node.input if i in init]
        if len(src) != 1 or len(consts) != 1:
            return None
        bias = numpy_helper.to_array(init[consts[0]]).astype(np.float64).reshape(-1)
        node = prod.get(src[0])
    if node is None or node.op_type != "MatMul" or node.input[0] != card.embedding_output or node.input[1] not in init:
        return None
    w = numpy_helper.to_array(init[node.input[1]]).astype(np.float64)
    index = {lab: i for i, lab in enumerate(card.labels)}
    cols = [index[lab] for lab in labels]
    return Prior(tuple(labels), w[:, cols], (bias if bias is not None else np.zeros(w.shape[1]))[cols])


@dataclass
class Rows:
    x: np.ndarray  # float32 [n, d]
    y: np.ndarray  # int [n] index into HEAD_CLASSES
    w: np.ndarray  # float64 [n]
    owner: np.ndarray  # int [n]: (clip index, part) packed as clip * 8 + part; -1 for mixes
    bg: np.ndarray  # bool [n]: a background row (for hard negatives)


def _clip_weights(data: Sequence[Embedded], idx: Sequence[int], r: Recipe) -> dict[int, float]:
    count = Counter((data[i].label, data[i].source) for i in idx)
    return {i: (count[(data[i].label, data[i].source)] ** -r.source_power if r.source_power else 1.0) for i in idx}


def build_rows(data: Sequence[Embedded], idx: Sequence[int], mixes: Mixes | None, r: Recipe) -> Rows:
    cw = _clip_weights(data, idx, r)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for i in idx:
        e = data[i]
        lab = HEAD_CLASSES.index(e.label)
        parts = [e.emb[e.signal]]
        if r.bandlimit and not r.plain:
            for rate in BANDLIMIT_RATES:
                bl = e.bandlimited.get(rate)
                if bl is not None and len(bl):
                    parts.append(bl[e.signal] if len(bl) == len(e.signal) else bl)
        for k, part in enumerate(parts):
            n = len(part)
            if not n:
                continue
            share = (1.0 if k == 0 else r.bandlimit_weight) / (n if r.clip_weight else 1.0)
            wv = 1.0 if r.plain else cw[i] * share
            xs.append(part)
            ys.append(np.full(n, lab))
            ws.append(np.full(n, wv))
            owners.append(np.full(n, i * 8 + k))
    if mixes is not None and r.needs_mixes and len(mixes.emb):
        inside = set(idx)
        use = np.array([t in inside and b in inside for t, b in zip(mixes.threat_clip, mixes.bg_clip, strict=True)],
                       dtype=bool)
        per = r.mixes_per_clip
        if use.any():
            xs.append(mixes.emb[use])
            ys.append(mixes.label[use])
            ws.append(np.array([cw[int(t)] * r.mix_weight / per for t in mixes.threat_clip[use]]))
            owners.append(np.full(int(use.sum()), -1))
    y = np.concatenate(ys)
    w = np.concatenate(ws).astype(np.float64)
    if r.class_balance and not r.plain:
        present = np.unique(y)
        for c in present:
            m = y == c
            w[m] *= 1.0 / w[m].sum()
    w *= len(w) / w.sum()  # mean weight 1: C keeps scikit-learn's meaning
    bg = y == HEAD_CLASSES.index(BACKGROUND)
    return Rows(np.concatenate(xs).astype(np.float32), y, w, np.concatenate(owners), bg)


def _fit_once(xs: np.ndarray, y: np.ndarray, w: np.ndarray, r: Recipe, classes_present: np.ndarray,
              warm: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients [k, d] and intercepts [k] over all HEAD_CLASSES (absent classes: a very low logit)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    k, d = len(HEAD_CLASSES), xs.shape[1]
    coef = np.zeros((k, d))
    icpt = np.full(k, -30.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if r.softmax:
            m = LogisticRegression(C=r.c, max_iter=1000, tol=1e-4)
            m.fit(xs, y, sample_weight=None if r.plain else w)
            if len(m.classes_) == 2:  # scikit-learn keeps one row for two classes: split it in halves
                coef[m.classes_[0]], icpt[m.classes_[0]] = -m.coef_[0] / 2, -m.intercept_[0] / 2
                coef[m.classes_[1]], icpt[m.classes_[1]] = m.coef_[0] / 2, m.intercept_[0] / 2
                return coef, icpt
            for row, c in enumerate(m.classes_):
                coef[c], icpt[c] = m.coef_[row], m.intercept_[row]
            return coef, icpt
        for c in classes_present:
            yc = (y == c).astype(int)
            wc = w.copy()
            if r.class_balance:  # one-vs-rest: each column's positives and negatives weigh the same
                wc[yc == 1] *= 0.5 * len(wc) / wc[yc == 1].sum()
                wc[yc == 0] *= 0.5 * len(wc) / wc[yc == 0].sum()
            m = LogisticRegression(C=r.c, max_iter=1000, tol=1e-4)
            m.fit(xs, yc, sample_weight=wc)
            coef[c], icpt[c] = m.coef_[0], m.intercept_[0]
    return coef, icpt


class _Features:
    """Standardised embedding, plus (with a prior) the base model's standardised logits times a scale (a
    large scale: the L2 penalty barely touches them), and how to fold a fit on them back onto the embedding."""

    def __init__(self, x: np.ndarray, prior: Prior | None, scale: float) -> None:
        self.prior, self.scale = prior, scale
        self.mu = x.mean(axis=0, dtype=np.float64)
        sd = x.std(axis=0, dtype=np.float64)
        self.sd = np.where(sd < 1e-6, 1.0, sd)
        if prior is not None:
            z = x.astype(np.float64) @ prior.w + prior.b
            self.muz = z.mean(axis=0)
            sdz = z.std(axis=0)
            self.sdz = np.where(sdz < 1e-6, 1.0, sdz)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xs = np.asarray((x - self.mu) / self.sd, dtype=np.float32)
        if self.prior is None:
            return xs
        z = (x.astype(np.float64) @ self.prior.w + self.prior.b - self.muz) / self.sdz
        return np.concatenate((xs, (self.scale * z).astype(np.float32)), axis=1)

    def fold(self, coef: np.ndarray, icpt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = len(self.mu)
        a = coef[:, :d].T
        w = a / self.sd[:, None]
        b = icpt - (self.mu / self.sd) @ a
        if self.prior is not None:
            bm = self.scale * coef[:, d:].T / self.sdz[:, None]  # [m, k]
            w = w + self.prior.w @ bm
            b = b + (self.prior.b - self.muz) @ bm
        return w, b


def fit_head(data: Sequence[Embedded], idx: Sequence[int], mixes: Mixes | None, r: Recipe,
             stats: dict[str, Any] | None = None, prior: Prior | None = None) -> Head:
    rows = build_rows(data, idx, mixes, r)
    feats = _Features(rows.x, prior if r.logit_labels and not r.plain else None, r.logit_scale)
    xs = feats(rows.x)
    present = np.unique(rows.y)
    if len(present) < 2:
        raise ValueError("need at least two classes to fit a head")
    coef, icpt = _fit_once(xs, rows.y, rows.w, r, present)
    if not r.plain and (r.mil or r.hard_neg != 1.0):
        head = Head(*feats.fold(coef, icpt), softmax=r.softmax)
        p = head.predict(rows.x)
        keep = np.ones(len(rows.y), dtype=bool)
        w = rows.w.copy()
        if r.mil:
            own = p[np.arange(len(rows.y)), rows.y]
            for o in np.unique(rows.owner[~rows.bg & (rows.owner >= 0)]):
                m = np.flatnonzero(rows.owner == o)
                sel = own[m] >= 0.5
                sel[int(np.argmax(own[m]))] = True
                keep[m[~sel]] = False
                w[m[sel]] *= len(m) / int(sel.sum())  # the clip keeps its weight on what holds the threat
        if r.hard_neg != 1.0:
            bgi = np.flatnonzero(rows.bg)
            threat_p = p[bgi, : len(THREAT_CLASSES)].max(axis=1)
            n_hard = max(1, round(r.hard_frac * len(bgi)))
            w[bgi[np.argsort(-threat_p, kind="stable")[:n_hard]]] *= r.hard_neg
        if stats is not None:
            stats.update({"rows": len(rows.y), "kept_after_mil": int(keep.sum())})
        w = w[keep] * keep.sum() / w[keep].sum()
        coef, icpt = _fit_once(xs[keep], rows.y[keep], w, r, np.unique(rows.y[keep]))
    elif stats is not None:
        stats.update({"rows": len(rows.y)})
    return Head(*feats.fold(coef, icpt), softmax=r.softmax)


def window_probs(head: Head, data: Sequence[Embedded], idx: Sequence[int]) -> list[np.ndarray]:
    """Each clip's window probabilities [m, k] over its windows with signal (the others score 0)."""
    return [head.predict(data[i].emb[data[i].signal]) for i in idx]


def clip_matrix(win: Sequence[np.ndarray], zwin: Sequence[np.ndarray] | None, a: np.ndarray | None) -> np.ndarray:
    """Clip scores [clips, threats] (the highest window score) from window probabilities, blended with the
    base logits ``zwin`` by ``a`` when given."""
    k = len(THREAT_CLASSES)
    out = np.zeros((len(win), k))
    for n, p in enumerate(win):
        if len(p):
            s = p[:, :k] if a is None or zwin is None else blend_scores(p, zwin[n], a)
            out[n] = s.max(axis=0)
    return out

