"""The base model's embedding of every clip (cached per file), and the training-only windows.

The production windows come from ``audio.windows`` (what classify cuts); the training-only ones are
recomputed from the decoded clip:

- band-limited copies: the clip resampled down through 8, 16 and 22.05 kHz and back to the model's rate,
  as a field recorder at that rate would have heard it (many do, and the forest gunshots in the data are
  8 kHz recordings). A clip already at or below a rate has no copy at that rate.
- mixes: a threat clip's loudest window added to a window of a real background recording at an SNR
  drawn from 0 to 20 dB. Each mix remembers its two source clips, so cross-validation only uses a mix
  when both are on the training side.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from sentinela.domain.activity import MIN_SAMPLE_RATE, has_signal
from sentinela.domain.card import ModelCard
from sentinela_tools.evaluate import BACKGROUND, LabelledClip, file_sha256
from sentinela_tools.progress import Stage, log

BANDLIMIT_RATES = (8000, 16000, 22050)
CACHE_VERSION = 1


class TrainError(ValueError):
    """Training that cannot proceed for a reason the user can fix."""


@dataclass
class Embedded:
    folder: str  # the data folder (its name) the clip came from
    clip: LabelledClip
    sha256: str
    duration_s: float
    sample_rate: int  # the file's own rate: band-limiting below it changes the sound, above it does not
    emb: np.ndarray  # float32 [n_windows, d] production windows
    zero_shot: np.ndarray  # float32 [n_windows, threats] the base model's own threat-label scores
    # bool [n_windows]: the window holds sound (activity.has_signal): classify scores the others 0, so
    # training neither learns from them nor scores them (padded silence is no gunshot)
    signal: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    bandlimited: dict[int, np.ndarray] = field(default_factory=dict)  # rate -> float32 [m, d]

    @property
    def label(self) -> str:
        return self.clip.label

    @property
    def source(self) -> str:
        return self.clip.source


@dataclass
class Mixes:
    emb: np.ndarray  # float32 [n, d]
    label: np.ndarray  # int [n] index into the head's classes
    threat_clip: np.ndarray  # int [n] index of the threat clip mixed in
    bg_clip: np.ndarray  # int [n] index of the background clip it was mixed into
    snr_db: np.ndarray  # float [n]


def embedding_model(card: ModelCard, threads: int | None) -> Any:
    """The base model without any head, asked for its embedding output as well as its scores."""
    from sentinela.adapters.model import BirdNetOnnx

    if not card.embedding_output:
        raise TrainError("the model card names no embedding_output; a head needs the model's embedding")
    return BirdNetOnnx(replace(card, head=None), threads=threads, embeddings=True)


def model_key(card: ModelCard) -> str:
    sha = file_sha256(card.path)  # the bytes in use, not what the card claims: a rebuild may differ
    return f"{sha[:16]}-sr{card.sample_rate}-w{card.window_samples}-h{card.hop_samples}-s{card.sensitivity:g}"


def _embed(model: Any, wins: Sequence[np.ndarray], batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    d = int(model.card.raw.get("model", {}).get("embedding_dim", 1024))
    if not wins:
        return np.zeros((0, d), np.float32), np.zeros((0, len(model.threat_classes)), np.float32)
    embs: list[np.ndarray] = []
    zs: list[np.ndarray] = []
    for i in range(0, len(wins), batch):
        scores, emb = model.infer(np.stack(wins[i : i + batch]).astype(np.float32))
        assert emb is not None
        embs.append(np.asarray(emb, dtype=np.float32))
        zs.append(model.threat_scores(scores, None))
    return np.concatenate(embs), np.concatenate(zs)


def array_windows(x: np.ndarray, window: int, hop: int) -> list[np.ndarray]:
    """Windows of a whole signal with the production rule: hop by ``hop``, pad the uncovered tail."""
    out = [x[s : s + window] for s in range(0, max(0, x.size - window) + 1, hop) if s + window <= x.size]
    covered = (len(out) - 1) * hop + window if out else 0
    if x.size > covered or not out:
        tail = np.zeros(window, np.float32)
        start = len(out) * hop if out else 0
        piece = x[start : start + window]
        tail[: piece.size] = piece
        out.append(tail)
    return out


def _save(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _decode(clip: LabelledClip, rate: int) -> np.ndarray:
    from sentinela.adapters.audio import read_mono

    return np.asarray(read_mono(clip.path, rate), dtype=np.float32)


def embed_clip(model: Any, folder: str, clip: LabelledClip, sha: str, cache: Path | None,
               bandlimit: bool) -> Embedded:
    """One clip's production windows through the base model, and its band-limited copies (cached)."""
    from sentinela.adapters.audio import probe, windows

    card = model.card
    base = cache / f"{sha}.npz" if cache else None
    sig = cache / f"{sha}.signal-v{CACHE_VERSION}.npz" if cache else None
    sr = probe(clip.path).sample_rate

    def production_windows() -> list[np.ndarray]:
        wins = windows(clip.path, sample_rate=card.sample_rate, window=card.window_samples, hop=card.hop_samples)
        out = [w for _, w in wins]
        return out if sr >= MIN_SAMPLE_RATE else [np.zeros_like(w) for w in out]

    if base is not None and base.is_file():
        with np.load(base) as z:
            e = Embedded(folder, clip, sha, float(z["duration_s"]), sr, z["emb"], z["zero_shot"])
        if sig is not None and sig.is_file():
            with np.load(sig) as z:
                e.signal = z["signal"]
        else:
            e.signal = np.array([bool(has_signal(w)[0]) for w in production_windows()], dtype=bool)
            if sig is not None:
                _save(sig, signal=e.signal)
    else:
        wins = windows(clip.path, sample_rate=card.sample_rate, window=card.window_samples, hop=card.hop_samples)
        buf = [w for _, w in wins]
        emb, zs = _embed(model, buf)
        e = Embedded(folder, clip, sha, wins.info.duration_s, sr, emb, zs)
        e.signal = (has_signal(np.stack(buf)) if buf and sr >= MIN_SAMPLE_RATE
                    else np.zeros(len(buf), dtype=bool))
        if base is not None:
            _save(base, duration_s=np.float64(e.duration_s), emb=emb, zero_shot=zs)
        if sig is not None:
            _save(sig, signal=e.signal)
    if len(e.signal) != len(e.emb):
        raise TrainError(f"{clip.rel}: cached windows do not match the clip (clear {cache})")
    if bandlimit:
        e.bandlimited = _bandlimited(model, e, cache)
    return e


def _bandlimited(model: Any, e: Embedded, cache: Path | None) -> dict[int, np.ndarray]:
    path = cache / f"{e.sha256}.bandlimit-v{CACHE_VERSION}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return {r: z[f"r{r}"] for r in BANDLIMIT_RATES}
    card = model.card
    x = _decode(e.clip, card.sample_rate)
    out: dict[int, np.ndarray] = {}
    for r in BANDLIMIT_RATES:
        if e.sample_rate <= r:
            out[r] = np.zeros((0, e.emb.shape[1]), np.float32)
            continue
        y = soxr.resample(soxr.resample(x, card.sample_rate, r, quality="HQ"), r, card.sample_rate, quality="HQ")
        out[r] = _embed(model, array_windows(np.asarray(y, np.float32), card.window_samples, card.hop_samples))[0]
    if path is not None:
        _save(path, **{f"r{r}": v for r, v in out.items()})
    return out


def embed_all(model: Any, clips: Sequence[tuple[str, LabelledClip]], cache: Path | None,
              bandlimit: bool) -> tuple[list[Embedded], list[dict[str, str]]]:
    from sentinela.adapters.audio import AudioError

    done: list[Embedded] = []
    skipped: list[dict[str, str]] = []
    prog = Stage(len(clips), "embedding clips" + (" (+ band-limited copies)" if bandlimit else ""))
    for folder, clip in clips:
        try:
            done.append(embed_clip(model, folder, clip, file_sha256(clip.path), cache, bandlimit))
        except (AudioError, OSError, RuntimeError) as exc:
            reason = exc.reason if isinstance(exc, AudioError) else str(exc)
            skipped.append({"file": clip.rel, "reason": reason})
            log(f"skipped {clip.rel}: {reason}")
        prog.step()
    prog.close()
    return done, skipped


# --- mixes -------------------------------------------------------------------------------------------


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _loudest(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    if x.size <= window:
        out = np.zeros(window, np.float32)
        out[: x.size] = x
        return out
    starts = range(0, x.size - window + 1, hop)
    best = max(starts, key=lambda s: float(np.dot(x[s : s + window], x[s : s + window])))
    return x[best : best + window]


def build_mixes(model: Any, data: Sequence[Embedded], classes: Sequence[str], cache: Path | None,
                per_clip: int, snr_db: tuple[float, float], seed: int) -> Mixes:
    """Each threat clip's loudest window mixed ``per_clip`` times into random windows of random background
    clips at SNRs drawn uniformly from ``snr_db``; deterministic for a seed and the same data."""
    card = model.card
    win, hop = card.window_samples, card.hop_samples
    rng = np.random.default_rng(seed)
    threats = [i for i, e in enumerate(data) if e.label != BACKGROUND]
    bgs = [i for i, e in enumerate(data) if e.label == BACKGROUND and e.duration_s >= card.window_s]
    d = data[0].emb.shape[1] if data else 0
    if not threats or not bgs or per_clip <= 0:
        z = np.zeros(0, np.int64)
        return Mixes(np.zeros((0, d), np.float32), z, z, z, np.zeros(0))
    plan = [(t, int(rng.choice(bgs)), float(rng.uniform(*snr_db)), float(rng.random()))
            for t in threats for _ in range(per_clip)]
    key = hashlib.sha256("\n".join(f"{data[t].sha256} {data[b].sha256} {s:.4f} {o:.4f}"
                                   for t, b, s, o in plan).encode()).hexdigest()[:20]
    path = cache / f"mixes-{key}-v{CACHE_VERSION}.npz" if cache else None
    label = np.array([classes.index(data[t].label) for t, _, _, _ in plan])
    tcl = np.array([t for t, _, _, _ in plan])
    bcl = np.array([b for _, b, _, _ in plan])
    snrs = np.array([s for _, _, s, _ in plan])
    if path is not None and path.is_file():
        with np.load(path) as z:
            return Mixes(z["emb"], label, tcl, bcl, snrs)
    loud = {t: _loudest(_decode(data[t].clip, card.sample_rate), win, hop) for t in sorted(set(tcl.tolist()))}
    by_bg: dict[int, list[int]] = {}
    for n, (_, b, _, _) in enumerate(plan):
        by_bg.setdefault(b, []).append(n)
    mixed: list[np.ndarray] = [np.zeros(0, np.float32)] * len(plan)
    prog = Stage(len(by_bg), "mixing threats into background")
    for b, rows in by_bg.items():
        x = _decode(data[b].clip, card.sample_rate)
        for n in rows:
            t, _, snr, off = plan[n]
            start = int(off * max(0, x.size - win))
            bg = np.zeros(win, np.float32)
            piece = x[start : start + win]
            bg[: piece.size] = piece
            fg = loud[t]
            rb, rf = _rms(bg), _rms(fg)
            g = rb * 10 ** (snr / 20) / rf if rb > 0 and rf > 0 else 1.0
            m = bg + g * fg
            peak = float(np.abs(m).max()) if m.size else 0.0
            mixed[n] = (m / peak * 0.99 if peak > 0.99 else m).astype(np.float32)
        prog.step()
    prog.close()
    emb = _embed(model, mixed)[0]
    if path is not None:
        _save(path, emb=emb)
    log(f"{len(plan)} mixes ({per_clip} per threat clip, SNR {snr_db[0]:g}-{snr_db[1]:g} dB)")
    return Mixes(emb, label, tcl, bcl, snrs)
