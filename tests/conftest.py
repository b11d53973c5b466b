"""Shared fixtures. Test audio is generated here; nothing depends on ../shared/audio."""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from sentinela.adapters.model import BirdNetOnnx
from sentinela.domain.card import ModelCard, load_card
from sentinela_tools.devtools import tiny_model
from sentinela_tools.devtools.template_reader import load_template, table_specs

REPO = Path(__file__).resolve().parents[1]
OFFLINE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def mocked_aws(mp: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's in-process mock (narrow unit tests only) with fake credentials and none of this machine's
    endpoint or profile; yields a DynamoDB client."""
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        mp.delenv(var, raising=False)
    for var, value in OFFLINE_AWS.items():
        mp.setenv(var, value)
    with moto.mock_aws():
        yield boto3.client("dynamodb")


@functools.cache
def data_table_spec() -> dict[str, Any]:
    """CreateTable arguments of template.yaml's DataTable (keys and index as deployed)."""
    return dict(table_specs(load_template(REPO / "template.yaml"))["DataTable"]["create_table"])

SR = 48000


@pytest.fixture(scope="session")
def tiny_card_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.build(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_card(tiny_card_path: Path) -> ModelCard:
    return load_card(tiny_card_path)


@pytest.fixture(scope="session")
def tiny(tiny_card: ModelCard) -> BirdNetOnnx:
    return BirdNetOnnx(tiny_card, threads=1)


def impulse(seconds: float = 10.0, at: float = 4.0, sr: int = SR, amp: float = 0.9, floor: float = 3e-4) -> np.ndarray:
    """A gun-like impulse over a recorder's faint noise floor (-70 dBFS): the tiny model's gunshot. Without
    any floor, a window holding only a 4-ms pulse in digital silence is no sound at all to the activity gate
    (sentinela.domain.activity), as a lone click is."""
    x = (floor * np.random.default_rng(int(at * 1000)).standard_normal(int(seconds * sr))).astype(np.float32)
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


def unknown_length_flac(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total_samples (and MD5) zeroed: "length unknown", as an encoder
    writing to a pipe leaves it. STREAMINFO is the first metadata block, right after "fLaC" and its
    4-byte header; total_samples is its 36 bits from byte 13 (low nibble) to 17."""
    assert flac[:4] == b"fLaC" and flac[4] & 0x7F == 0
    d = bytearray(flac)
    d[8 + 13] &= 0xF0
    d[8 + 14 : 8 + 18] = b"\0\0\0\0"
    d[8 + 18 : 8 + 34] = b"\0" * 16
    return bytes(d)
