"""Shared fixtures. Test audio is generated here; nothing depends on ../shared/audio."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sentinela.card import ModelCard, load_card
from sentinela.devtools import tiny_model
from sentinela.model import Model

SR = 48000


@pytest.fixture(scope="session")
def tiny_card_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.build(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_card(tiny_card_path: Path) -> ModelCard:
    return load_card(tiny_card_path)


@pytest.fixture(scope="session")
def tiny(tiny_card: ModelCard) -> Model:
    return Model(tiny_card, threads=1)


def impulse(seconds: float = 10.0, at: float = 4.0, sr: int = SR, amp: float = 0.9) -> np.ndarray:
    """A gun-like impulse in a quiet forest: the tiny model's gunshot.

    On a -90 dBFS noise floor, as on any recorder: on digital zeros the click alone holds signal in one
    or two activity frames depending on where windows fall, so the activity gate kept some of the
    windows that hear it and not others (tests that count alerting windows failed at 41be2c4)."""
    x = (10 ** (-90 / 20) * np.random.default_rng(90).standard_normal(int(seconds * sr))).astype(np.float32)
    i = int(at * sr)
    x[i : i + sr // 240] = amp
    return x


def tone(seconds: float = 6.0, freq: float = 300.0, amp: float = 0.8, sr: int = SR) -> np.ndarray:
    """A loud sustained tone: the tiny model's chainsaw."""
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float = 6.0, amp: float = 0.05, sr: int = SR, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def encode(x: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()
