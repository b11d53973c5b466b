"""A tiny ONNX model with the real model's inputs and outputs, for tests and for trying the pipeline
without building BirdNET: ``INPUT`` float32 [batch, 144000] -> ``Identity`` logits [batch, labels] and
``embedding`` [batch, 1024].

Its "hearing" is two features of each window: the mean and the peak of 1024 short-time energies. An
impulse (high peak over a low mean) reads as a gunshot; a loud sustained sound as power tools and an
engine; a moderate one as a bird. Crude on purpose: tests can generate audio whose answer they know.
``build(labels=..., threats=...)`` makes one with other labels and threat classes (a new class, as data).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 144000
SEGMENTS = 1024
SEG_LEN = 140  # 1024 * 140 = 143360 samples of each window are looked at

# label -> (weight on mean energy, weight on peak energy, bias)
LABELS: dict[str, tuple[float, float, float]] = {
    "Gun_Gun": (-150.0, 50.0, -3.0),
    "Power tools_Power tools": (30.0, 0.0, -8.0),
    "Engine_Engine": (20.0, 0.0, -9.0),
    "Human vocal_Human vocal": (0.0, 0.0, -6.0),
    "Dog_Dog": (0.0, 0.0, -6.0),
    "Turdus falcklandii_Austral Thrush": (20.0, 0.0, -2.0),
    "Scelorchilus rubecula_Chucao Tapaculo": (0.0, 0.0, -5.0),
    "Noise_Noise": (0.0, 0.0, -4.0),
}

THREATS = {
    "gunshot": {"model_labels": ["Gun_Gun"], "store": 0.3, "alert": 0.8},
    "chainsaw": {"model_labels": ["Power tools_Power tools"], "store": 0.3, "alert": 0.8},
    "engine": {"model_labels": ["Engine_Engine"], "store": 0.3, "alert": 0.9},
    "human_voice": {"model_labels": ["Human vocal_Human vocal"], "store": 0.3, "alert": 0.8},
    "dog": {"model_labels": ["Dog_Dog"], "store": 0.3, "alert": 0.8},
}


def build(out_dir: str | Path, labels: Mapping[str, tuple[float, float, float]] | None = None,
          threats: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write tiny.onnx, labels.txt and card.json into ``out_dir``; return the card's path. ``labels``
    (label -> weights, as LABELS) and ``threats`` (the card's threat rules, as THREATS) replace the
    defaults: e.g. ``LABELS | {"Drone_Drone": (60.0, 0.0, -9.0)}`` and ``THREATS | {"drone": {...}}``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(LABELS if labels is None else labels)
    names = list(weights)
    w = np.array([[weights[n][0] for n in names], [weights[n][1] for n in names]], dtype=np.float32)
    b = np.array([weights[n][2] for n in names], dtype=np.float32)
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([SEGMENTS * SEG_LEN], np.int64), "ends"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, SEGMENTS, SEG_LEN], np.int64), "shape"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "B"),
    ]
    nodes = [
        helper.make_node("Slice", ["INPUT", "starts", "ends", "axes"], ["sliced"]),
        helper.make_node("Reshape", ["sliced", "shape"], ["frames"]),
        helper.make_node("Abs", ["frames"], ["mag"]),
        helper.make_node("ReduceMean", ["mag", "ax2"], ["embedding"], keepdims=0),
        helper.make_node("ReduceMean", ["embedding", "ax1"], ["m"], keepdims=1),
        helper.make_node("ReduceMax", ["embedding", "ax1"], ["p"], keepdims=1),
        helper.make_node("Concat", ["m", "p"], ["feats"], axis=1),
        helper.make_node("MatMul", ["feats", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["Identity"]),
    ]
    graph = helper.make_graph(
        nodes, "sentinela-tiny",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", WINDOW])],
        [helper.make_tensor_value_info("Identity", TensorProto.FLOAT, ["batch", len(names)]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", SEGMENTS])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out / "tiny.onnx")
    (out / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    card = {
        "id": "tiny-test-model",
        "model": {"path": "tiny.onnx", "labels_path": "labels.txt", "input": "INPUT",
                  "logits_output": "Identity", "embedding_output": "embedding"},
        "audio": {"sample_rate": 48000, "window_s": 3.0, "hop_s": 1.5},
        "sensitivity": 1.0,
        "threats": dict(THREATS if threats is None else threats),
        "biodiversity": {"store": 0.5},
    }
    path = out / "card.json"
    path.write_text(json.dumps(card, indent=2), encoding="utf-8")
    return path
