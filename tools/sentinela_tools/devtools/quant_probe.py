"""Does onnxruntime's int8 quantisation of BirdNET's convolutions keep its answers, and is it faster?

    python -m sentinela_tools.devtools.quant_probe --calib ../shared/audio/train --check ../shared/audio/dev

Static quantisation (QDQ, per-channel int8 weights, uint8 activations) of the FFT variant's graph (the
graph cut after its spectrogram, so calibration sees exactly what the convolutions see), calibrated
on windows of real clips (every 25th file of --calib, every third window of its first eight), then
compared with fp32 on windows of --check: embedding cosine, top-1 label, and ms per window of both in
the same run. An exploration tool: it writes its models under --out and never into models/dist. A
model that passed would become a card variant with "quantised": true and go through
`sentinela quantgate`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _windows(folder: str, step: int, per_file: int, card: Any) -> np.ndarray:
    from sentinela.adapters.audio import windows
    from sentinela_tools.evaluate import scan_dataset

    out = []
    for clip in scan_dataset(folder)[::step]:
        for i, (_, w) in enumerate(windows(clip.path, sample_rate=card.sample_rate, window=card.window_samples,
                                           hop=card.hop_samples)):
            if i >= per_file:
                break
            if i % 3 == 0:
                out.append(w)
    return np.stack(out)


def _unshare_conv_initializers(model: Any) -> int:
    """The build merges equal small constants (biases) across convolutions; the quantiser needs each
    convolution to own its weight and bias, since their scales differ."""
    import onnx

    init = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    copies = []
    for k, node in enumerate(n for n in model.graph.node if n.op_type == "Conv"):
        for i, name in enumerate(node.input[1:], start=1):
            if name in init and name in seen:
                t = onnx.TensorProto()
                t.CopyFrom(init[name])
                t.name = f"{name}__conv{k}_{i}"
                copies.append(t)
                node.input[i] = t.name
            seen.add(name)
    model.graph.initializer.extend(copies)
    return len(copies)


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from sentinela.adapters.frontend import Frontend
    from sentinela.config import default_card_path
    from sentinela.domain.card import load_card, with_variant

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--card", default=str(default_card_path()))
    p.add_argument("--calib", required=True, help="labelled folder for calibration windows")
    p.add_argument("--check", required=True, help="labelled folder for the comparison windows")
    p.add_argument("--out", default=".cache/quant-probe")
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args(argv)
    card = with_variant(load_card(args.card), "fft")
    assert card.frontend_path is not None
    frontend = Frontend.load(card.frontend_path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = frontend(_windows(args.calib, 25, 8, card))
    check_w = _windows(args.check, 13, 4, card)[:32]
    check = frontend(check_w)
    model = onnx.load(str(card.path))
    _unshare_conv_initializers(model)
    fp32_path, int8_path = out / "fp32_unshared.onnx", out / "int8_qdq.onnx"
    onnx.save(model, str(fp32_path))

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(calib):
                return None
            self.i += 4
            return {card.input: calib[self.i - 4: self.i]}

    t0 = time.perf_counter()
    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    quant_s = time.perf_counter() - t0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(v), opts, providers=["CPUExecutionProvider"])
                for k, v in (("fp32", fp32_path), ("int8", int8_path))}
    res = {k: s.run([card.logits_output, str(card.embedding_output)], {card.input: check})
           for k, s in sessions.items()}
    e0, e1 = res["fp32"][1], res["int8"][1]
    cos = np.sum(e0 * e1, axis=1) / np.maximum(np.linalg.norm(e0, axis=1) * np.linalg.norm(e1, axis=1), 1e-30)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    batch = check[:8]
    for s in sessions.values():
        s.run(None, {card.input: batch})
    for _ in range(5):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {card.input: batch})
            times[k].append((time.perf_counter() - t) / len(batch) * 1000)
    figures = {
        "calibration_windows": len(calib), "check_windows": len(check), "quantise_s": round(quant_s, 1),
        "embedding_min_cosine": float(cos.min()), "embedding_median_cosine": float(np.median(cos)),
        "top1_agree": int((res["fp32"][0].argmax(1) == res["int8"][0].argmax(1)).sum()),
        "ms_per_window_b8": {k: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v))}
                             for k, v in times.items()},
        "bytes": {k: os.path.getsize(v) for k, v in (("fp32", fp32_path), ("int8", int8_path))},
        "load_avg": list(os.getloadavg()),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
