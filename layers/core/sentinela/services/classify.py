"""Classify one clip: decode -> windows -> ONNX -> detections -> alert decisions. No cloud here."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sentinela.adapters.audio import AudioInfo, Source, windows
from sentinela.domain.activity import MIN_SAMPLE_RATE
from sentinela.domain.detect import ClipResult, Detector
from sentinela.domain.scoring import ThreatModel


@dataclass(frozen=True)
class ClipOutcome:
    info: AudioInfo
    result: ClipResult
    flags: list[str]
    peak: float
    rms: float
    processing_s: float


def classify_source(
    src: Source, model: ThreatModel, *, max_seconds: float | None = None, batch_size: int = 8
) -> ClipOutcome:
    """Raises :class:`sentinela.adapters.audio.AudioError` with a specific reason for audio it cannot use."""
    t0 = time.perf_counter()
    card = model.card
    wins = windows(src, sample_rate=card.sample_rate, window=card.window_samples, hop=card.hop_samples,
                   max_seconds=max_seconds)
    det = Detector.for_model(model)
    audible = wins.info.sample_rate >= MIN_SAMPLE_RATE
    # A file below MIN_SAMPLE_RATE carries nothing audible: its windows go to the model as silence, so
    # they score nothing, and the clip is still processed and recorded (flag no_audible_band).
    stream = wins if audible else ((s, np.zeros_like(w)) for s, w in wins)
    for batch in model.run(stream, batch_size=batch_size):
        det.add(batch)
    result = det.finish(wins.info.duration_s)
    stats = wins.stats
    flags = stats.flags()
    if wins.info.channels > 1:
        flags.append(f"mixed_{wins.info.channels}ch")
    if wins.info.truncated:
        flags.append("truncated")
    if not audible:
        flags.append("no_audible_band")
    return ClipOutcome(wins.info, result, flags, stats.peak, stats.rms, time.perf_counter() - t0)
