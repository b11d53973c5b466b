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
    rc = main(["eval", str(trained["data"]), "--card", str(trained["card"]), "--json", str(out),
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
