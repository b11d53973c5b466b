"""`sentinela bench --quick` runs end to end on the tiny model and writes every figure it promises.

Benchmarks are not tests: nothing here asserts a speed, only that the figures exist and make sense.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from sentinela_tools.bench import TARGETS, synth, write_clip
from sentinela_tools.cli import main
from sentinela_tools.devtools.tiny_model import build


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    card = build(tmp_path / "model")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--quick", "--skip-tflite", "--skip-memory", "--json-out", str(out), "--card", str(card)])
    assert rc == 0
    r = json.loads(out.read_text())
    for key in ("rtf_1thread", "rtf_2threads", "cold_start_s"):
        assert r[key] > 0, key
    assert {c["threads"] for c in r["rtf_configs"]} == {1, 2}
    assert all(c["rtf"] > 0 and c["rtf_48000hz"] > 0 and c["rtf_44100hz"] > 0 for c in r["rtf_configs"])
    assert r["rtf_2threads_batch"] in {c["batch"] for c in r["rtf_configs"]}
    # Skipped parts are there, as null, with the reason.
    for key in ("tflite_rtf", "speedup_vs_tflite", "peak_rss_mb_10min", "peak_rss_mb_2h"):
        assert key in r and r[key] is None, key
    assert "skipped" in r["tflite"]["reason"]
    m = r["machine"]
    assert m["onnxruntime"] and m["numpy"] and m["cpu_model"] and isinstance(m["openblas_coretype_set"], bool)
    assert len(r["model"]["sha256"]) == 64
    st = r["stages_2threads"]
    assert st["windows"] > 0 and st["model_s"] > 0 and st["decode_window_s"] > 0
    assert [t["key"] for t in r["targets"]] == [t.key for t in TARGETS]
    status = {t["key"]: t["status"] for t in r["targets"]}
    assert status["speedup_vs_tflite"] == "n/a" and status["rtf_2threads"] in {"PASS", "FALL SHORT"}


def test_missing_tflite_runtime_is_reported_not_raised(tmp_path: Path) -> None:
    card = build(tmp_path / "model")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--quick", "--skip-memory", "--json-out", str(out), "--card", str(card),
               "--tflite-python", str(tmp_path / "no-such-python")])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["tflite_rtf"] is None and r["speedup_vs_tflite"] is None
    assert "no TFLite runtime" in r["tflite"]["reason"]


def test_synthetic_audio_streams_the_same_signal_block_by_block(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "a.flac", 25.0, 44100)
    data, sr = sf.read(path, dtype="float32")
    assert sr == 44100 and len(data) == 25 * 44100
    # The file was written in 10 s blocks; block 2 regenerated alone matches it (16-bit rounding aside).
    block = synth(10 * 44100, 10 * 44100, 44100)
    assert np.max(np.abs(data[10 * 44100 : 20 * 44100] - block)) < 1e-4
    assert 0.01 < float(np.sqrt(np.mean(data**2))) < 0.5 and np.max(np.abs(data)) <= 1.0


def test_bench_refuses_a_missing_card(tmp_path: Path) -> None:
    rc = main(["bench", "--quick", "--skip-tflite", "--skip-memory", "--card", str(tmp_path / "nope.json")])
    assert rc == 2
