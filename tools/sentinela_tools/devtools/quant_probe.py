"""Does onnxruntime's int8 quantisation of BirdNET's convolutions keep its answers, and is it faster?

    python -m sentinela_tools.devtools.quant_probe --calib ../shared/audio/train --check ../shared/audio/dev

Static quantisation (QDQ, per-channel int8 weights, uint8 activations) of the FFT variant's graph (the
graph cut after its spectrogram, so calibration sees exactly what the convolutions see), calibrated
on windows of real clips (every 25th file of --calib, every third window of its first eight), then
compared with fp32 on windows of --check: embedding cosine, top-1 label, and ms per window of both in
the same run. An exploration tool: it writes its models under --out and never into models/dist. A
model that passed would become a card variant with "quantised": true and go through
`sentinela quantgate`.

    python -m sentinela_tools.devtools.quant_probe --sensitivity \\
        --calib ../shared/audio/train --check ../shared/audio/dev

--sensitivity works on the whole fp32 graph instead: it quantises one convolution at a time (same
static QDQ settings, calibrated once and cached), ranks them by embedding cosine and top-1 agreement
on windows of --check with signal, then greedily adds the insensitive ones while the embedding cosine
stays >= --cos-floor and the top-1 label agrees on every window; and it quantises the MatMuls
(front end, logits) dynamically. The ms per window of each candidate is `sentinela bench`'s business
only once one is accurate enough; here the numbers are accuracy and MAC share.
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


def _compare(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    (l0, e0), (l1, e1) = ref, got
    cos = np.sum(e0 * e1, axis=1) / np.maximum(np.linalg.norm(e0, axis=1) * np.linalg.norm(e1, axis=1), 1e-30)
    return {"cos_min": float(cos.min()), "cos_median": float(np.median(cos)),
            "top1": int((l0.argmax(1) == l1.argmax(1)).sum()), "n": len(l0)}


def _conv_macs(path: Path, card: Any, x: np.ndarray) -> dict[str, int]:
    """Multiply-adds per window of each Conv and MatMul, from the shapes one window gives."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t).shape for t in m.graph.initializer}
    heavy = [n for n in m.graph.node if n.op_type in ("Conv", "MatMul") and n.input[1] in init]
    m.graph.output.extend(helper.make_empty_tensor_value_info(n.output[0]) for n in heavy)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    shapes = dict(zip(names, (a.shape for a in s.run(None, {card.input: x[:1]})), strict=True))
    macs = {}
    for n in heavy:
        w, o = init[n.input[1]], shapes[n.output[0]]
        if n.op_type == "Conv":  # each output element: C_in / group x kernel
            macs[n.name] = int(np.prod(o[1:]) * np.prod(w[1:]))
        else:
            macs[n.name] = int(np.prod(o[:-1]) * w[0] * w[1])
    return macs


def sensitivity(card: Any, calib: np.ndarray, check: np.ndarray, out: Path, cos_floor: float,
                say: Any = print) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    fp32 = out / "fp32_unshared.onnx"
    model = onnx.load(str(card.path))
    _unshare_conv_initializers(model)
    onnx.save(model, str(fp32))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    cache = out / "calibration.json"
    cache.unlink(missing_ok=True)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            self.i += 4
            return None if self.i > len(calib) + 3 else {card.input: calib[self.i - 4: self.i]}

    def run(path: Path) -> tuple[np.ndarray, np.ndarray]:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.log_severity_level = 3
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        outs = [s.run([card.logits_output, str(card.embedding_output)], {card.input: check[i:i + 16]})
                for i in range(0, len(check), 16)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def static(nodes: list[str], path: Path) -> Path:
        quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibration_cache_path=str(cache))
        return path

    ref = run(fp32)
    macs = _conv_macs(fp32, card, check)
    total = sum(macs.values())
    layers = []
    for k, name in enumerate(convs):
        one = _compare(ref, run(static([name], out / "one.onnx")))
        r = {"k": k, "name": name, "mac_share": macs[name] / total, **one}
        layers.append(r)
        say(f"  conv {k:2d}: cos min {r['cos_min']:.6f} median {r['cos_median']:.6f} top-1 {r['top1']}/{r['n']}"
            f"  MACs {100 * r['mac_share']:.1f} %  {name[:50]}")
    kept: list[str] = []
    for r in sorted(layers, key=lambda r: (-r["top1"], -r["cos_min"])):
        if r["top1"] < r["n"] or r["cos_min"] < cos_floor:
            continue
        c = _compare(ref, run(static([*kept, r["name"]], out / "trial.onnx")))
        if c["top1"] == c["n"] and c["cos_min"] >= cos_floor:
            kept.append(r["name"])
    greedy = {"kept": sorted(convs.index(n) for n in kept), "mac_share": sum(macs[n] for n in kept) / total,
              **_compare(ref, run(static(kept, out / "int8_greedy_qdq.onnx")))}
    say(f"  greedy: {len(kept)} convolutions {greedy['kept']}, {100 * greedy['mac_share']:.1f} % of the MACs: "
        f"cos min {greedy['cos_min']:.6f}, top-1 {greedy['top1']}/{greedy['n']}")
    dynamic = {}
    for label, nodes in (("logits", matmuls[-1:]), ("front_end", matmuls[:-1])):
        path = out / f"dynamic_{label}.onnx"
        quantize_dynamic(str(fp32), str(path), op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                         weight_type=QuantType.QInt8)
        dynamic[label] = {"nodes": nodes, "mac_share": sum(macs[n] for n in nodes) / total, **_compare(ref, run(path))}
        say(f"  dynamic int8 MatMul ({label}): cos min {dynamic[label]['cos_min']:.6f}, "
            f"top-1 {dynamic[label]['top1']}/{dynamic[label]['n']}")
    return {"calibration_windows": len(calib), "check_windows": len(check), "cos_floor": cos_floor,
            "layers": layers, "greedy": greedy, "dynamic_matmul": dynamic, "load_avg": list(os.getloadavg())}


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
    p.add_argument("--sensitivity", action="store_true",
                   help="per-convolution sensitivity, greedy set and dynamic MatMuls on the whole graph")
    p.add_argument("--cos-floor", type=float, default=0.999)
    args = p.parse_args(argv)
    if args.sensitivity:
        from sentinela.domain.activity import has_signal

        whole = with_variant(load_card(args.card), "graph")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        calib_w = _windows(args.calib, 25, 8, whole)
        check_w = _windows(args.check, 4, 6, whole)
        figures = sensitivity(whole, calib_w[has_signal(calib_w)], check_w[has_signal(check_w)], Path(args.out),
                              args.cos_floor)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        return 0
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
