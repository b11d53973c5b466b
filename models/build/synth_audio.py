"""Deterministic test windows for checking the ONNX model against the TFLite original.

Generated, not recorded, so the build needs no data files and every machine checks the same inputs.
They are chosen to drive the front end and the classifier through different regimes (tonal, broadband,
impulsive, harmonic, modulated, near-silent), including sounds loosely like the threats the rangers
care about. They test the conversion, not the model's accuracy: BirdNET does not score synthetic
"gunshots" as Gun. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 48_000
WINDOW_SECONDS = 3.0
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_SECONDS)  # 144000, the model's input length
SEED = 20240
# Every real recording has a noise floor (microphone and preamp self-noise, at best around -80 dBFS on
# field recorders) and is quantised to 16 bits. Without one, synthetic tones and clicks leave long runs
# of digital zeros, where BirdNET's power-law magnitude scaling turns float32 rounding noise of ~1e-7
# into logit differences of ~0.3 between any two correct implementations. -90 dBFS is below any
# recorder, so the check stays strict while testing the regime the model is deployed in.
NOISE_FLOOR_DBFS = -90.0
PCM_LEVELS = 32767


@dataclass(frozen=True)
class AudioWindow:
    name: str
    samples: np.ndarray  # float32 [WINDOW_SAMPLES] in [-1, 1]
    # Degenerate inputs (digitally silent or digitally pure, no noise floor) put the spectrogram on
    # exact zeros, where rounding order alone can reorder the top 5: reported, not gated on.
    degenerate: bool = False


_T = np.arange(WINDOW_SAMPLES) / SAMPLE_RATE


def _sine(freq_hz: np.ndarray | float) -> np.ndarray:
    """Sine with a (possibly time-varying) instantaneous frequency, phase-continuous."""
    freq = np.broadcast_to(np.asarray(freq_hz, dtype=np.float64), _T.shape)
    return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)


def _saw(freq_hz: np.ndarray | float) -> np.ndarray:
    freq = np.broadcast_to(np.asarray(freq_hz, dtype=np.float64), _T.shape)
    return 2.0 * ((np.cumsum(freq) / SAMPLE_RATE) % 1.0) - 1.0


def _place(out: np.ndarray, start_s: float, burst: np.ndarray) -> None:
    start = int(start_s * SAMPLE_RATE)
    end = min(start + len(burst), len(out))
    out[start:end] += burst[: end - start]


def _bandpass_noise(rng: np.random.Generator, lo_hz: float, hi_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(WINDOW_SAMPLES))
    freqs = np.fft.rfftfreq(WINDOW_SAMPLES, 1 / SAMPLE_RATE)
    spectrum[(freqs < lo_hz) | (freqs > hi_hz)] = 0
    noise = np.fft.irfft(spectrum, WINDOW_SAMPLES)
    return noise / np.abs(noise).max()


def _brown_noise(rng: np.random.Generator) -> np.ndarray:
    walk = np.cumsum(rng.standard_normal(WINDOW_SAMPLES))
    walk -= np.convolve(walk, np.ones(480) / 480, mode="same")  # remove the drift below ~100 Hz
    return walk / np.abs(walk).max()


def _bird_chirps(rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(WINDOW_SAMPLES)
    n = int(0.15 * SAMPLE_RATE)
    tt = np.arange(n) / SAMPLE_RATE
    for k in range(6):
        f0 = 6000 + 300 * rng.standard_normal()
        chirp = np.sin(2 * np.pi * np.cumsum(f0 - 15_000 * tt) / SAMPLE_RATE) * np.hanning(n)
        _place(out, 0.2 + 0.45 * k, chirp)
    return 0.5 * out


def _trill() -> np.ndarray:
    # A 4 kHz tone gated 18 times a second, like an insect or a trilling bird.
    gate = (np.sin(2 * np.pi * 18 * _T) > 0.3).astype(np.float64)
    return 0.4 * _sine(4000 + 300 * np.sin(2 * np.pi * 18 * _T)) * gate


def _whistle_harmonics() -> np.ndarray:
    f0 = 2200 + 400 * np.sin(2 * np.pi * 1.5 * _T)
    return 0.3 * (_sine(f0) + 0.5 * _sine(2 * f0) + 0.25 * _sine(3 * f0))


def _gunshots(rng: np.random.Generator) -> np.ndarray:
    # Muzzle-blast-like: a broadband burst with a fast exponential decay and a late, weaker echo.
    out = np.zeros(WINDOW_SAMPLES)
    n = int(0.4 * SAMPLE_RATE)
    for start in (0.5, 2.0):
        burst = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.03 * SAMPLE_RATE))
        _place(out, start, 0.9 * burst)
        _place(out, start + 0.12, 0.25 * burst)
    return out


def _impulses() -> np.ndarray:
    # Single-sample clicks: the flattest possible spectrum, and a hard case for framing/windowing.
    out = np.zeros(WINDOW_SAMPLES)
    out[:: SAMPLE_RATE // 4] = 0.95
    return out


def _engine(rng: np.random.Generator) -> np.ndarray:
    body = (0.5 * _saw(35) + 0.25 * _saw(70.5)) * (1 + 0.3 * np.sin(2 * np.pi * 2 * _T))
    return 0.6 * body + 0.03 * rng.standard_normal(WINDOW_SAMPLES)


def _chainsaw(rng: np.random.Generator) -> np.ndarray:
    # Two-stroke whine: ~130 Hz sawtooth revving up and down, with broadband noise.
    rev = 130 + 40 * np.clip(np.sin(2 * np.pi * 0.4 * _T), 0, None)
    return 0.6 * _saw(rev) + 0.2 * rng.standard_normal(WINDOW_SAMPLES)


def _am_noise(rng: np.random.Generator) -> np.ndarray:
    return 0.5 * _bandpass_noise(rng, 300, 6000) * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * _T))


def _voice_like() -> np.ndarray:
    # A 120 Hz glottal pulse train shaped by two vowel formants, syllables 4 times a second.
    f0 = 120 + 15 * np.sin(2 * np.pi * 0.8 * _T)
    source = np.maximum(_saw(f0), 0) ** 3
    voiced = np.zeros(WINDOW_SAMPLES)
    for formant, gain in ((700, 1.0), (1200, 0.6)):
        voiced += gain * source * _sine(formant)
    syllables = np.clip(np.sin(2 * np.pi * 2 * _T), 0, None)
    return 0.5 * voiced * syllables


def _barks(rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(WINDOW_SAMPLES)
    n = int(0.18 * SAMPLE_RATE)
    tt = np.arange(n) / SAMPLE_RATE
    envelope = np.exp(-tt / 0.05) * (1 - np.exp(-tt / 0.005))
    for start in (0.3, 0.75, 1.9, 2.3):
        f0 = 450 + 50 * rng.standard_normal()
        bark = sum(np.sin(2 * np.pi * h * f0 * tt) / h for h in range(1, 8)) + 0.3 * rng.standard_normal(n)
        _place(out, start, 0.6 * envelope * bark)
    return out


def _siren() -> np.ndarray:
    return 0.5 * _sine(900 + 300 * np.sin(2 * np.pi * 0.5 * _T))


def _chirps_in_noise(rng: np.random.Generator) -> np.ndarray:
    return _bird_chirps(rng) + 0.15 * _brown_noise(rng)


def as_recorded(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a recorder would deliver: signal + self-noise floor, clipped, 16-bit quantised."""
    floor = 10 ** (NOISE_FLOOR_DBFS / 20) * rng.standard_normal(signal.shape)
    return np.round(np.clip(signal + floor, -1.0, 1.0) * PCM_LEVELS) / PCM_LEVELS


def verification_windows(seed: int = SEED) -> list[AudioWindow]:
    """The fixed verification set: same seed, same samples, on any machine with the same numpy."""
    rng = np.random.default_rng(seed)
    floor_rng = np.random.default_rng(seed + 1)  # separate stream: adding a window moves no floor
    makers: list[tuple[str, Callable[[], np.ndarray], bool]] = [
        ("digital_silence", lambda: np.zeros(WINDOW_SAMPLES), True),
        ("digital_tone_3kHz", lambda: 0.5 * _sine(3000.0), True),
        ("recorder_floor_only", lambda: np.zeros(WINDOW_SAMPLES), False),
        ("white_noise_-60dBFS", lambda: 1e-3 * rng.standard_normal(WINDOW_SAMPLES), False),
        ("white_noise_loud", lambda: 0.3 * rng.standard_normal(WINDOW_SAMPLES), False),
        ("brown_noise", lambda: 0.5 * _brown_noise(rng), False),
        ("tone_440Hz", lambda: 0.5 * _sine(440.0), False),
        ("tone_3kHz", lambda: 0.5 * _sine(3000.0), False),
        ("sweep_500Hz-12kHz", lambda: 0.4 * _sine(500 + (11_500 / WINDOW_SECONDS) * _T), False),
        ("bird_chirps_6-4kHz", lambda: _bird_chirps(rng), False),
        ("trill_4kHz", _trill, False),
        ("whistle_harmonics", _whistle_harmonics, False),
        ("gunshot_like_bursts", lambda: _gunshots(rng), False),
        ("impulse_clicks", _impulses, False),
        ("engine_like_35Hz", lambda: _engine(rng), False),
        ("chainsaw_like_130Hz", lambda: _chainsaw(rng), False),
        ("buzz_square_200Hz", lambda: np.sign(_sine(200.0)), False),
        ("am_bandpass_noise", lambda: _am_noise(rng), False),
        ("voice_like_formants", _voice_like, False),
        ("dog_bark_like", lambda: _barks(rng), False),
        ("siren_like", _siren, False),
        ("chirps_in_brown_noise", lambda: _chirps_in_noise(rng), False),
    ]
    windows = []
    for name, make, degenerate in makers:
        signal = make()
        samples = np.clip(signal, -1.0, 1.0) if degenerate else as_recorded(signal, floor_rng)
        windows.append(AudioWindow(name, samples.astype(np.float32), degenerate))
    return windows
