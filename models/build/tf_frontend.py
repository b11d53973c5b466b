"""TFLite -> ONNX through tf2onnx, with BirdNET's RFFT2D replaced by a real-part DFT MatMul.

Why a replacement handler: BirdNET's spectrogram layer computes tf.signal.stft(...) and then
tf.cast(stft, tf.float32), which keeps only the REAL part of the STFT. In the TFLite graph that is
EXPAND_DIMS -> RFFT2D(fft_length=[1, N]) -> SQUEEZE -> CAST. tf2onnx 1.17's RFFT2D handler only
supports RFFT2D -> ComplexAbs and fails on this graph. Re(rfft(x))[k] = sum_n x[n] cos(2 pi n k / N),
so one MatMul with an [N, N/2+1] cosine matrix is exact, runs multi-threaded in onnxruntime (its DFT
op does not), and leaves a linear map that onnx_surgery can fold with the mel filterbank.

The handler goes in through from_tflite(custom_op_handlers=...), which overrides the stock handler for
this conversion only, rather than re-registering a global @tf_op that would leak into other callers.
This module needs TensorFlow; only convert.py (inside the build venv) imports it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx
import tf2onnx
import tf2onnx.convert
from onnx import TensorProto
from onnx_surgery import real_dft_matrix
from tf2onnx import utils

# The op name is the TF one: tf2onnx first maps TFL_RFFT2D to RFFT2D, then applies TF handlers.
RFFT_OP = "RFFT2D"
# Marks the cosine-matrix initializers so onnx_surgery can find them for the mel fold.
DFT_MATRIX_MARKER = "_real_dft"


def _real_part_rfft2d(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
    """tf2onnx (legacy custom-op API) handler: RFFT2D(x, [1, N]) -> MatMul(x, C), float output."""
    fft_length = ctx.get_node_by_output(node.input[1]).get_tensor_value(as_list=True)
    utils.make_sure(len(fft_length) == 2 and fft_length[0] == 1,
                    "only RFFT2D with fft_length [1, N] is expected in BirdNET, got %r", fft_length)
    n = int(fft_length[1])
    in_shape = ctx.get_shape(node.input[0])
    utils.make_sure(in_shape is None or (in_shape[-1] in (-1, n) and in_shape[-2] in (-1, 1)),
                    "unexpected RFFT2D input shape %r for N=%d", in_shape, n)

    out_name = node.output[0]
    out_shape = ctx.get_shape(out_name)
    consumers = ctx.find_output_consumers(out_name)
    # Only the real-part pattern is handled; anything else (e.g. ComplexAbs) would silently be wrong.
    for consumer in consumers:
        utils.make_sure(consumer.type in ("Squeeze", "TFL_SQUEEZE"),
                        "RFFT2D consumer %s (%s) is not the Squeeze of the real-part pattern",
                        consumer.name, consumer.type)
        for cast in ctx.find_output_consumers(consumer.output[0]):
            utils.make_sure(cast.type in ("Cast", "TFL_CAST"),
                            "expected Cast(complex->float) after Squeeze, got %s", cast.type)

    ctx.remove_node(node.name)
    cos = ctx.make_const(utils.make_name(node.name + DFT_MATRIX_MARKER), real_dft_matrix(n))
    ctx.make_node("MatMul", [node.input[0], cos.output[0]], outputs=[out_name], name=node.name,
                  shapes=[out_shape], dtypes=[TensorProto.FLOAT])
    # The Squeeze was typed complex64; from here on the tensor is real, so the Cast becomes float->float.
    for consumer in consumers:
        ctx.set_dtype(consumer.output[0], TensorProto.FLOAT)


def convert(tflite_path: Path, opset: int) -> onnx.ModelProto:
    """Convert with tf2onnx. It does not raise on ops it fails to convert; callers must check the graph."""
    # tf2onnx reads tensor shapes through tf.lite.Interpreter, which warns that it is deprecated;
    # that is tf2onnx's business, not something the person running `make model` can act on.
    warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated")
    model, _ = tf2onnx.convert.from_tflite(
        str(tflite_path),
        opset=opset,
        custom_op_handlers={RFFT_OP: (_real_part_rfft2d, [])},
    )
    return model


def converter_versions() -> dict[str, str]:
    import tensorflow as tf  # already imported by tf2onnx; imported here only to read its version

    return {"tf2onnx": tf2onnx.__version__, "tensorflow": tf.__version__, "onnx": onnx.__version__}
