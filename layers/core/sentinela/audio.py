"""Decode, mix to mono, resample and cut into model windows, in bounded memory.

One module decodes audio. Whatever the clip length, at most one block of the source plus one window
(and the caller's batch) is in memory: a 2-hour recording is never held as a whole.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

# soundfile reads these by content, whatever the file is called.
_FORMAT_EXT = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3", "MPEG": "mp3"}
BLOCK_SECONDS = 10.0


class AudioError(ValueError):
    """Audio that cannot be processed; ``reason`` is short and specific enough to tag an object with."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def ext(self) -> str:
        return _FORMAT_EXT.get(self.format, self.format.lower())


@dataclass
class SignalStats:
    """Running statistics of the mono signal, for quality flags ops can filter on."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    peak: float = 0.0
    clipped: int = 0

    def update(self, x: np.ndarray) -> None:
        self.n += x.size
        self.total += float(x.sum(dtype=np.float64))
        self.total_sq += float(np.dot(x, x))
        if x.size:
            a = np.abs(x)
            self.peak = max(self.peak, float(a.max()))
            self.clipped += int(np.count_nonzero(a >= 0.999))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.total_sq / self.n)) if self.n else 0.0

    def flags(self) -> list[str]:
        out = []
        if self.peak < 1e-4:
            out.append("silent")
        if abs(self.mean) > 0.1:
            out.append("dc_offset")
        if self.n and self.clipped / self.n > 0.01:
            out.append("clipped")
        return out


@dataclass
class Windows:
    """Windows of a clip; iterate once. ``stats`` is complete when iteration ends."""

    info: AudioInfo
    _it: Iterator[tuple[float, np.ndarray]]
    stats: SignalStats = field(default_factory=SignalStats)

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        return self._it


Source = str | os.PathLike[str] | bytes | BinaryIO


def _open(src: Source) -> sf.SoundFile:
    if isinstance(src, bytes):
        if not src:
            raise AudioError("empty object (0 bytes)")
        src = io.BytesIO(src)
    elif isinstance(src, str | os.PathLike) and Path(src).stat().st_size == 0:
        raise AudioError("empty object (0 bytes)")
    try:
        return sf.SoundFile(src)
    except sf.LibsndfileError as exc:
        raise AudioError(f"unreadable audio: {_libsndfile_reason(exc)}") from exc
    except (RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"unreadable audio: {exc}") from exc


def _libsndfile_reason(exc: Exception) -> str:
    msg = getattr(exc, "error_string", None) or str(exc)
    return str(msg).strip().rstrip(".")


def probe(src: Source) -> AudioInfo:
    with _open(src) as f:
        return _info(f)


def _info(f: sf.SoundFile) -> AudioInfo:
    return AudioInfo(
        sample_rate=int(f.samplerate), channels=int(f.channels), frames=int(f.frames),
        format=str(f.format), subtype=str(f.subtype),
    )


def windows(
    src: Source,
    *,
    sample_rate: int,
    window: int,
    hop: int,
    max_seconds: float | None = None,
) -> Windows:
    """Open ``src`` and return its ``(start_seconds, float32[window])`` windows at ``sample_rate``.

    Validation that needs only the header (empty, unreadable, zero-length, too long) raises here;
    problems found in the samples (NaN/Inf, a truncated body) raise :class:`AudioError` while iterating.
    """
    f = _open(src)
    info = _info(f)
    if info.sample_rate <= 0:
        f.close()
        raise AudioError("header gives no sample rate")
    if info.frames == 0:
        f.close()
        raise AudioError("no audio samples (zero-length clip)")
    if max_seconds is not None and info.duration_s > max_seconds:
        f.close()
        raise AudioError(f"clip is {info.duration_s:.0f} s long, over the {max_seconds:.0f} s cap")
    w = Windows(info=info, _it=iter(()))
    w._it = _iter_windows(f, w.stats, sample_rate, window, hop)
    return w


def _iter_windows(
    f: sf.SoundFile, stats: SignalStats, sample_rate: int, window: int, hop: int
) -> Iterator[tuple[float, np.ndarray]]:
    resampler = None if f.samplerate == sample_rate else soxr.ResampleStream(
        f.samplerate, sample_rate, 1, dtype="float32", quality="HQ"
    )
    block = max(1024, int(f.samplerate * BLOCK_SECONDS))
    buf = np.zeros(0, dtype=np.float32)
    emitted_until = 0  # output-sample index up to which windows have covered the signal
    start = 0  # output-sample index of buf[0]
    with f:
        done = False
        while not done:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except sf.LibsndfileError as exc:
                raise AudioError(f"corrupt audio data: {_libsndfile_reason(exc)}") from exc
            done = len(data) < block
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            if mono.size and not np.isfinite(mono).all():
                bad = int(np.count_nonzero(~np.isfinite(mono)))
                raise AudioError(f"{bad} non-finite samples (NaN/Inf) near {f.tell() / f.samplerate:.1f} s")
            stats.update(mono)
            out = mono if resampler is None else resampler.resample_chunk(mono, last=done)
            buf = np.concatenate((buf, out)) if buf.size else np.asarray(out, dtype=np.float32)
            while buf.size >= window:
                yield start / sample_rate, buf[:window].copy()
                emitted_until = start + window
                buf = buf[hop:]
                start += hop
    # The tail: pad what no window has covered yet (and a clip shorter than one window) with silence.
    uncovered = start + buf.size - emitted_until
    if buf.size and (emitted_until == 0 or uncovered > 0):
        tail = np.zeros(window, dtype=np.float32)
        tail[: buf.size] = buf[:window]
        yield start / sample_rate, tail


def read_mono(src: Source, sample_rate: int) -> np.ndarray:
    """Whole clip, mono, at ``sample_rate``. For short clips only (tests, training): it is not bounded."""
    with _open(src) as f:
        data = f.read(dtype="float32", always_2d=True)
        sr = f.samplerate
    mono = data.mean(axis=1, dtype=np.float32)
    return mono if sr == sample_rate else np.asarray(soxr.resample(mono, sr, sample_rate, quality="HQ"))
