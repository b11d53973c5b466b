"""The head as a tiny ONNX graph, its check against numpy, and the card update."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..card import THREAT_CLASSES
from .fit import Head


def head_onnx_bytes(head: Head, input_name: str = "embedding", output_name: str = "probabilities") -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d, k = head.w.shape
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["mm"]),
             helper.make_node("Add", ["mm", "B"], ["logits"])]
    if head.softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    else:
        nodes.append(helper.make_node("Sigmoid", ["logits"], [output_name]))
    kind = "A multinomial logistic regression" if head.softmax else "One-vs-rest logistic regressions"
    graph = helper.make_graph(
        nodes, "sentinela-threat-head",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", k])],
        initializer=[numpy_helper.from_array(head.w.astype(np.float32), "W"),
                     numpy_helper.from_array(head.b.astype(np.float32), "B")],
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
