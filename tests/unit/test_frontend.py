"""The FFT front end (sentinela.adapters.frontend) and the card's model variants; no real model needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sentinela.adapters.frontend import Frontend, Spectrogram
from sentinela.adapters.model import BirdNetOnnx
from sentinela.domain.card import CardError, load_card, variants, with_variant

BANDS, FRAMES = 8, 100


def _frontend(seed: int = 0) -> Frontend:
    rng = np.random.default_rng(seed)
    specs = []
    for length, hop, first, bins, power in ((256, 139, 3, 40, 0.23), (128, 140, 5, 30, 0.19)):
        window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)).astype(np.float32)
        mel = np.abs(rng.standard_normal((bins, BANDS))).astype(np.float32)
        specs.append(Spectrogram(length, hop, window, first, mel, power))
    return Frontend(specs=tuple(specs), frames=FRAMES, eps=1e-6)


def _as_the_graph_does(fe: Frontend, x: np.ndarray) -> np.ndarray:
    """The converted graph's way, in float64: a dense real-DFT (cosine) matrix, then the mel matrix."""
    x = x.astype(np.float64)
    x = x - x.min(axis=1, keepdims=True)
    x = (x / (x.max(axis=1, keepdims=True) + fe.eps) - 0.5) * 2.0
    out = []
    for s in fe.specs:
        n = np.arange(s.frame_length)
        k = np.arange(s.frame_length // 2 + 1)
        cos = np.cos(2 * np.pi * np.outer(n, k) / s.frame_length)
        mel = np.zeros((k.size, BANDS))
        mel[s.first_bin: s.first_bin + s.mel.shape[0]] = s.mel
        idx = np.arange(fe.frames)[:, None] * s.hop + n[None, :]
        frames = x[:, idx] * s.window
        m = frames @ cos @ mel
        out.append(np.power(m * m, s.power)[:, :, ::-1].transpose(0, 2, 1))
    return np.stack(out, axis=1)


def _windows(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(144000) / 48000
    w = [0.1 * rng.standard_normal(144000), 0.3 * np.sin(2 * np.pi * 1000 * t) + 1e-3 * rng.standard_normal(144000),
         np.where(np.arange(144000) % 7000 < 50, 0.8, 0.0) + 1e-3 * rng.standard_normal(144000)]
    return np.stack(w[:n]).astype(np.float32)


def test_fft_front_end_is_the_real_part_of_the_dft_times_the_mel_filterbank() -> None:
    fe = _frontend()
    x = _windows()
    ours = fe(x)
    ref = _as_the_graph_does(fe, x)
    assert ours.shape == (3, 2, BANDS, FRAMES) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=5e-5 * float(np.abs(ref).max()))


def test_threads_change_nothing() -> None:
    from concurrent.futures import ThreadPoolExecutor

    fe = _frontend()
    x = _windows()
    with ThreadPoolExecutor(2) as pool:
        assert np.array_equal(fe(x), fe(x, pool))


def test_parameters_round_trip_byte_for_byte(tmp_path: Path) -> None:
    fe = _frontend()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    fe.save(a)
    fe.save(b)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    back = Frontend.load(a)
    assert np.array_equal(back(_windows()), fe(_windows()))


def _body(path: Path, n_labels: int) -> None:
    """A tiny 'graph cut after its spectrogram': spectrogram -> flatten -> logits; embedding = flatten."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).standard_normal((2 * BANDS * FRAMES, n_labels)).astype(np.float32) * 0.01
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["spectrogram"], ["embedding"], axis=1),
         helper.make_node("MatMul", ["embedding", "W"], ["Identity"])],
        "tiny-body",
        [helper.make_tensor_value_info("spectrogram", TensorProto.FLOAT, ["batch", 2, BANDS, FRAMES])],
        [helper.make_tensor_value_info("Identity", TensorProto.FLOAT, ["batch", n_labels]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 2 * BANDS * FRAMES])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture()
def fft_card(tiny_card_path: Path, tmp_path: Path) -> Path:
    import shutil

    for f in tiny_card_path.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    raw = json.loads((tmp_path / "card.json").read_text())
    n_labels = len(load_card(tiny_card_path).labels)
    _body(tmp_path / "body.onnx", n_labels)
    _frontend().save(tmp_path / "fe.npz")
    raw["model"]["use"] = "fft"
    raw["model"]["variants"] = {"fft": {"path": "body.onnx", "input": "spectrogram", "frontend": "fft",
                                        "frontend_path": "fe.npz", "sha256": "x"}}
    (tmp_path / "card.json").write_text(json.dumps(raw))
    return tmp_path / "card.json"


def test_card_selects_the_variant_and_the_model_runs_the_front_end(fft_card: Path) -> None:
    import onnxruntime as ort

    card = load_card(fft_card)
    assert card.variant == "fft" and card.path.name == "body.onnx" and card.input == "spectrogram"
    assert card.frontend_path is not None and card.frontend_path.name == "fe.npz"
    assert variants(card) == ("graph", "fft")
    graph = with_variant(card, "graph")
    assert graph.path.name == "tiny.onnx" and graph.frontend_path is None and graph.input == "INPUT"
    assert with_variant(graph, "fft") == card
    # The records name the model file that scored them: another variant is another model_id.
    assert graph.model_id == graph.id and card.model_id == f"{graph.id}/fft"
    x = _windows()
    for threads in (1, 2):
        scores, emb = BirdNetOnnx(card, threads=threads, embeddings=True).infer(x)
        want = ort.InferenceSession(str(card.path)).run(None, {"spectrogram": _frontend()(x)})
        assert emb is not None
        np.testing.assert_allclose(emb, want[1], rtol=1e-6)
        assert scores.shape == (3, len(card.labels))


def test_activity_gate_holds_with_the_front_end(fft_card: Path) -> None:
    model = BirdNetOnnx(load_card(fft_card), threads=1)
    silent = np.zeros(144000, np.float32)
    batch = next(model.run([(0.0, silent), (1.5, _windows(1)[0])], batch_size=2))
    assert batch.signal is not None and list(batch.signal) == [False, True]
    assert not batch.scores[0].any() and not batch.threat[0].any()


def _build_module(name: str) -> Any:
    """A module of models/build/ (not a package: imported from its folder, as the build does)."""
    import importlib
    import sys

    folder = Path(__file__).resolve().parents[2] / "models" / "build"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def test_conv_variant_computes_the_front_end_inside_its_graph(fft_card: Path) -> None:
    """The "conv" variant: the cut graph with the front end put back as strided convolutions. It takes
    the samples, like the whole graph, and computes the spectrogram the graph defines (the float64
    reference), with no Gather of frames and no Pow left."""
    import onnx

    surgery, build = _build_module("onnx_surgery"), _build_module("frontend_build")
    fe = _frontend()
    folder = fft_card.parent
    conv = surgery.spectrogram_by_conv(onnx.load(str(folder / "body.onnx")), build.conv_spectrograms(fe),
                                       144000, FRAMES, fe.eps)
    assert [i.name for i in conv.graph.input] == ["INPUT"]
    assert not {n.op_type for n in conv.graph.node} & {"Gather", "Pow", "ReverseSequence"}
    onnx.save(conv, str(folder / "conv.onnx"))
    raw = json.loads(fft_card.read_text())
    raw["model"]["use"] = "conv"
    raw["model"]["variants"]["conv"] = {"path": "conv.onnx", "input": "INPUT", "frontend": None, "sha256": "x"}
    fft_card.write_text(json.dumps(raw))
    card = load_card(fft_card)
    assert card.variant == "conv" and card.input == "INPUT" and card.frontend_path is None
    x = _windows()
    _, emb = BirdNetOnnx(card, threads=1, embeddings=True).infer(x)
    assert emb is not None
    ref = _as_the_graph_does(fe, x).reshape(len(x), -1)
    np.testing.assert_allclose(emb, ref, rtol=1e-3, atol=1e-4 * float(np.abs(ref).max()))
    # A window too short for the frames the graph wants is refused, not padded.
    with pytest.raises(surgery.GraphError, match="fewer than"):
        surgery.spectrogram_by_conv(onnx.load(str(folder / "body.onnx")), build.conv_spectrograms(fe),
                                    256 + 139 * 50, FRAMES, fe.eps)


def test_unknown_variant_is_a_card_error(fft_card: Path) -> None:
    raw = json.loads(fft_card.read_text())
    raw["model"]["use"] = "int8"
    fft_card.write_text(json.dumps(raw))
    with pytest.raises(CardError, match="no model variant 'int8'"):
        load_card(fft_card)


def test_quantgate_passes_a_variant_identical_to_the_graph_and_reports_every_figure(
        tiny_card_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import soundfile as sf

    from sentinela_tools.cli import main

    for f in tiny_card_path.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    raw = json.loads((tmp_path / "card.json").read_text())
    raw["model"]["variants"] = {"same": {"path": "tiny.onnx", "input": "INPUT"}}
    (tmp_path / "card.json").write_text(json.dumps(raw))
    data = tmp_path / "data"
    rng = np.random.default_rng(2)
    for label, n in (("gunshot", 2), ("background", 2)):
        (data / label).mkdir(parents=True)
        for i in range(n):
            x = 1e-3 * rng.standard_normal(6 * 48000)
            if label == "gunshot":
                x[2 * 48000: 2 * 48000 + 200] = 0.9
            sf.write(data / label / f"{label}_{i}.wav", x.astype(np.float32), 48000, subtype="PCM_16")
    out = tmp_path / "gate.json"
    rc = main(["quantgate", str(data), "--card", str(tmp_path / "card.json"), "--json-out", str(out), "--threads", "1"])
    assert rc == 0, capsys.readouterr().out
    report = json.loads(out.read_text())
    fold = report["folders"][str(data)]
    assert report["passed"] == {"same": True} and fold["clips"] == 4
    same = fold["same"]
    assert same["decision_differences"] == [] and same["max_abs_auc_delta"] == 0.0
    assert same["top1_agree"] == same["windows_with_signal"] > 0 and same["embedding_min_cosine"] > 0.99999
    assert "verdict: same PASS" in capsys.readouterr().out


def test_quantgate_json_on_stdout_is_json_alone(tiny_card_path: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import soundfile as sf

    from sentinela_tools.cli import main

    (tmp_path / "data" / "background").mkdir(parents=True)
    noise = 1e-3 * np.random.default_rng(4).standard_normal(4 * 48000)
    sf.write(tmp_path / "data" / "background" / "b.wav", noise.astype(np.float32), 48000, subtype="PCM_16")
    rc = main(["quantgate", str(tmp_path / "data"), "--card", str(tiny_card_path), "--json", "--threads", "1"])
    out = capsys.readouterr()
    assert rc == 0 and json.loads(out.out)["passed"] == {} and "nothing to gate" in out.err
