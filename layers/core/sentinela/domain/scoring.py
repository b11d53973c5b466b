"""The model seam: what classify needs from a model (:class:`ThreatModel`), and what it gives for each
batch of windows (:class:`WindowBatch`): scores, threat scores, embedding, signal.

classify, the pipeline and the detector know a model only through this protocol; how a model computes
its scores (BirdNET's ONNX graph, its sigmoid, a threat head, a front end) is its adapter's business
(``sentinela.adapters.model``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sentinela.domain.card import ModelCard


@dataclass(frozen=True)
class WindowBatch:
    starts: np.ndarray  # float64 [n] window start, seconds
    scores: np.ndarray  # float32 [n, labels] per-label scores in 0..1 (card.labels order)
    threat: np.ndarray  # float32 [n, threats] one score per threat class (threat_classes order)
    embedding: np.ndarray | None  # float32 [n, d]
    # bool [n]: the window holds some sound; a window without any scores 0 everywhere (activity.py)
    signal: np.ndarray | None = None


class ThreatModel(Protocol):
    """A model classify can run: windows of ``card.window_s`` at ``card.sample_rate`` in, for each
    window a score per label and per threat class (and the embedding, when it has one) out."""

    @property
    def card(self) -> ModelCard:
        """Its card: audio framing, labels, threat classes and their thresholds."""
        ...

    @property
    def threat_classes(self) -> tuple[str, ...]:
        """The columns of ``WindowBatch.threat``: the card's threat classes, in the card's order."""
        ...

    @property
    def model_id(self) -> str:
        """What decided: recorded on every clip, detection and alert, and a metric dimension."""
        ...

    def label_kind(self, label: str) -> str:
        """"species" (a bird, an animal: a biodiversity detection) or "other" (noise, a sound class) for
        one of the card's labels; what tells them apart is the model's own label format."""
        ...

    def run(self, windows: Iterable[tuple[float, np.ndarray]], batch_size: int = 8) -> Iterator[WindowBatch]:
        """Score ``(start_s, samples)`` windows in batches of ``batch_size``, in order."""
        ...
