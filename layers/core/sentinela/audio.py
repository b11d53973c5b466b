"""Decode, mix to mono, resample and cut into model windows, in bounded memory.

One module decodes audio. Whatever the clip length, at most one block of the source plus one window
(and the caller's batch) is in memory: a 2-hour recording is never held as a whole.
"""

from __future__ import annotations

import dataclasses
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
    # Frames the WAV header promises, when the file holds fewer (a recorder cut off mid-write).
    declared_frames: int | None = None

    @property
    def truncated(self) -> bool:
        return self.declared_frames is not None and self.declared_frames > self.frames

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
    head = _head(src)
    if isinstance(src, bytes):
        if not src:
            raise AudioError("empty object (0 bytes)")
        src = io.BytesIO(src)
    elif isinstance(src, str | os.PathLike) and Path(src).stat().st_size == 0:
        raise AudioError("empty object (0 bytes)")
    try:
        return sf.SoundFile(src)
    except sf.LibsndfileError as exc:
        reason = _libsndfile_reason(exc)
        if "does not exist" in reason:
            # libsndfile says this of bytes that start like an MPEG frame but hold none: the object exists,
            # so that message would send ops looking for the wrong problem.
            mpeg = head[:1] == b"\xff" and len(head) > 1 and head[1] & 0xE0 == 0xE0
            reason = "Format not recognised" + (" (MPEG sync bytes but no decodable frame)" if mpeg else "")
        raise AudioError(f"unreadable audio: {reason}") from exc
    except (RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"unreadable audio: {exc}") from exc


def _head(src: Source, n: int = 65536) -> bytes:
    """The first bytes of a source (for header checks soundfile does not expose); b"" when unknown."""
    if isinstance(src, bytes):
        return src[:n]
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as f:
            return f.read(n)
    if src.seekable():
        pos = src.tell()
        data = src.read(n)
        src.seek(pos)
        return bytes(data)
    return b""


def _source_size(src: Source) -> int | None:
    if isinstance(src, bytes):
        return len(src)
    if isinstance(src, str | os.PathLike):
        return Path(src).stat().st_size
    return None


def _wav_declared_frames(head: bytes, size: int | None) -> int | None:
    """Frames the RIFF/WAVE header's data chunk declares, when the file is shorter than that, else None.

    libsndfile quietly reads what is there; a recorder that lost power mid-write leaves a header that
    promises more. A data size of 0 or 0xFFFFFFFF is how streaming writers leave it unset: not a claim.
    """
    if size is None or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        cid, n = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = int.from_bytes(head[pos + 20 : pos + 22], "little")
        if cid == b"data":
            present = size - (pos + 8)
            if n in (0, 0xFFFFFFFF) or n <= present or block_align <= 0:
                return None
            return n // block_align
        pos += 8 + n + (n & 1)
    return None


def _libsndfile_reason(exc: Exception) -> str:
    msg = str(getattr(exc, "error_string", None) or exc).strip().rstrip(".")
    return msg.removeprefix("Error : ")


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
    if info.format in ("WAV", "WAVEX"):
        declared = _wav_declared_frames(_head(src), _source_size(src))
        if declared is not None:
            info = dataclasses.replace(info, declared_frames=declared)
            if info.frames == 0:
                f.close()
                promised = declared / max(info.sample_rate, 1)
                raise AudioError(f"truncated: the header declares {promised:.1f} s of audio, the file holds none")
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
                raise AudioError(f"corrupt audio data after {f.tell() / f.samplerate:.1f} s: "
                                 f"{_libsndfile_reason(exc)}") from exc
            done = len(data) < block
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            if mono.size and not np.isfinite(mono).all():
                nonfinite = ~np.isfinite(mono)
                first = f.tell() - len(mono) + int(np.argmax(nonfinite))  # where, not the end of the block
                raise AudioError(f"{int(np.count_nonzero(nonfinite))} non-finite samples (NaN/Inf) from "
                                 f"{first / f.samplerate:.1f} s")
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
