"""`sentinela demo --audio DIR` over a folder mixing good recordings with broken files: every broken file is
reported rejected with its reason, the good ones are processed and alert (issue 6's "done when")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sentinela_tools.cli import main
from tests.conftest import SR, encode, impulse, noise, tone

pytestmark = pytest.mark.integration


def test_demo_reports_broken_files_and_still_alerts_on_good_ones(tiny_card_path: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "field"
    (d / "good").mkdir(parents=True)
    (d / "broken").mkdir()
    (d / "good" / "shot.wav").write_bytes(encode(impulse()))
    (d / "good" / "saw.flac").write_bytes(encode(tone(6.0), SR, "FLAC"))
    (d / "good" / "quiet.ogg").write_bytes(encode(noise(4.0), SR, "OGG", "VORBIS"))
    (d / "good" / "flac-named.wav").write_bytes(encode(impulse(), SR, "FLAC"))  # decoded by content
    nan = noise(4.0)
    nan[SR] = np.nan
    wav = encode(noise(4.0))
    broken = {
        "broken/empty.wav": (b"", "empty object (0 bytes)"),
        "broken/random.wav": (np.random.default_rng(0).bytes(20000), "unreadable audio: Format not recognised"),
        "broken/cut-header.wav": (wav[:20], "unreadable audio: Error in WAV/W64/RF64 file"),
        "broken/header-only.wav": (wav[:44], "truncated: the header declares 4.0 s of audio"),
        "broken/notes.flac": (b"field notes, not audio\n" * 50, "unreadable audio: Format not recognised"),
        "broken/nan.wav": (encode(nan, SR, "WAV", "FLOAT"), "1 non-finite samples (NaN/Inf) from 1.0 s"),
    }
    for name, (data, _) in broken.items():
        (d / name).write_bytes(data)
    out = tmp_path / "demo.json"
    assert main(["demo", "--audio", str(d), "--card", str(tiny_card_path), "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["clips_uploaded"] == 10 and res["clips_rejected"] == len(broken) and res["clips_processed"] == 4
    rejected = {r["file"]: r["reason"] for r in res["rejected"]}
    assert set(rejected) == set(broken)
    for name, (_, reason) in broken.items():
        assert rejected[name].startswith(reason), (name, rejected[name])
        assert f"rejected: {name}: {rejected[name]}" in printed
    alerted = {a["file"]: a["threat"] for a in res["alerts"]}
    assert alerted.get("good/shot.wav") == "gunshot" and alerted.get("good/flac-named.wav") == "gunshot"
    assert alerted.get("good/saw.flac") == "chainsaw" and "good/quiet.ogg" not in alerted
    assert res["sms"], "the good clips' alerts were texted"
    # The demo ends with what `sentinela status` shows ops.
    (site,) = res["status"]["sites"]
    assert site["clips_24h"] == {"processed": 4, "rejected": len(broken)}
    assert "dead letters waiting: ClassifyDLQ 0, NotifyDLQ 0" in printed
