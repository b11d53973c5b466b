"""`sentinela train` then `sentinela eval` on synthetic labelled folders with the tiny test model.

No real audio and no BirdNET: clips are generated here (impulses, tones, noise, silence) and the tiny
model has the real model's interface (INPUT -> Identity logits + a 1024-d ``embedding``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("sklearn")
pytest.importorskip("onnx")

from sentinela_tools.cli import main
from sentinela_tools.devtools import tiny_model
from sentinela_tools.evaluate import LABELS, group_key

SR = 16000


def _clip(kind: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
    n = int(SR * seconds)
    t = np.arange(n) / SR
    if kind == "gunshot":  # a few sharp impulses over faint noise
        x = 0.003 * rng.standard_normal(n)
        for pos in rng.integers(0, n - 400, 3):
            x[pos : pos + 400] += 0.9 * np.exp(-np.arange(400) / 60.0) * rng.choice([-1, 1])
    elif kind == "chainsaw":  # loud sustained buzz
        x = 0.5 * np.sign(np.sin(2 * np.pi * (90 + 10 * rng.random()) * t)) + 0.05 * rng.standard_normal(n)
    elif kind == "engine":  # moderate low tone
        x = 0.25 * np.sin(2 * np.pi * (40 + 5 * rng.random()) * t)
    elif kind == "human_voice":  # short tone bursts
        x = np.zeros(n)
        x[: n // 3] = 0.15 * np.sin(2 * np.pi * 220 * t[: n // 3])
    elif kind == "dog":  # two loud mid bursts
        x = np.zeros(n)
        for start in (0, n // 2):
            x[start : start + SR // 5] = 0.6 * np.sin(2 * np.pi * 600 * t[: SR // 5])
    else:  # background: silence or faint noise
        x = (0.01 * rng.random()) * rng.standard_normal(n)
    return x.astype(np.float32)


MANIFEST_HEAD = "file,label,source_repo,source_path,source_commit,license_note,duration_s,sample_rate,channels\n"


def _dataset(root: Path, per_label: int = 4, seed: int = 7, sources: tuple[str, str] = ("src/a", "src/b")) -> Path:
    """<label>/ folders with a MANIFEST naming two source datasets (half the clips of each label each)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            seconds = 1.0 if label == "human_voice" else 4.0
            name = f"{label}/{label}_{i}.wav"
            sf.write(root / name, _clip(label, rng, seconds), SR)
            rows.append(f"{name},{label},{sources[i % 2]},{name},x,CC0,{seconds},{SR},1\n")
    (root / "MANIFEST.csv").write_text(MANIFEST_HEAD + "".join(rows))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train")
    card = tiny_model.build(base / "model")
    data = _dataset(base / "dev")
    other = _dataset(base / "more", seed=8, sources=("src/b", "src/c"))
    (data / "background" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = base / "model" / "threat_head.onnx"
    rc = main(["train", str(data), str(other), "--out", str(out), "--card", str(card), "--no-cache"])
    assert rc == 0
    return {"base": base, "card": card, "data": data, "other": other, "out": out}


def test_train_writes_head_report_and_card(trained: dict[str, Path]) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(trained["out"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["embedding"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    probs = sess.run(None, {"embedding": np.zeros((3, 1024), np.float32)})[0]
    assert probs.shape == (3, 6) and probs.dtype == np.float32
    card = json.loads(trained["card"].read_text())
    assert card["head"] == {"path": "threat_head.onnx", "input": "embedding", "output": "probabilities",
                            "classes": list(LABELS[:5])}  # column 6 (background) is not a threat rule
    assert card["id"] == "tiny-test-model"  # other keys kept
    for rule in card["threats"].values():
        assert 0 < rule["store"] <= rule["alert"] <= rule["quiet"]["alert"] < 1
        assert rule["operating_point"]["recall"] is not None
    report = json.loads((trained["out"].parent / "training_report.json").read_text())
    assert len(report["data"]["manifest_sha256"]) == 64
    assert report["data"]["per_folder"] == {"dev": 24, "more": 24}
    assert report["data"]["sources"] == 3  # src/b in both folders is one source
    assert [s["file"] for s in report["data"]["skipped"]] == ["dev/background/broken.wav"]
    rows = report["cross_source"]
    assert set(rows) == {"committed", "baseline", "zero-shot (the base model's own labels)"}
    com = rows["committed"]
    assert com["scheme"] == "leave-one-source-out" and set(com["per_source"]) == {"src/a", "src/b", "src/c"}
    # folder to folder: only clips of sources the fitting folder does not hold are scored
    assert com["folder_to_folder"]["dev -> more"]["clips"] == 12  # src/c only
    assert com["folder_to_folder"]["dev -> more"]["left_out_shared_sources"] == ["src/b"]
    assert com["folder_to_folder"]["more -> dev"]["clips"] == 12  # src/a only
    md = (trained["out"].parent / "TRAINING_REPORT.md").read_text()
    for part in ("## Cross-source figures (the headline)", "plain standardised logistic regression",
                 "### Folder to folder", "## Findings", "Retraining on your own clips", "labels export"):
        assert part in md
    # the synthetic classes are easy: even held out by source, the head must separate them
    assert com["min_auc"] >= 0.8


def test_train_is_reproducible_given_the_embeddings(trained: dict[str, Path], tmp_path: Path) -> None:
    card = tiny_model.build(tmp_path / "model")  # the same tiny model, built again
    out = tmp_path / "model" / "threat_head.onnx"
    assert main(["train", str(trained["data"]), str(trained["other"]), "--out", str(out), "--card", str(card),
                 "--no-cache"]) == 0
    assert out.read_bytes() == trained["out"].read_bytes()


def test_signal_free_windows_score_nothing(trained: dict[str, Path], tmp_path: Path) -> None:
    """Digital silence, a one-sample file and a 1 Hz file: no detection, no alert, with a
    head whose every column would otherwise answer (the tiny model has the real model's output shapes)."""
    from sentinela.adapters.model import BirdNetOnnx
    from sentinela.domain.card import load_card, with_alert_override
    from sentinela.services.classify import classify_source

    card = with_alert_override(load_card(trained["card"]), 0.0001)  # any score at all would alert
    model = BirdNetOnnx(card, threads=1)
    files = {"silence.wav": (np.zeros(SR * 5, np.float32), SR), "one_sample.wav": (np.array([0.5], np.float32), SR),
             "one_hz.wav": (np.array([0.9, -0.9, 0.5, -0.2, 0.8], np.float32), 1)}
    for name, (x, rate) in files.items():
        sf.write(tmp_path / name, x, rate)
        out = classify_source(tmp_path / name, model)
        assert out.result.detections == [], name
        assert out.result.alerts == [], name
        assert all(v == 0.0 for v in out.result.max_scores.values()), name
    assert "no_audible_band" in classify_source(tmp_path / "one_hz.wav", model).flags
    # and a window with sound in it is still scored
    noisy = tmp_path / "noise.wav"
    sf.write(noisy, (0.05 * np.random.default_rng(1).standard_normal(SR * 4)).astype(np.float32), SR)
    assert max(classify_source(noisy, model).result.max_scores.values()) > 0


def test_activity_gate_on_generated_windows() -> None:
    from sentinela.domain.activity import has_signal

    w = 144000
    t = np.arange(w) / 48000
    rng = np.random.default_rng(3)
    x = np.zeros((6, w), np.float32)
    x[1] = 0.5  # DC
    x[2, 1000] = 1.0  # one click
    x[3] = 1e-3 * rng.standard_normal(w)  # faint noise (-60 dBFS)
    x[4] = 0.01 * np.sin(2 * np.pi * 1000 * t)  # a faint tone
    x[5, 50000:52400] = 0.5 * np.exp(-np.arange(2400) / 300.0)  # a 50-ms impulse in silence (a far shot)
    assert has_signal(x).tolist() == [False, False, False, True, True, True]


def test_several_folders_sources_and_aliases(tmp_path: Path) -> None:
    from sentinela_tools.evaluate import scan_dataset, source_dataset
    from sentinela_tools.training.data import load_folders

    a = _dataset(tmp_path / "a", per_label=2)
    b = _dataset(tmp_path / "b", per_label=2)
    clips = load_folders([a, b])
    assert len(clips) == 24 and {f for f, _ in clips} == {"a", "b"}
    assert all(c.rel.startswith(f"{f}/") for f, c in clips)
    assert {c.source for _, c in clips} == {"src/a", "src/b"}
    # one public set under two repositories is one source
    assert source_dataset("karolpiczak/ESC-10") == source_dataset("caitlinnguyen0/ESC-50")
    assert source_dataset("Alejandro-131004/AC-II") == source_dataset(
        "EmanueleMusumeci/UrbanSound8K-CNN-sound-classification")
    # without a manifest the folder is the source
    (tmp_path / "c" / "dog").mkdir(parents=True)
    sf.write(tmp_path / "c" / "dog" / "x.wav", np.zeros(100, np.float32), SR)
    assert scan_dataset(tmp_path / "c")[0].source == "c"


def test_eval_reports_metrics_and_skips_unreadable(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    plots = tmp_path / "plots"
    rc = main(["eval", str(trained["data"]), "--card", str(trained["card"]), "--json-out", str(out),
               "--plots", str(plots)])
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("classes", "accuracy", "macro_recall", "background_false_alarm_rate", "false_alarms_per_hour",
                "confusion"):
        assert key in res
    assert set(res["classes"]) == set(LABELS[:5])
    assert {"n", "auc", "precision", "recall"} <= set(res["classes"]["gunshot"])
    assert res["classes"]["gunshot"]["n"] == 4
    assert set(res["confusion"]) == set(LABELS)
    assert sum(sum(row.values()) for row in res["confusion"].values()) == 24
    assert res["skipped"][0]["file"] == "background/broken.wav"
    assert "broken.wav" in capsys.readouterr().err
    assert (plots / "confusion_matrix.png").stat().st_size > 0
    assert (plots / "pr_curves.png").stat().st_size > 0
    # the synthetic classes are easy: the trained head must actually separate them
    assert res["accuracy"] >= 0.8
    assert res["operating_point"] == "balanced"
    card = json.loads(trained["card"].read_text())
    assert all(rule["quiet"]["alert"] >= rule["alert"] for rule in card["threats"].values())
    quiet_out = tmp_path / "quiet.json"
    assert main(["eval", str(trained["data"]), "--card", str(trained["card"]), "--json-out", str(quiet_out),
                 "--operating-point", "quiet"]) == 0
    quiet = json.loads(quiet_out.read_text())
    assert quiet["operating_point"] == "quiet"
    for c, v in quiet["classes"].items():  # the quiet point never alerts more often
        assert v["alert"] == card["threats"][c]["quiet"]["alert"]
        assert v["recall"] <= res["classes"][c]["recall"]
    assert quiet["background_false_alarm_rate"] <= res["background_false_alarm_rate"]


@pytest.mark.parametrize("cmd", ["train", "eval"])
def test_bad_folder_name_lists_allowed_labels(
    cmd: str, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gunshot").mkdir()
    (tmp_path / "birds").mkdir()
    rc = main([cmd, str(tmp_path), "--card", str(trained["card"])])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "birds" in err
    assert "gunshot, chainsaw, engine, human_voice, dog, background" in err
    assert "Traceback" not in err


def test_missing_folder_is_a_clean_error(trained: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nope"), "--card", str(trained["card"])]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_group_key_keeps_one_recording_together() -> None:
    assert group_key("103258-5-0-11") == group_key("103258-5-0-2")  # UrbanSound8K slices
    assert group_key("1-19898-A") == group_key("1-19898-B")  # ESC takes
    assert group_key("3_george_0") == group_key("7_george_0")  # one speaker
    assert group_key("birds_t000-020") == group_key("birds_t025-045")  # cuts of one recording
    assert group_key("gunshot_1") != group_key("gunshot_2")


def test_thresholds_from_scores_and_the_quiet_point() -> None:
    from sentinela_tools.training.thresholds import QUIET_BUDGET, at_recall, choose_thresholds, quiet_thresholds

    rng = np.random.default_rng(4)
    labels = ["gunshot"] * 20 + ["background"] * 100
    s = np.zeros((120, 5))
    s[:20, 0] = rng.uniform(0.6, 1.0, 20)  # gunshots score high
    s[20:, 0] = rng.uniform(0.0, 0.5, 100)  # background low...
    s[20:23, 0] = 0.95  # ...but for three loud ones
    thr = choose_thresholds(s, labels)
    assert 0.5 < thr["gunshot"] < 0.6  # the middle of the gap between the two populations
    assert thr["chainsaw"] == 0.99  # no positives: never alerts
    q = quiet_thresholds(s, labels, thr)
    assert q["gunshot"] > 0.95 and all(q[c] >= thr[c] for c in thr)
    assert (s[20:, 0] >= q["gunshot"]).mean() <= QUIET_BUDGET / 5
    r = at_recall(s, labels, 0.9)
    assert (s[:20, 0] >= r["gunshot"]).mean() >= 0.9


def test_baseline_is_scikit_learns_plain_regression_and_the_head_exports_exactly() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sentinela_tools.evaluate import LabelledClip
    from sentinela_tools.training.embed import Embedded
    from sentinela_tools.training.export import check_onnx, head_onnx_bytes
    from sentinela_tools.training.fit import HEAD_CLASSES, fit_head
    from sentinela_tools.training.recipe import BASELINE, COMMITTED

    rng = np.random.default_rng(5)
    data = []
    for n in range(36):
        lab = HEAD_CLASSES[n % 6]
        emb = (rng.standard_normal((3, 16)) + HEAD_CLASSES.index(lab)).astype(np.float32)
        clip = LabelledClip(f"{lab}/{n}.wav", Path("x"), lab, f"g{n}", f"s{n % 2}")
        data.append(Embedded("d", clip, "sha", 4.0, 16000, emb, np.zeros((3, 5), np.float32),
                             signal=np.ones(3, bool)))
    head = fit_head(data, list(range(36)), None, BASELINE)
    x = np.concatenate([e.emb for e in data])
    y = np.repeat([HEAD_CLASSES.index(e.label) for e in data], 3)
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, tol=1e-4)).fit(x, y)
    np.testing.assert_allclose(head.predict(x), ref.predict_proba(x), atol=2e-3)  # solver tolerance
    for r in (BASELINE, COMMITTED):
        h = fit_head(data, list(range(36)), None, r)
        assert check_onnx(head_onnx_bytes(h), h, x) < 1e-5
    # blended with base-model rows: still one small graph computing exactly what training measured
    from dataclasses import replace

    from sentinela_tools.training.fit import Blend, blend_scores

    bw, bb = rng.standard_normal((16, 5)), rng.standard_normal(5)
    a = np.array([1.0, 0.75, 0.5, 0.25, 0.0])
    blended = replace(head, blend=Blend(a, bw, bb))
    p = blended.predict(x)
    np.testing.assert_array_equal(p[:, 5], head.predict(x)[:, 5])  # background untouched
    np.testing.assert_allclose(p[:, 0], head.predict(x)[:, 0], atol=1e-6)  # a = 1: the head alone
    z = np.clip(x.astype(np.float64) @ bw + bb, -15, 15)
    np.testing.assert_allclose(p[:, 4], 1 / (1 + np.exp(-z[:, 4])), atol=1e-6)  # a = 0: the base label alone
    np.testing.assert_allclose(p[:, :5], blend_scores(head.predict(x), z, a), atol=1e-6)
    assert check_onnx(head_onnx_bytes(blended), blended, x) < 1e-5


def test_card_refuses_a_quiet_threshold_below_the_alert_threshold(tmp_path: Path) -> None:
    from sentinela.domain.card import CardError, load_card

    card = tiny_model.build(tmp_path / "m")
    raw = json.loads(card.read_text())
    rule = next(iter(raw["threats"].values()))
    rule["quiet"] = {"alert": max(0.0, rule["alert"] - 0.1)}
    card.write_text(json.dumps(raw))
    with pytest.raises(CardError, match=r"quiet\.alert .* is below its alert threshold"):
        load_card(card)
    rule["quiet"] = {"alert": min(1.0, rule["alert"] + 0.05)}
    card.write_text(json.dumps(raw))
    name = next(iter(raw["threats"]))
    assert load_card(card).threats[name].quiet == min(1.0, rule["alert"] + 0.05)


