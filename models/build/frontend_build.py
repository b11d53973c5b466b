"""The FFT front end's parameters, taken from the converted graph, and its check against that graph.

What the graph holds and the FFT path needs: the two Hann windows, the two mel filterbanks (from the
fold, before they are multiplied into the DFT matrices), the two powers applied to the squared mel
energies. The frame hops (278 and 280 samples) and the 511 frames are BirdNET V2.4's settings; check()
proves all of it (and the normalisation) by comparing the FFT path with the graph's own spectrogram.
Needs onnx, onnxruntime and numpy (the build venv or the dev venv), and the runtime's
``sentinela.adapters.frontend`` module, which is numpy only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "layers" / "core"))

import onnx_surgery as surgery  # noqa: E402

from sentinela.adapters.frontend import Frontend, Spectrogram  # noqa: E402

# BirdNET V2.4's two spectrograms, in the order of the graph's Concat (channel 0, channel 1).
SPECS = ("MEL_SPEC1", "MEL_SPEC2")
HOPS = {"MEL_SPEC1": 278, "MEL_SPEC2": 280}
FRAMES = 511
NORM_EPS = 1e-6
# Pass criteria of the FFT front end + cut graph against the whole graph, on non-degenerate windows.
MIN_EMBEDDING_COSINE = 0.9999
# Of the window's largest spectrogram value. The graph sums 2048 float32 products per value (dense DFT
# times mel), the FFT path works in float64: they round differently (1.1e-3 measured on the
# verification windows); the embedding and the labels are what the gate is about.
MAX_SPECTROGRAM_REL_DELTA = 5e-3


def _pow_exponent(model: onnx.ModelProto, spec: str) -> float:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pows = [n for n in model.graph.node if n.op_type == "Pow" and n.name.startswith(f"model/{spec}/")]
    if len(pows) != 1 or pows[0].input[1] not in init:
        raise surgery.GraphError(f"{spec}: expected one Pow with a constant exponent, found {len(pows)}")
    return float(init[pows[0].input[1]])


def build_frontend(model: onnx.ModelProto, folds: list[surgery.Fold]) -> Frontend:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    specs = []
    for spec in SPECS:
        windows = [a for name, a in init.items() if name.startswith(f"model/{spec}/stft/hann_window")]
        fold = [f for f in folds if f"/{spec}/" in f.dft_matrix]
        if len(windows) != 1 or len(fold) != 1:
            raise surgery.GraphError(f"{spec}: expected one Hann window and one folded filterbank")
        mel = fold[0].mel_matrix
        rows = np.flatnonzero(np.any(mel != 0.0, axis=1))
        # Bins no filter reads are dropped: exact, they are multiplied by zero.
        first, last = int(rows[0]), int(rows[-1]) + 1
        specs.append(Spectrogram(frame_length=int(windows[0].size), hop=HOPS[spec],
                                 window=windows[0].astype(np.float32), first_bin=first,
                                 mel=np.ascontiguousarray(mel[first:last], dtype=np.float32),
                                 power=_pow_exponent(model, spec)))
    return Frontend(specs=tuple(specs), frames=FRAMES, eps=NORM_EPS)


def _sessions(threads: int) -> Any:
    """An InferenceSession factory for model paths or bytes, with the checks' options."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return lambda model: ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _graph_reference(session: Any, full_onnx: Path, windows: np.ndarray) -> tuple[np.ndarray, ...]:
    """The whole graph's logits, embedding and its own spectrogram (NCHW) for the windows."""
    full = session(surgery.with_spectrogram_output(onnx.load(str(full_onnx))).SerializeToString())
    logits, emb, spec = full.run([surgery.LOGITS_NAME, surgery.EMBEDDING_NAME, surgery.SPECTROGRAM_CONCAT],
                                 {surgery.INPUT_NAME: windows})
    return logits, emb, np.ascontiguousarray(spec.transpose(2, 3, 0, 1))


def _figures(ref: tuple[np.ndarray, ...], ours: tuple[np.ndarray, ...], degenerate: list[bool],
             extra: dict[str, float]) -> dict[str, Any]:
    """A front end against the graph per window: spectrogram, embedding cosine, top-1 label, logits; the
    pass verdict on the non-degenerate windows. ``ref``/``ours``: (logits, embedding, spectrogram)."""
    (logits, emb, ref_spec), (o_logits, o_emb, o_spec) = ref, ours
    n = len(logits)
    rel = (np.abs(o_spec - ref_spec).reshape(n, -1).max(axis=1)
           / np.maximum(np.abs(ref_spec).reshape(n, -1).max(axis=1), 1e-30))
    cos = np.sum(emb * o_emb, axis=1) / np.maximum(np.linalg.norm(emb, axis=1) * np.linalg.norm(o_emb, axis=1),
                                                   1e-30)
    real = ~np.asarray(degenerate)
    top1 = logits.argmax(axis=1) == o_logits.argmax(axis=1)
    report: dict[str, Any] = {
        "windows": n, "non_degenerate": int(real.sum()), **extra,
        "spectrogram_max_rel_delta": float(rel[real].max()),
        "embedding_min_cosine": float(cos[real].min()),
        "embedding_min_cosine_all": float(cos.min()),
        "top1_agree": int(top1[real].sum()),
        "max_abs_dlogit": float(np.abs(o_logits - logits)[real].max()),
    }
    report["passed"] = bool(report["spectrogram_max_rel_delta"] <= MAX_SPECTROGRAM_REL_DELTA
                            and report["embedding_min_cosine"] >= MIN_EMBEDDING_COSINE
                            and report["top1_agree"] == report["non_degenerate"])
    return report


def check(full_onnx: Path, body_onnx: Path, frontend: Frontend, windows: np.ndarray,
          degenerate: list[bool], threads: int = 2) -> dict[str, Any]:
    """The FFT path against the graph: spectrogram, embedding cosine, top-1 label, per window; and the cut
    graph fed the graph's own spectrogram (it must give the graph's logits)."""
    session = _sessions(threads)
    ref = _graph_reference(session, full_onnx, windows)
    body = session(str(body_onnx))
    ours = frontend(windows)
    cut_logits = body.run([surgery.LOGITS_NAME], {surgery.SPECTROGRAM_NAME: ref[2]})[0]
    f_logits, f_emb = body.run([surgery.LOGITS_NAME, surgery.EMBEDDING_NAME], {surgery.SPECTROGRAM_NAME: ours})
    cut = float(np.abs(cut_logits - ref[0]).max())
    report = _figures(ref, (f_logits, f_emb, ours), degenerate, {"cut_graph_max_abs_dlogit": cut})
    report["passed"] = bool(report["passed"] and cut <= 1e-4)
    return report


def conv_spectrograms(frontend: Frontend) -> list[surgery.ConvSpectrogram]:
    """The same front end as one convolution kernel per spectrogram, for surgery.spectrogram_by_conv:
    window x DFT cosines (of the bins the filterbank reads) x filterbank, in float64, rounded once to
    float32, rows in the graph's band order (high frequencies first)."""
    out = []
    for s in frontend.specs:
        t = np.arange(s.frame_length, dtype=np.float64)
        k = np.arange(s.first_bin, s.first_bin + s.mel.shape[0], dtype=np.float64)
        cos = np.cos(2.0 * np.pi * np.outer(t, k) / s.frame_length)
        kernel = (s.window.astype(np.float64)[:, None] * cos) @ s.mel.astype(np.float64)  # [frame_length, bands]
        out.append(surgery.ConvSpectrogram(kernel=np.ascontiguousarray(kernel[:, ::-1].T, dtype=np.float32),
                                           hop=s.hop, power=s.power))
    return out


def check_in_graph(full_onnx: Path, variant_onnx: Path, windows: np.ndarray, degenerate: list[bool],
                   threads: int = 2) -> dict[str, Any]:
    """A variant that takes the samples (front end inside its graph) against the whole graph, per window:
    its spectrogram, embedding cosine, top-1 label; the same criteria as the FFT front end's check."""
    session = _sessions(threads)
    ref = _graph_reference(session, full_onnx, windows)
    variant = onnx.load(str(variant_onnx))
    variant.graph.output.append(onnx.helper.make_tensor_value_info(surgery.SPECTROGRAM_NAME,
                                                                   onnx.TensorProto.FLOAT, None))
    ours = session(variant.SerializeToString()).run(
        [surgery.LOGITS_NAME, surgery.EMBEDDING_NAME, surgery.SPECTROGRAM_NAME], {surgery.INPUT_NAME: windows})
    return _figures(ref, tuple(ours), degenerate, {})
