"""The hop probe (sentinela_tools.devtools.boundary_probe): its cutting and mixing, and one run of the
whole command on generated clips through the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sentinela_tools.devtools import boundary_probe as bp
from tests.conftest import SR, impulse, noise


def test_loudest_cuts_the_second_around_the_burst_and_keeps_a_short_clip_whole() -> None:
    x = noise(6.0, amp=0.01, sr=1000)
    x[2500:2600] = 0.9
    cut = bp.loudest(x, 1000, 1.0)
    assert cut.size == 1000 and np.count_nonzero(cut == np.float32(0.9)) == 100
    short = x[:400]
    assert np.array_equal(bp.loudest(short, 1000, 1.0), short)


def test_placements_are_inside_a_window_and_on_a_boundary_of_the_window_grid() -> None:
    assert bp.placements(15.0, 3.0) == {"centred": 4.5, "boundary": 6.0}
    with pytest.raises(ValueError, match="four windows"):
        bp.placements(10.0, 3.0)


def test_mix_loops_the_background_and_adds_the_event_centred_where_asked() -> None:
    background = np.arange(4, dtype=np.float32)
    out = bp.mix(background, np.ones(2, np.float32), 0.005, 1000, 10)
    assert out.tolist() == [0, 1, 2, 3, 1, 2, 2, 3, 0, 1]


def test_the_command_counts_hits_per_hop_and_leaves_out_backgrounds_that_alert_alone(
        tiny_card_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for label in ("gunshot", "background"):
        (tmp_path / "data" / label).mkdir(parents=True)
    for i in range(3):
        sf.write(tmp_path / "data" / "gunshot" / f"g{i}.wav", impulse(5.0, at=1.0 + i), SR)
    sf.write(tmp_path / "data" / "background" / "b0.wav", noise(5.0, amp=3e-4, seed=1), SR)
    # This one holds an impulse of its own: the tiny model alerts gunshot on it without any event.
    sf.write(tmp_path / "data" / "background" / "b1.wav", impulse(5.0, at=2.0), SR)
    out = tmp_path / "probe.json"
    code = bp.main([str(tmp_path / "data"), "--card", str(tiny_card_path), "--threads", "1",
                    "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["events"] == 3 and report["backgrounds"] == 2
    # Events 0 and 2 are mixed into b0, event 1 into b1, which alerts by itself and is left out.
    assert report["eligible"] == {"1.5": 2, "3": 2}
    assert report["background_alerting"] == {"1.5": 1, "3": 1}
    # The tiny model hears its 4-ms pulse whole in some window at either hop, wherever it falls.
    assert report["hits"] == {"1.5": {"centred": 2, "boundary": 2}, "3": {"centred": 2, "boundary": 2}}
    assert "boundary" in capsys.readouterr().out


def test_a_class_the_card_does_not_have_is_one_line_and_exit_2(
        tiny_card_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bp.main([str(tmp_path), "--card", str(tiny_card_path), "--class", "drone"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a threat class" in err[0]
