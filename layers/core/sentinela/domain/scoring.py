"""What a model gives classify for each batch of windows: scores, threat scores, embedding, signal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowBatch:
    starts: np.ndarray  # float64 [n] window start, seconds
    scores: np.ndarray  # float32 [n, labels] sigmoid scores of the base model
    threat: np.ndarray  # float32 [n, threats] one score per threat class (card order)
    embedding: np.ndarray | None  # float32 [n, d]
    # bool [n]: the window holds some sound; a window without any scores 0 everywhere (activity.py)
    signal: np.ndarray | None = None
