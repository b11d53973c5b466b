"""Time BirdNET's own runtime (TFLite, XNNPACK) on windows saved by ``sentinela bench``.

Runs in the isolated model-build venv (``.cache/model-build/venv``), which has the TFLite interpreter;
the Lambda runtime never has it. Imports only numpy and the interpreter, so it runs there without
installing sentinela: ``python tflite_bench.py MODEL.tflite WINDOWS.npy --threads 2 --repeats 3``.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def _interpreter_class() -> tuple[Any, str]:
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow {tf.__version__} tf.lite"


def _run_all(interp: Any, windows: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]
    outs = []
    t0 = time.perf_counter()
    for i in range(0, len(windows), batch):
        x = windows[i : i + batch]
        if len(x) < batch:  # a fixed-shape input: pad the last batch with silence
            x = np.concatenate((x, np.zeros((batch - len(x), x.shape[1]), np.float32)))
        interp.set_tensor(inp, x)
        interp.invoke()
        outs.append(interp.get_tensor(out)[: min(batch, len(windows) - i)].copy())
    return time.perf_counter() - t0, np.concatenate(outs)


def _repeat(interp: Any, windows: np.ndarray, batch: int, repeats: int) -> tuple[list[float], np.ndarray]:
    """``repeats`` timed passes over all windows: their times, and the last pass's logits."""
    times: list[float] = []
    logits = np.zeros(0)
    for _ in range(repeats):
        dt, logits = _run_all(interp, windows, batch)
        times.append(dt)
    return times, logits


def bench(model: str, windows: np.ndarray, threads: int, repeats: int) -> dict[str, Any]:
    cls, runtime = _interpreter_class()
    res: dict[str, Any] = {"runtime": runtime, "threads": threads, "windows": len(windows),
                           "numpy": np.__version__}
    t0 = time.perf_counter()
    interp = cls(model_path=model, num_threads=threads)
    interp.allocate_tensors()
    res["load_s"] = time.perf_counter() - t0
    res["input_shape"] = [int(d) for d in interp.get_input_details()[0]["shape"]]
    _run_all(interp, windows[:2], 1)  # warm-up
    times, logits = _repeat(interp, windows, 1, repeats)
    res["batch1_s"] = sorted(times)[len(times) // 2]
    res["batch1_all_s"] = times
    res["ms_per_window_b1"] = 1000 * res["batch1_s"] / len(windows)
    # Top-1 label index per window, so the caller can check that both runtimes agree.
    res["top1_b1"] = logits.argmax(axis=1).tolist() if logits.size else []
    # Batch 8: the model's input is fixed at [1, 144000]; see whether resizing it works at all.
    try:
        big = cls(model_path=model, num_threads=threads)
        idx = big.get_input_details()[0]["index"]
        big.resize_tensor_input(idx, [8, windows.shape[1]], strict=False)
        big.allocate_tensors()
        _run_all(big, windows[:8], 8)
        t8, l8 = _repeat(big, windows, 8, repeats)
        res["batch8_s"] = sorted(t8)[len(t8) // 2]
        res["ms_per_window_b8"] = 1000 * res["batch8_s"] / len(windows)
        res["batch8_max_abs_diff_vs_b1"] = float(np.max(np.abs(l8 - logits))) if logits.size else None
        res["batch8"] = "ok"
    except Exception as exc:  # any failure here is a finding to report, not a crash
        res["batch8"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("windows", help=".npy float32 [n, 144000]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    windows = np.load(a.windows).astype(np.float32, copy=False)
    print(json.dumps(bench(a.model, windows, a.threads, a.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
