"""`sentinela classify` keeps the deployed duration cap (MAX_CLIP_SECONDS), for a header that gives the
length and for a FLAC that gives none (the cap then applies to what is decoded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinela_tools.cli import main
from tests.conftest import encode, noise, unknown_length_flac


@pytest.mark.parametrize("unknown", [False, True])
def test_cli_classify_applies_the_duration_cap(tiny_card_path: Path, tmp_path: Path, unknown: bool,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MAX_CLIP_SECONDS", "20")
    flac = encode(noise(30.0, amp=0.05, sr=8000), 8000, "FLAC")
    long = tmp_path / "long.flac"
    long.write_bytes(unknown_length_flac(flac) if unknown else flac)
    short = tmp_path / "short.flac"
    short.write_bytes(unknown_length_flac(encode(noise(5.0, sr=8000), 8000, "FLAC")))
    assert main(["classify", str(long), str(short), "--card", str(tiny_card_path)]) == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(f"error: {long}: clip is ") and "over the 20 s cap" in line, err
    assert "Traceback" not in err and str(short) in out  # the other file is still classified
