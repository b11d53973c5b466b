"""`sentinela train` then `sentinela eval` on synthetic labelled folders with the tiny test model.

No real audio and no BirdNET: clips are generated here (impulses, tones, noise, silence) and the tiny
model has the real model's interface (INPUT -> Identity logits + a 1024-d ``embedding``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("sklearn")
pytest.importorskip("onnx")

from sentinela.cli import main
from sentinela.devtools import tiny_model
from sentinela.evaluate import LABELS, group_key

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


def _dataset(root: Path, per_label: int = 4) -> Path:
    rng = np.random.default_rng(7)
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            seconds = 1.0 if label == "human_voice" else 4.0
            sf.write(root / label / f"{label}_{i}.wav", _clip(label, rng, seconds), SR)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train")
    card = tiny_model.build(base / "model")
    data = _dataset(base / "data")
    (data / "background" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = base / "model" / "threat_head.onnx"
    rc = main(["train", str(data), "--out", str(out), "--card", str(card), "--no-cache", "--folds", "2",
               "--repeats", "1", "--nested-repeats", "0"])
    assert rc == 0
    return {"base": base, "card": card, "data": data, "out": out}


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
        assert 0 < rule["store"] <= rule["alert"] < 1
        assert rule["operating_point"]["recall"] is not None
    report = json.loads((trained["out"].parent / "training_report.json").read_text())
    assert len(report["data"]["manifest_sha256"]) == 64
    assert set(report["cv"]) == {"committed", "variants"}
    assert "augmentation (threat mixed into background, +6/0/-6 dB)" in report["cv"]["variants"]
    # the tiny model's logits are not a dense layer on its embedding: the head falls back to the embedding
    assert report["prior"]["linear"] is False
    assert [s["file"] for s in report["data"]["skipped"]] == ["background/broken.wav"]
    md = (trained["out"].parent / "TRAINING_REPORT.md").read_text()
    assert "Retraining on your own clips" in md and "## Findings" in md and "## Every variant tried" in md


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


def _linear_base_model(path: Path, d: int, labels: list[str], rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = rng.standard_normal((d, len(labels))).astype(np.float32)
    b = rng.standard_normal(len(labels)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["embedding", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["Identity"])],
        "linear", [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("Identity", TensorProto.FLOAT, ["batch", len(labels)])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    onnx.save(helper.make_model(graph), str(path))
    return w, b


def test_logit_prior_folds_into_the_head_and_onnx_matches(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from sentinela import train as T

    rng = np.random.default_rng(3)
    d, labels = 16, ["Bird_A", "Engine_Engine", "Dog_Dog"]
    w, b = _linear_base_model(tmp_path / "m.onnx", d, labels, rng)
    assert b.shape == (3,)
    card = SimpleNamespace(path=tmp_path / "m.onnx", logits_output="Identity", embedding_output="embedding",
                           labels=tuple(labels))
    prior = T.base_logit_layer(card, ["Engine_Engine"])  # type: ignore[arg-type]
    assert prior is not None
    np.testing.assert_allclose(prior.w[:, 0], w[:, 1], rtol=1e-6)
    x = rng.standard_normal((120, d)).astype(np.float32)
    y = np.arange(120) % len(T.HEAD_CLASSES)
    wt = np.ones(120)
    folded = T._fit_ovr(x, y, wt, 0.1, prior)
    explicit = T._fit_ovr(prior.features(x).astype(np.float32), y, wt, 0.1)  # the same features, not folded
    np.testing.assert_allclose(folded.predict(x), explicit.predict(prior.features(x)), atol=1e-4)
    for head in (folded, T._fit_mlp(x, y, wt, 0.1, 8, prior)):
        assert T.check_onnx(T.head_onnx_bytes(head), head, x) < 1e-5
    # logits that are not a dense layer on the embedding cannot fold: no prior, not a wrong one
    import onnx

    m = onnx.load(str(card.path))
    m.graph.node[1].output[0] = "pre"
    m.graph.node.append(onnx.helper.make_node("Relu", ["pre"], ["Identity"]))
    onnx.save(m, str(card.path))
    assert T.base_logit_layer(card, ["Engine_Engine"]) is None  # type: ignore[arg-type]


def _scored(labels_scores: list[tuple[str, float]]) -> tuple[list[Any], dict[int, np.ndarray]]:
    """Fake embedded clips with one window each, scoring ``s`` for every threat class."""
    from types import SimpleNamespace

    from sentinela import train as T

    data = [SimpleNamespace(clip=SimpleNamespace(label=lab)) for lab, _ in labels_scores]
    probs = {i: np.full((1, len(T.HEAD_CLASSES)), s, np.float32) for i, (_, s) in enumerate(labels_scores)}
    return data, probs


def test_quiet_thresholds_keep_background_alerts_within_the_budget() -> None:
    from sentinela import train as T

    # 40 background clips: three score high (0.9, 0.8, 0.7) for every class, the rest 0.1; threats score
    # 0.95 (half of them) or 0.75 (the other half)
    items = [("background", s) for s in (0.9, 0.8, 0.7)] + [("background", 0.1)] * 37
    for c in T.THREAT_CLASSES:
        items += [(c, 0.95)] * 5 + [(c, 0.75)] * 5
    data, probs = _scored(items)
    one = {c: 1 for c in T.THREAT_CLASSES}
    floor = {c: 0.5 for c in T.THREAT_CLASSES}
    q = T.choose_quiet_thresholds(data, [probs], one, floor, budget=0.03)  # type: ignore[arg-type]
    # floor(0.03 x 40) = 1 background clip may alert, summed over the classes: one class gets the
    # allowance (its threshold goes just below 0.9: the recall of its 0.95 clips, no more), the others sit
    # above every background clip
    bg_alerts = sum(1 for c in T.THREAT_CLASSES for s in (0.9, 0.8, 0.7, 0.1) if s >= q[c])
    assert bg_alerts <= 1
    assert all(q[c] >= floor[c] for c in T.THREAT_CLASSES)
    assert all(q[c] <= 0.95 for c in T.THREAT_CLASSES)  # every class keeps its clearly separated half
    # a budget that allows them all: thresholds drop to take the 0.75 clips as well
    loose = T.choose_quiet_thresholds(data, [probs], one, floor, budget=0.5)  # type: ignore[arg-type]
    assert all(loose[c] <= 0.75 for c in T.THREAT_CLASSES)
    # never below the balanced (floor) threshold
    high = {c: 0.97 for c in T.THREAT_CLASSES}
    strict = T.choose_quiet_thresholds(data, [probs], one, high, budget=0.5)  # type: ignore[arg-type]
    assert all(v >= 0.97 for v in strict.values())


def test_softmax_head_exports_to_onnx_that_matches() -> None:
    from sentinela import train as T

    rng = np.random.default_rng(5)
    x = rng.standard_normal((90, 16)).astype(np.float32)
    y = np.arange(90) % len(T.HEAD_CLASSES)
    head = T._fit_softmax(x, y, np.ones(90), 0.1)
    p = head.predict(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert T.check_onnx(T.head_onnx_bytes(head), head, x) < 1e-5
    assert "Softmax" in head.describe()


def test_card_refuses_a_quiet_threshold_below_the_alert_threshold(tmp_path: Path) -> None:
    from sentinela.card import CardError, load_card

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


def test_source_of_a_clip_and_leave_one_source_out_in_the_report(trained: dict[str, Path]) -> None:
    from sentinela.evaluate import LabelledClip
    from sentinela.train import source_of

    p = Path("x")
    assert source_of(LabelledClip("gunshot/us8k__1-6-0-0.wav", p, "gunshot", "Some/Repo/fs:1")) == "Some/Repo"
    assert source_of(LabelledClip("gunshot/belize__gunshot_1.wav", p, "gunshot", "belize__gunshot_1")) == "belize"
    assert source_of(LabelledClip("dog/bark.wav", p, "dog", "bark")) == "dog"
    report = json.loads((trained["out"].parent / "training_report.json").read_text())
    # the synthetic clips have no source prefix: each label folder is its own source; holding out a
    # threat's folder leaves that class unheard, and the report says so rather than scoring it
    by_source = report["leave_one_source_out"]
    assert by_source["gunshot"]["labels"]["gunshot"]["unheard"] is True
    md = (trained["out"].parent / "TRAINING_REPORT.md").read_text()
    assert "## Leave one source dataset out" in md and "*unheard*" in md


def test_blend_with_the_base_models_rows_is_exact_and_stays_one_layer() -> None:
    from dataclasses import replace

    from sentinela import train as T

    rng = np.random.default_rng(9)
    d = 12
    x = rng.standard_normal((60, d)).astype(np.float32)
    y = np.arange(60) % len(T.HEAD_CLASSES)
    head = T._fit_ovr(x, y, np.ones(60), 0.1)
    base = T.Prior(tuple(f"L{j}" for j in range(5)), rng.standard_normal((d, 5)), rng.standard_normal(5))
    cfg = replace(T.Config(), base_blend=(("engine", 1.0), ("gunshot", 0.5)))
    blended = T.blend_base(head, cfg, base)
    assert len(blended.layers) == 1
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    e, g, c = T.THREAT_CLASSES.index("engine"), T.THREAT_CLASSES.index("gunshot"), T.THREAT_CLASSES.index("chainsaw")
    x64 = x.astype(np.float64)
    # engine: the base model's own row alone; gunshot: half and half (in logits); chainsaw untouched
    np.testing.assert_allclose(logit(blended.predict(x)[:, e].astype(np.float64)), x64 @ base.w[:, e] + base.b[e],
                               rtol=1e-3, atol=1e-3)
    half = 0.5 * logit(head.predict(x)[:, g].astype(np.float64)) + 0.5 * (x64 @ base.w[:, g] + base.b[g])
    np.testing.assert_allclose(logit(blended.predict(x)[:, g].astype(np.float64)), half, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(blended.predict(x)[:, c], head.predict(x)[:, c])
    assert T.check_onnx(T.head_onnx_bytes(blended), blended, x) < 1e-5
    # without the base rows (a base model whose logits are not a dense layer) nothing changes
    assert T.blend_base(head, cfg, None) is head
