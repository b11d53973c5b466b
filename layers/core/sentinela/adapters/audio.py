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
# A block is at most this many samples (all channels together): 10 s of 48 kHz mono. Bounding seconds
# alone let memory follow the rate and the channel count (8 channels at 655 kHz: 210 MB per block).
BLOCK_SAMPLES = 480_000
# libsndfile's answer for a stream whose header gives no length (FLAC STREAMINFO total_samples = 0, as
# encoders writing to a pipe leave it): not a length, so the clip is decoded to its end.
UNKNOWN_FRAMES = 2**63 - 1
# Float samples beyond this are not audio the model can score (its spectrogram overflows float32).
MAX_ABS_SAMPLE = 1000.0


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
    # False while a stream without a length in its header is being decoded (``frames`` is 0 until the end).
    length_known: bool = True

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
        # float64: the squares of float32 samples overflow float32 (1e20 squared is inf), and an infinite
        # RMS must never reach the clip record.
        x64 = x.astype(np.float64)
        self.n += x.size
        self.total += float(x64.sum())
        # einsum, not np.dot: np.dot is a BLAS call, and OpenBLAS then keeps a thread spinning on the
        # other core long after it, which halved the model's speed at 2 threads (docs/BENCHMARKS.md).
        self.total_sq += float(np.einsum("i,i->", x64, x64))
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
    known = int(f.frames) < UNKNOWN_FRAMES
    return AudioInfo(
        sample_rate=int(f.samplerate), channels=int(f.channels), frames=int(f.frames) if known else 0,
        format=str(f.format), subtype=str(f.subtype), length_known=known,
    )


def block_frames(sample_rate: int, channels: int) -> int:
    """Frames per decoded block: 10 s, but never more than :data:`BLOCK_SAMPLES` samples in all."""
    return max(1024 // max(channels, 1), min(int(sample_rate * BLOCK_SECONDS), BLOCK_SAMPLES // max(channels, 1)))


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
    if info.frames == 0 and info.length_known:
        f.close()
        raise AudioError("no audio samples (zero-length clip)")
    if max_seconds is not None and info.duration_s > max_seconds:
        f.close()
        raise AudioError(f"clip is {info.duration_s:.0f} s long, over the {max_seconds:.0f} s cap")
    w = Windows(info=info, _it=iter(()))
    w._it = _iter_windows(f, w, sample_rate, window, hop, max_seconds)
    return w


def _read_block(f: sf.SoundFile, out: np.ndarray, pos: int) -> np.ndarray:
    """Read up to ``len(out)`` frames into ``out``; the frames read. soundfile's own ``read`` seeks after
    reading to keep its position, and seeking fails in a stream of unknown length, so for those the
    decoder is called directly (soundfile's cffi binding: same library, no seek)."""
    try:
        if f.frames < UNKNOWN_FRAMES:
            data = f.read(len(out), dtype="float32", always_2d=True, out=out)
            return np.asarray(data)
        got = int(sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", sf._ffi.from_buffer(out)), len(out)))
    except sf.LibsndfileError as exc:
        where = f.tell() if f.frames < UNKNOWN_FRAMES else pos  # libsndfile's position: where it broke
        raise AudioError(f"corrupt audio data after {where / f.samplerate:.1f} s: {_libsndfile_reason(exc)}") from exc
    if got < len(out) and sf._snd.sf_error(f._file):
        reason = sf._ffi.string(sf._snd.sf_strerror(f._file)).decode("utf-8", "replace")
        raise AudioError(f"corrupt audio data after {(pos + got) / f.samplerate:.1f} s: "
                         f"{_libsndfile_reason(Exception(reason))}")
    return out[:got]


def _iter_windows(
    f: sf.SoundFile, w: Windows, sample_rate: int, window: int, hop: int, max_seconds: float | None
) -> Iterator[tuple[float, np.ndarray]]:
    stats = w.stats
    resampler = None if f.samplerate == sample_rate else soxr.ResampleStream(
        f.samplerate, sample_rate, 1, dtype="float32", quality="HQ"
    )
    block = block_frames(f.samplerate, f.channels)
    out_buf = np.empty((block, f.channels), dtype=np.float32)
    cap = None if max_seconds is None else int(max_seconds * f.samplerate)
    buf = np.zeros(0, dtype=np.float32)
    emitted_until = 0  # output-sample index up to which windows have covered the signal
    start = 0  # output-sample index of buf[0]
    pos = 0  # source frames decoded so far
    with f:
        done = False
        while not done:
            data = _read_block(f, out_buf, pos)
            done = len(data) < block
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0].copy()
            if mono.size and not np.isfinite(mono).all():
                nonfinite = ~np.isfinite(mono)
                first = pos + int(np.argmax(nonfinite))  # where, not the end of the block
                raise AudioError(f"{int(np.count_nonzero(nonfinite))} non-finite samples (NaN/Inf) from "
                                 f"{first / f.samplerate:.1f} s")
            if mono.size and float(np.abs(mono).max()) > MAX_ABS_SAMPLE:
                big = np.abs(mono) > MAX_ABS_SAMPLE
                first = pos + int(np.argmax(big))
                raise AudioError(f"{int(np.count_nonzero(big))} samples beyond +/-{MAX_ABS_SAMPLE:g} times full "
                                 f"scale (up to {float(np.abs(mono).max()):.3g}) from {first / f.samplerate:.1f} s: "
                                 "not audio the model can score")
            pos += len(data)
            if cap is not None and pos > cap:
                # The header promised no length (or less): the cap is enforced on what is decoded.
                raise AudioError(f"clip is over the {max_seconds:.0f} s cap (decoding stopped at "
                                 f"{pos / f.samplerate:.0f} s; the header gives no length)")
            stats.update(mono)
            out = mono if resampler is None else resampler.resample_chunk(mono, last=done)
            buf = np.concatenate((buf, out)) if buf.size else np.asarray(out, dtype=np.float32)
            while buf.size >= window:
                yield start / sample_rate, buf[:window].copy()
                emitted_until = start + window
                buf = buf[hop:]
                start += hop
    if not w.info.length_known:
        if pos == 0:
            raise AudioError("no audio samples (zero-length clip)")
        w.info = dataclasses.replace(w.info, frames=pos, length_known=True)
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
