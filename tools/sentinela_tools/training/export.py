"""The head as a tiny ONNX graph, its check against numpy, and the card update."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sentinela_tools.classes import THREAT_CLASSES
from sentinela_tools.training.fit import LOGIT_CLIP, P_CLIP, Head


def head_onnx_bytes(head: Head, input_name: str = "embedding", output_name: str = "probabilities") -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d, k = head.w.shape
    f32 = np.float32
    inits = [numpy_helper.from_array(head.w.astype(f32), "W"), numpy_helper.from_array(head.b.astype(f32), "B")]
    probs = output_name if head.blend is None else "p"
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["mm"]),
             helper.make_node("Add", ["mm", "B"], ["logits"]),
             helper.make_node("Softmax", ["logits"], [probs], axis=1) if head.softmax
             else helper.make_node("Sigmoid", ["logits"], [probs])]
    kind = "A multinomial logistic regression" if head.softmax else "One-vs-rest logistic regressions"
    if head.blend is not None:
        # Each threat column: sigmoid(a * logit(p) + (1 - a) * clip(embedding @ Wb + Bb)); background as is.
        bl = head.blend
        t = len(bl.a)
        inits += [numpy_helper.from_array(bl.w.astype(f32), "Wb"), numpy_helper.from_array(bl.b.astype(f32), "Bb"),
                  numpy_helper.from_array(bl.a.astype(f32), "A"), numpy_helper.from_array((1 - bl.a).astype(f32), "A1"),
                  numpy_helper.from_array(np.array(P_CLIP, f32), "pmin"),
                  numpy_helper.from_array(np.array(1 - P_CLIP, f32), "pmax"),
                  numpy_helper.from_array(np.array(-LOGIT_CLIP, f32), "zmin"),
                  numpy_helper.from_array(np.array(LOGIT_CLIP, f32), "zmax"),
                  numpy_helper.from_array(np.array(1.0, f32), "one"),
                  numpy_helper.from_array(np.array([0], np.int64), "s0"),
                  numpy_helper.from_array(np.array([t], np.int64), "st"),
                  numpy_helper.from_array(np.array([k], np.int64), "sk"),
                  numpy_helper.from_array(np.array([1], np.int64), "ax")]
        nodes += [helper.make_node("Slice", ["p", "s0", "st", "ax"], ["pt"]),
                  helper.make_node("Slice", ["p", "st", "sk", "ax"], ["prest"]),
                  helper.make_node("Clip", ["pt", "pmin", "pmax"], ["pc"]),
                  helper.make_node("Sub", ["one", "pc"], ["qc"]),
                  helper.make_node("Log", ["pc"], ["lp"]),
                  helper.make_node("Log", ["qc"], ["lq"]),
                  helper.make_node("Sub", ["lp", "lq"], ["lo"]),
                  helper.make_node("MatMul", [input_name, "Wb"], ["zb0"]),
                  helper.make_node("Add", ["zb0", "Bb"], ["zb1"]),
                  helper.make_node("Clip", ["zb1", "zmin", "zmax"], ["zb"]),
                  helper.make_node("Mul", ["lo", "A"], ["m1"]),
                  helper.make_node("Mul", ["zb", "A1"], ["m2"]),
                  helper.make_node("Add", ["m1", "m2"], ["mix"]),
                  helper.make_node("Sigmoid", ["mix"], ["sblend"]),
                  helper.make_node("Concat", ["sblend", "prest"], [output_name], axis=1)]
        kind += ", each threat column blended with the base model's own label logit"
    graph = helper.make_graph(
        nodes, "sentinela-threat-head",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", k])],
        initializer=inits,
        doc_string=f"{kind} on the base model's embedding; columns: " + ", ".join(head.classes),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="sentinela-train", producer_version="2")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def check_onnx(blob: bytes, head: Head, x: np.ndarray) -> float:
    """Largest |ONNX - numpy| probability on ``x``: the exported graph must compute what CV measured."""
    import onnxruntime as ort

    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    return float(np.abs(got - head.predict(x)).max())


def update_card(card_path: Path, head_path: Path, thresholds: Mapping[str, float],
                operating: Mapping[str, Mapping[str, Any]], quiet: Mapping[str, float],
                quiet_operating: Mapping[str, Mapping[str, Any]]) -> None:
    """Set the card's head and per-threat thresholds (store = half the alert threshold: worth keeping for
    review, well below what pages a ranger) and the quiet point's; every other key is kept."""
    raw = json.loads(card_path.read_text(encoding="utf-8"))
    rel = os.path.relpath(head_path.resolve(), card_path.resolve().parent)
    # The card names the columns a threat rule reads; the sixth column, background, only training uses.
    raw["head"] = {"path": Path(rel).as_posix(), "input": "embedding", "output": "probabilities",
                   "classes": list(THREAT_CLASSES)}
    threats = raw.setdefault("threats", {})
    for c in THREAT_CLASSES:
        rule = threats.setdefault(c, {})
        rule["store"] = round(thresholds[c] / 2, 3)
        rule["alert"] = thresholds[c]
        rule["min_windows"] = 1
        rule["operating_point"] = dict(operating[c])
        rule["quiet"] = {"alert": quiet[c], "operating_point": dict(quiet_operating[c])}
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, card_path)
