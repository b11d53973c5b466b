"""The recorder side without a network: FLAC is lossless, times come from names, the form is well made;
and the device secret hashing."""

from __future__ import annotations

import email.parser
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sentinela.services.devices import hash_secret, new_secret, verify_secret
from sentinela.services.presign import Refused, parse_recorded_at
from sentinela_tools.uploader import MultipartBody, recorded_at, wav_to_flac


@pytest.mark.parametrize(("subtype", "dtype", "peak"), [("PCM_16", "int16", 2**15), ("PCM_24", "int32", 2**23)])
def test_flac_round_trip_is_bit_exact(tmp_path: Path, subtype: str, dtype: str, peak: int) -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(-peak, peak, size=(48000 * 2, 2)).astype(np.int64)
    x[:10] = [-peak, peak - 1]  # the extremes survive too
    wav, flac = tmp_path / "a.wav", tmp_path / "a.flac"
    if dtype == "int32":
        sf.write(wav, (x << 8).astype(np.int32), 48000, subtype=subtype)
    else:
        sf.write(wav, x.astype(np.int16), 48000, subtype=subtype)
    assert wav_to_flac(wav, flac)
    a, sra = sf.read(wav, dtype=dtype)
    b, srb = sf.read(flac, dtype=dtype)
    assert sra == srb == 48000 and np.array_equal(a, b)
    assert sf.info(str(flac)).format == "FLAC" and sf.info(str(flac)).subtype == subtype


def test_float_wav_is_sent_as_it_is(tmp_path: Path) -> None:
    wav = tmp_path / "f.wav"
    sf.write(wav, np.zeros(1000, np.float32), 48000, subtype="FLOAT")
    assert not wav_to_flac(wav, tmp_path / "f.flac") and not (tmp_path / "f.flac").exists()


def test_recording_time_from_name_or_mtime(tmp_path: Path) -> None:
    assert recorded_at(Path("20261128T131400Z.wav")) == datetime(2026, 11, 28, 13, 14, tzinfo=UTC)
    assert recorded_at(Path("rec1_20261128_131400.WAV")) == datetime(2026, 11, 28, 13, 14, tzinfo=UTC)
    p = tmp_path / "clip.wav"
    p.write_bytes(b"x")
    os.utime(p, (1_800_000_000, 1_800_000_000))
    assert recorded_at(p) == datetime.fromtimestamp(1_800_000_000, UTC)


def test_presign_time_forms() -> None:
    want = datetime(2026, 11, 28, 13, 14, tzinfo=UTC)
    assert parse_recorded_at("20261128T131400Z") == want
    assert parse_recorded_at("2026-11-28T10:14:00-03:00") == want
    with pytest.raises(Refused, match="no time zone"):
        parse_recorded_at("2026-11-28T13:14:00")


def test_multipart_body_fields_first_file_last(tmp_path: Path) -> None:
    f = tmp_path / "a.flac"
    f.write_bytes(b"fLaC" + bytes(range(256)) * 10)
    body = MultipartBody({"key": "clips/s/d/x.flac", "Content-MD5": "abc=="}, f, "audio/flac")
    raw = body.read(7) + body.read()
    assert len(raw) == len(body)
    msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + body.content_type.encode() + b"\r\n\r\n" + raw)
    parts = msg.get_payload()
    assert isinstance(parts, list)
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["key", "Content-MD5", "file"]
    assert parts[2].get_payload(decode=True) == f.read_bytes()


def test_secret_hash_is_salted_and_verified_in_constant_time() -> None:
    s = new_secret()
    a, b = hash_secret(s), hash_secret(s)
    assert a["salt"] != b["salt"] and a["secret_hash"] != b["secret_hash"]  # per-device salt
    assert s not in str(a)
    assert verify_secret(s, a) and verify_secret(s, b)
    assert not verify_secret(s + "x", a) and not verify_secret("", a)
    assert not verify_secret(s, {}) and not verify_secret(s, a | {"salt": "%%%"})
