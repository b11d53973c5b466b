"""Window scores -> detections (merged events) -> the per-clip alert decision, with its trace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sentinela.domain.card import ModelCard
from sentinela.domain.scoring import ThreatModel, WindowBatch


@dataclass(frozen=True)
class Detection:
    label: str  # a threat class (gunshot ...) or a model label (a bird species ...)
    kind: str  # "threat" | "species" | "other"
    confidence: float  # the highest window score of the event
    start_s: float
    end_s: float
    windows: int
    alerting_windows: int = 0
    alert: bool = False

    @property
    def threat(self) -> bool:
        return self.kind == "threat"


@dataclass(frozen=True)
class AlertDecision:
    threat: str
    alert: bool
    confidence: float
    alerting_windows: int
    threshold: float
    min_windows: int
    first_s: float | None
    reason: str
    quiet_threshold: float | None = None  # the card's quiet operating point, for a site's policy to choose


@dataclass
class _Open:
    start: float
    end: float
    peak: float
    n: int = 1
    n_alert: int = 0


@dataclass
class ClipResult:
    detections: list[Detection]
    decisions: list[AlertDecision]
    max_scores: dict[str, float]
    windows: int

    @property
    def alerts(self) -> list[AlertDecision]:
        return [d for d in self.decisions if d.alert]


def _any_species(label: str) -> str:
    return "species"


@dataclass
class Detector:
    """Feed it the batches of one clip in time order; ``finish`` gives detections and decisions.
    ``threat_classes``: the columns of the batches' threat scores; ``label_kind``: the model's
    (:meth:`sentinela.domain.scoring.ThreatModel.label_kind`), "species" or "other" for a label."""

    card: ModelCard
    threat_classes: tuple[str, ...]
    label_kind: Callable[[str], str] = _any_species
    _open_threat: dict[str, _Open] = field(default_factory=dict)
    _open_species: dict[str, _Open] = field(default_factory=dict)
    _done: list[Detection] = field(default_factory=list)
    _max: dict[str, float] = field(default_factory=dict)
    _alerting: dict[str, int] = field(default_factory=dict)
    _first_alert: dict[str, float] = field(default_factory=dict)
    _windows: int = 0
    _species_mask: np.ndarray | None = None

    @classmethod
    def for_model(cls, model: ThreatModel, card: ModelCard | None = None) -> Detector:
        """``card``: the model's card with other thresholds (an operating point), if not its own."""
        return cls(card or model.card, model.threat_classes, model.label_kind)

    def __post_init__(self) -> None:
        threat_labels = set(self.card.threat_of_label())
        self._species_mask = np.array([lab not in threat_labels for lab in self.card.labels])
        for t in self.threat_classes:
            self._max[t] = 0.0
            self._alerting[t] = 0

    def add(self, batch: WindowBatch) -> None:
        win = self.card.window_s
        bio = self.card.biodiversity_store
        masked = np.where(self._species_mask, batch.scores, -1.0) if self._species_mask is not None else batch.scores
        top = masked.argmax(axis=1)
        for i, start in enumerate(batch.starts.tolist()):
            self._windows += 1
            end = start + win
            for j, t in enumerate(self.threat_classes):
                rule = self.card.threats[t]
                s = float(batch.threat[i, j])
                self._max[t] = max(self._max[t], s)
                is_alert = s >= rule.alert
                if is_alert:
                    self._alerting[t] += 1
                    self._first_alert.setdefault(t, start)
                self._step(self._open_threat, t, s >= rule.store, s, start, end, is_alert, "threat")
            lab = self.card.labels[int(top[i])]
            s_top = float(batch.scores[i, int(top[i])])
            for open_lab in list(self._open_species):
                if open_lab != lab or s_top < bio:
                    self._close(self._open_species, open_lab, "species")
            if s_top >= bio:
                self._step(self._open_species, lab, True, s_top, start, end, False, "species")

    def _step(
        self, opened: dict[str, _Open], key: str, hit: bool, s: float, start: float, end: float,
        is_alert: bool, kind: str,
    ) -> None:
        cur = opened.get(key)
        if not hit:
            if cur is not None:
                self._close(opened, key, kind)
            return
        if cur is not None and start <= cur.end:
            cur.end, cur.peak, cur.n = end, max(cur.peak, s), cur.n + 1
            cur.n_alert += int(is_alert)
            return
        if cur is not None:
            self._close(opened, key, kind)
        opened[key] = _Open(start=start, end=end, peak=s, n_alert=int(is_alert))

    def _close(self, opened: dict[str, _Open], key: str, kind: str) -> None:
        ev = opened.pop(key)
        if kind == "threat":
            rule = self.card.threats[key]
            det = Detection(key, "threat", ev.peak, ev.start, ev.end, ev.n, ev.n_alert, ev.peak >= rule.alert)
        else:
            det = Detection(key, self.label_kind(key), ev.peak, ev.start, ev.end, ev.n)
        self._done.append(det)

    def finish(self, duration_s: float | None = None) -> ClipResult:
        for key in list(self._open_threat):
            self._close(self._open_threat, key, "threat")
        for key in list(self._open_species):
            self._close(self._open_species, key, "species")
        dets = sorted(self._done, key=lambda d: (d.start_s, d.label))
        if duration_s is not None:
            dets = [d if d.end_s <= duration_s else _clamp(d, duration_s) for d in dets]
        decisions = [self._decide(t) for t in self.threat_classes]
        return ClipResult(dets, decisions, dict(self._max), self._windows)

    def _decide(self, t: str) -> AlertDecision:
        rule = self.card.threats[t]
        n, top = self._alerting[t], self._max[t]
        if n >= rule.min_windows and n > 0:
            reason = (f"{n} window(s) >= alert threshold {rule.alert:.2f} (max {top:.2f}); "
                      f"rule needs {rule.min_windows}")
            return AlertDecision(t, True, top, n, rule.alert, rule.min_windows, self._first_alert.get(t), reason,
                                 rule.quiet)
        if n > 0:
            reason = f"held: {n} window(s) >= {rule.alert:.2f}, rule needs {rule.min_windows}"
        else:
            reason = f"held: max {top:.2f} < alert threshold {rule.alert:.2f}"
        return AlertDecision(t, False, top, n, rule.alert, rule.min_windows, None, reason, rule.quiet)


def _clamp(d: Detection, duration_s: float) -> Detection:
    return Detection(d.label, d.kind, d.confidence, d.start_s, max(d.start_s, duration_s), d.windows,
                     d.alerting_windows, d.alert)
