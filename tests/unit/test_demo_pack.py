"""The demo pack committed in demo/audio: within the size the shared audio's rules allow, every clip
attributed; with the real model, the demo on it opens incidents and sends texts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentinela_tools.demo import find_audio

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "demo" / "audio"


def test_pack_fits_the_rules_and_is_attributed() -> None:
    clips = find_audio(PACK)
    assert 1 <= len(clips) <= 12
    assert sum(p.stat().st_size for p in clips) <= 3_000_000
    attribution = (PACK / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for p in clips:
        row = next((line for line in attribution.splitlines() if f"`{p.relative_to(PACK).as_posix()}`" in line), "")
        assert row, f"{p} is not in ATTRIBUTION.md"
        assert any(lic in row for lic in ("CC BY", "CC-BY", "CC0", "public domain", "Public Domain")), row
    labels = {p.parent.name for p in clips}
    assert labels == {"gunshot", "chainsaw", "engine", "human_voice", "dog", "background"}


@pytest.mark.realmodel
def test_demo_on_the_pack_opens_incidents_and_texts() -> None:
    # The repo's own card, not the tests' (MODEL_CARD points the suite at the tiny model).
    if not (REPO / "models" / "dist" / "birdnet_v24.onnx").exists():
        pytest.skip("the built BirdNET model is absent (make model)")
    # A process of its own: the handlers keep their model loaded, and earlier tests load the tiny one.
    run = subprocess.run([sys.executable, "-m", "sentinela_tools.cli", "demo", "--audio", str(PACK), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=600, env=os.environ | {"MODEL_CARD": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(run.stdout)
    assert res["clips_processed"] == len(find_audio(PACK))
    opened = {i["class"] for i in res["incidents"]}
    assert {"gunshot", "chainsaw", "dog"} <= opened, opened
    assert res["sms"] and all(m["segments"] <= 2 for i in res["incidents"] for m in i["sms"])


def test_progress_is_silent_off_a_terminal_and_shows_an_eta_on_one() -> None:
    from sentinela_tools.progress import progress

    quiet = io.StringIO()
    with progress(total=3, desc="x", stream=quiet) as bar:
        bar.update(1)
    assert quiet.getvalue() == ""
    pytest.importorskip("tqdm")
    shown = io.StringIO()
    with progress(total=4, desc="classified", unit="clip", stream=shown, enabled=True) as bar:
        bar.set_done(2)
        bar.set_done(1)  # counts only go forward
        assert bar._bar.n == 2  # type: ignore[attr-defined]
    assert "classified" in shown.getvalue() and "/4" in shown.getvalue()
