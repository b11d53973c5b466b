"""Checks and edits on the converted ONNX graph. Needs onnx and numpy only (no TensorFlow), so the
project's dev venv can unit-test it.

- unconverted_ops: tf2onnx's Python API logs ops it could not convert and leaves them in the graph, so
  the build has to look for them itself.
- fold_mel_into_dft: real(STFT) = frames @ C and mel = real(STFT) @ M are both linear, so the front end
  can use frames @ (C @ M): a [N, 96] matrix instead of [N, N/2+1] then [N/2+1, 96].
- expose_embedding: the 1024-d pooled features feed the threat head; exposing them as a second output
  costs nothing at run time.
- spectrogram_by_conv: the cut graph with the front end put back as one strided Conv per spectrogram
  (frames, Hann window, DFT and mel filterbank in one kernel), the flip of the mel axis in the kernel's
  row order, and x**p as exp(p log x): the "conv" variant. The converted graph frames the signal with
  a Gather of 1 M indices per window and runs its batch norm on a [bands, frames, batch, 2] layout;
  on this CPU those took more time than the front end's matrix product itself (profiled in
  docs/BENCHMARKS.md).
- drop_shape_noops: the Squeeze/Reshape pairs tf2onnx leaves around each squeeze-excitation block
  ([batch, C, 1, 1] -> [batch, C] -> [batch, C, 1, 1]) change nothing but make onnxruntime leave its
  blocked layout and come back.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Domains whose ops are part of the ONNX standard (onnxruntime's CPU provider runs all of them).
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# Named in the failure message because they are the ones tf2onnx is known to leave behind here.
KNOWN_TF_LEFTOVERS = frozenset({"RFFT2D", "RFFT", "ComplexAbs"})

INPUT_NAME = "INPUT"
LOGITS_NAME = "Identity"
EMBEDDING_NAME = "embedding"
EMBEDDING_NODE_MARKER = "GLOBAL_AVG_POOL"
BATCH_DIM = "batch"


class GraphError(RuntimeError):
    """The graph is not the one this build knows how to produce; the message says where."""


def real_dft_matrix(n: int) -> np.ndarray:
    """[n, n//2+1] matrix C with frames @ C == Re(rfft(frames, n)); built in float64, stored as float32."""
    k = np.arange(n // 2 + 1, dtype=np.float64)
    t = np.arange(n, dtype=np.float64)
    return np.cos(2.0 * np.pi * np.outer(t, k) / n).astype(np.float32)


def _opset_versions(model: onnx.ModelProto) -> dict[str, int]:
    versions = {imp.domain: imp.version for imp in model.opset_import}
    if "ai.onnx" in versions and "" not in versions:
        versions[""] = versions["ai.onnx"]
    return versions


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes of the graph and of every subgraph (If/Loop/Scan bodies), depth first."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_all_nodes(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    nodes.extend(_all_nodes(sub))
    return nodes


def unconverted_ops(model: onnx.ModelProto) -> list[str]:
    """Every node that is not a standard ONNX op at the model's opset, as 'name (op_type, domain)'."""
    versions = _opset_versions(model)
    bad: list[str] = []
    for node in _all_nodes(model.graph):
        domain = node.domain or ""
        label = f"{node.name or '<unnamed>'} ({node.op_type}, domain {domain or 'ai.onnx'!r})"
        if node.op_type in KNOWN_TF_LEFTOVERS or domain not in STANDARD_DOMAINS:
            bad.append(label)
            continue
        version = versions.get(domain)
        if version is None:
            bad.append(f"{label}: domain not imported")
            continue
        try:
            onnx.defs.get_schema(node.op_type, version, domain)
        except onnx.defs.SchemaError:
            bad.append(f"{label}: no such op at opset {version}")
    return bad


def require_converted(model: onnx.ModelProto) -> None:
    bad = unconverted_ops(model)
    if bad:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise GraphError(f"{len(bad)} op(s) were not converted to standard ONNX:\n  {shown}")


@dataclass(frozen=True)
class Fold:
    dft_matrix: str
    before: tuple[int, int]
    mel: tuple[int, int]
    after: tuple[int, int]
    # The filterbank itself: the FFT front end outside the graph applies it (frontend_build.py).
    mel_matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False, compare=False)


class _Index:
    """Producer/consumer/initializer lookups over one graph (rebuilt after each edit)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.init = {t.name: t for t in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producer[name] = node

    def const(self, name: str) -> np.ndarray | None:
        tensor = self.init.get(name)
        if tensor is not None:
            return numpy_helper.to_array(tensor)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def single(self, tensor: str, op_type: str, also: tuple[str, ...] = ()) -> onnx.NodeProto:
        """The one consumer of `tensor` of type op_type; other consumers may only be of types `also`."""
        consumers = self.consumers.get(tensor, [])
        main = [c for c in consumers if c.op_type == op_type]
        others = [c.op_type for c in consumers if c.op_type != op_type]
        if len(main) != 1 or any(t not in also for t in others):
            raise GraphError(f"{tensor}: expected one {op_type} consumer (plus {also or 'nothing'}), "
                             f"found {[c.op_type for c in consumers]}")
        return main[0]


def _check_shape_users_keep_leading_axes(index: _Index, tensor: str) -> None:
    """Shape(tensor) may only be used to read the leading axes, whose sizes the fold does not change."""
    for shape_node in (c for c in index.consumers.get(tensor, []) if c.op_type == "Shape"):
        frontier = [shape_node.output[0]]
        while frontier:
            for user in index.consumers.get(frontier.pop(), []):
                if user.op_type == "Cast":
                    frontier.append(user.output[0])
                    continue
                indices = index.const(user.input[1]) if user.op_type == "Gather" else None
                if indices is None or sorted(np.ravel(indices).tolist()) != list(range(np.size(indices))):
                    raise GraphError(f"{tensor}: its Shape feeds {user.op_type} {user.name}, "
                                     "which may read the last (folded) axis")


def fold_mel_into_dft(model: onnx.ModelProto, dft_marker: str) -> list[Fold]:
    """Replace MatMul(frames, C) ... MatMul(., M) by MatMul(frames, C @ M) for each real-DFT matrix C
    (an initializer whose name contains `dft_marker`).

    Expected chain (tf.tensordot over the last axis, as converted by tf2onnx):
      MatMul(x, C) -> Squeeze -> Cast(float) -> Reshape([-1, bins]) -> MatMul(., M[bins, K])
    The product is taken in float64 and stored as float32, so the fold adds no rounding of its own
    beyond what the separate float32 MatMuls had.
    """
    graph = model.graph
    folds: list[Fold] = []
    for node in list(graph.node):
        if node.op_type != "MatMul":
            continue
        dft_names = [name for name in node.input if dft_marker in name]
        if not dft_names:
            continue
        index = _Index(graph)
        dft_name = dft_names[0]
        dft = index.const(dft_name)
        if dft is None or dft_name not in index.init:
            raise GraphError(f"{dft_name}: expected an initializer")
        squeeze = index.single(node.output[0], "Squeeze")
        cast = index.single(squeeze.output[0], "Cast")
        reshape = index.single(cast.output[0], "Reshape", also=("Shape",))
        mel_matmul = index.single(reshape.output[0], "MatMul")
        target = index.const(reshape.input[1])
        mel = index.const(mel_matmul.input[1])
        if target is None or target.tolist() != [-1, dft.shape[1]]:
            raise GraphError(f"{reshape.name}: reshape target {target}, expected [-1, {dft.shape[1]}]")
        if mel is None or mel.ndim != 2 or mel.shape[0] != dft.shape[1]:
            raise GraphError(f"{mel_matmul.name}: second input is not a constant [{dft.shape[1]}, K] matrix")
        if len(index.consumers[reshape.input[1]]) != 1 or len(index.consumers[dft_name]) != 1:
            raise GraphError(f"{reshape.name}: shape or DFT constant is shared; refusing to edit it in place")
        _check_shape_users_keep_leading_axes(index, cast.output[0])

        folded = (dft.astype(np.float64) @ mel.astype(np.float64)).astype(np.float32)
        index.init[dft_name].CopyFrom(numpy_helper.from_array(folded, dft_name))
        index.init[reshape.input[1]].CopyFrom(
            numpy_helper.from_array(np.array([-1, folded.shape[1]], dtype=target.dtype), reshape.input[1]))
        # Whatever read the mel product now reads the reshaped, already-folded tensor.
        for user in index.consumers.get(mel_matmul.output[0], []):
            for i, name in enumerate(user.input):
                if name == mel_matmul.output[0]:
                    user.input[i] = reshape.output[0]
        for out in graph.output:
            if out.name == mel_matmul.output[0]:
                raise GraphError(f"{mel_matmul.name}: its output is a graph output")
        graph.node.remove(mel_matmul)
        folds.append(Fold(dft_name, (dft.shape[0], dft.shape[1]), (mel.shape[0], mel.shape[1]),
                          (folded.shape[0], folded.shape[1]), mel.astype(np.float32)))
    _drop_unused_initializers(graph)
    # Shapes recorded for the edited tensors are now wrong; onnxruntime re-infers all of them.
    del graph.value_info[:]
    return folds


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in _all_nodes(graph) for name in node.input}
    used.update(out.name for out in graph.output)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def expose_embedding(model: onnx.ModelProto, dim: int) -> str:
    """Rename the pooled-features tensor to `embedding` and make it a second graph output.

    Returns the name of the node that produces it. The tensor is renamed rather than copied through an
    Identity node so the graph stays exactly as before apart from one more output.
    """
    graph = model.graph
    candidates = [n for n in graph.node if EMBEDDING_NODE_MARKER in n.name and n.op_type == "Squeeze"]
    if len(candidates) != 1:
        raise GraphError(f"expected one Squeeze named *{EMBEDDING_NODE_MARKER}*, "
                         f"found {[n.name for n in candidates]}")
    squeeze = candidates[0]
    index = _Index(graph)
    pool = index.producer.get(squeeze.input[0])
    if pool is None or pool.op_type not in ("GlobalAveragePool", "ReduceMean"):
        raise GraphError(f"{squeeze.name}: not fed by a global average pool "
                         f"({pool.op_type if pool else 'graph input'})")
    old = squeeze.output[0]
    for node in _all_nodes(graph):
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = EMBEDDING_NAME
    squeeze.output[0] = EMBEDDING_NAME
    graph.output.append(helper.make_tensor_value_info(EMBEDDING_NAME, TensorProto.FLOAT, [BATCH_DIM, dim]))
    return squeeze.name


def name_batch_dim(model: onnx.ModelProto) -> None:
    """Give the leading dim of every graph input/output the one symbolic name `batch`.

    tf2onnx names them unk__N, a different symbol per tensor; one shared name tells readers (and tools)
    that all outputs have the input's batch size.
    """
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM


def io_signature(model: onnx.ModelProto) -> dict[str, dict[str, list[int | str]]]:
    """{'inputs': {name: dims}, 'outputs': {name: dims}}, symbolic dims as their names."""

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param if d.HasField("dim_param") else d.dim_value
                for d in value.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: dims(v) for v in model.graph.input},
        "outputs": {v.name: dims(v) for v in model.graph.output},
    }


def check_contract(model: onnx.ModelProto, n_samples: int, n_labels: int, embedding_dim: int) -> None:
    """The I/O contract the Lambda runtime relies on; raise GraphError naming the first difference."""
    want = {
        "inputs": {INPUT_NAME: [BATCH_DIM, n_samples]},
        "outputs": {LOGITS_NAME: [BATCH_DIM, n_labels], EMBEDDING_NAME: [BATCH_DIM, embedding_dim]},
    }
    got = io_signature(model)
    if got != want:
        raise GraphError(f"I/O signature {got} is not the contract {want}")
    for value in (*model.graph.input, *model.graph.output):
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise GraphError(f"{value.name}: not float32")
    require_converted(model)
    onnx.checker.check_model(model, full_check=True)


_COUNTER_NAME = re.compile(r"^(?P<stem>.*?)__\d+(?P<port>:\d+)?$")
# Constants up to this size (shapes, axes, scalars) are named after their value; see canonicalize_names.
SMALL_CONST_ELEMENTS = 64


def _value_name(tensor: onnx.TensorProto) -> str:
    array = numpy_helper.to_array(tensor)
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()
    return f"const_{array.dtype}_{'x'.join(map(str, array.shape)) or 'scalar'}_{digest[:12]}"


def canonicalize_names(model: onnx.ModelProto) -> int:
    """Make the names tf2onnx generates the same on every build; return how many names changed.

    tf2onnx names the nodes and constants it creates `stem__<counter>`, from a global counter. Several
    of its passes walk sets of node objects, whose order follows memory addresses, so from one run to
    the next the counters differ and, where it merges duplicate nodes or equal constants, a different
    one survives under its own stem. The computation and the node order come out the same; the names,
    and so the file's sha256, do not. Here generated names are rebuilt from what is stable:
      - small constants (shapes, axes, scalars) are named after their value, equal ones merged;
      - generated nodes become `<op_type>__<k>` in node order, their outputs `<node>:<port>`;
      - other generated initializers keep their stem and are renumbered in first-use order.
    Names given by TensorFlow (no counter), and graph inputs and outputs, are kept.
    """
    graph = model.graph
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attr in node.attribute):
        raise GraphError("subgraphs are not expected in BirdNET; canonicalize_names does not handle them")
    graph_io = {v.name for v in (*graph.input, *graph.output)}

    def generated(name: str) -> bool:
        return name not in graph_io and _COUNTER_NAME.match(name) is not None

    tensors: dict[str, str] = {}
    unique: dict[str, onnx.TensorProto] = {}
    for tensor in graph.initializer:
        if np.prod(tensor.dims) <= SMALL_CONST_ELEMENTS and tensor.name not in graph_io:
            tensors[tensor.name] = _value_name(tensor)
        unique.setdefault(tensors.get(tensor.name, tensor.name), tensor)

    renamed_nodes = 0
    for k, node in enumerate(graph.node):
        if generated(node.name):
            node.name = f"{node.op_type}__{k}"
            renamed_nodes += 1
        for port, name in enumerate(node.output):
            if name and generated(name):
                tensors[name] = f"{node.name}:{port}"
    counter = 0
    for name in (n for node in graph.node for n in node.input):
        if name in tensors or not generated(name):
            continue
        match = _COUNTER_NAME.match(name)
        assert match is not None
        tensors[name] = f"{match['stem']}__{counter}"
        counter += 1

    def rename(name: str) -> str:
        return tensors.get(name, name)

    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for value in graph.value_info:
        value.name = rename(value.name)

    first_use: dict[str, int] = {}
    for name in (n for node in graph.node for n in node.input):
        first_use.setdefault(name, len(first_use))
    kept = []
    for old_name, tensor in unique.items():
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename(old_name)
        kept.append(copy)
    kept.sort(key=lambda t: (first_use.get(t.name, len(first_use)), t.name))
    del graph.initializer[:]
    graph.initializer.extend(kept)

    produced = [n for node in graph.node for n in node.output if n]
    names = produced + [t.name for t in graph.initializer] + [v.name for v in graph.input]
    if len(set(names)) != len(names):
        raise GraphError("canonicalize_names produced a duplicate tensor name")
    return renamed_nodes + sum(old != new for old, new in tensors.items())


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace metadata_props with `props` (sorted, so the file bytes do not depend on dict order)."""
    del model.metadata_props[:]
    for key in sorted(props):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, props[key]


def content_digest(model: onnx.ModelProto) -> str:
    """sha256 of the graph (nodes, names, initializer values, I/O, opsets) without the producer and
    metadata strings, so a rebuild that only changes those is told apart from one that changes the graph."""
    digest = hashlib.sha256()
    for imp in sorted(model.opset_import, key=lambda i: i.domain):
        digest.update(f"opset {imp.domain}:{imp.version}\n".encode())
    graph = model.graph
    for value in (*graph.input, *graph.output):
        digest.update(value.SerializeToString(deterministic=True))
    for node in graph.node:
        digest.update(node.SerializeToString(deterministic=True))
    for tensor in sorted(graph.initializer, key=lambda t: t.name):
        array = numpy_helper.to_array(tensor)
        digest.update(f"{tensor.name} {array.dtype} {array.shape}\n".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


SPECTROGRAM_NAME = "spectrogram"
# Where BirdNET's two spectrograms meet: Concat of the two [bands, frames, batch, 1] tensors, then its
# spectrogram batch norm (Mul, Add) and the Transpose to NCHW that feeds the first convolution.
SPECTROGRAM_CONCAT = "model/concatenate/concat"


def cut_after_spectrogram(model: onnx.ModelProto, shape: tuple[int, int, int]) -> onnx.ModelProto:
    """A copy of the graph that starts at the spectrogram: input ``spectrogram`` [batch, channels,
    bands, frames] (NCHW, what the first convolution reads), the spectrogram batch norm kept inside.

    The graph's own layout there is [bands, frames, batch, channels] followed by a Transpose; the batch
    norm's per-channel constants are re-shaped for NCHW, so every value it computes is the same.
    """
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    graph = cut.graph
    index = _Index(graph)
    mul = index.single(SPECTROGRAM_CONCAT, "Mul")
    add = index.single(mul.output[0], "Add")
    transpose = index.single(add.output[0], "Transpose")
    perm = next(onnx.helper.get_attribute_value(a) for a in transpose.attribute if a.name == "perm")
    if list(perm) != [2, 3, 0, 1]:
        raise GraphError(f"{transpose.name}: perm {perm}, expected [2, 3, 0, 1]")
    scale, bias = index.const(mul.input[1]), index.const(add.input[1])
    if scale is None or bias is None or scale.shape != (1, 1, 1, shape[0]) or bias.shape != scale.shape:
        raise GraphError(f"{mul.name}/{add.name}: expected per-channel constants of shape (1, 1, 1, {shape[0]})")
    names = (f"{SPECTROGRAM_NAME}_bn_scale", f"{SPECTROGRAM_NAME}_bn_bias")
    graph.initializer.extend([numpy_helper.from_array(scale.reshape(1, -1, 1, 1), names[0]),
                              numpy_helper.from_array(bias.reshape(1, -1, 1, 1), names[1])])
    head = [helper.make_node("Mul", [SPECTROGRAM_NAME, names[0]], [f"{SPECTROGRAM_NAME}_scaled"],
                             name=f"{SPECTROGRAM_NAME}_bn_mul"),
            helper.make_node("Add", [f"{SPECTROGRAM_NAME}_scaled", names[1]], [transpose.output[0]],
                             name=f"{SPECTROGRAM_NAME}_bn_add")]
    producer = {out: node for node in graph.node for out in node.output if node is not transpose}
    producer.update({out: node for node in head for out in node.output})
    needed: set[int] = set()
    frontier = [out.name for out in graph.output]
    while frontier:
        node = producer.get(frontier.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            frontier.extend(node.input)
    kept = head + [n for n in graph.node if id(n) in needed and n is not transpose]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(SPECTROGRAM_NAME, TensorProto.FLOAT, [BATCH_DIM, *shape]))
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    onnx.checker.check_model(cut, full_check=True)
    return cut


def with_spectrogram_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy that also outputs the graph's own spectrogram (for checking the FFT front end against it)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(helper.make_tensor_value_info(SPECTROGRAM_CONCAT, TensorProto.FLOAT, None))
    return out


@dataclass(frozen=True)
class ConvSpectrogram:
    """One spectrogram as a strided convolution: ``kernel`` [bands, frame_length] holds the Hann window
    times the DFT cosines times the mel filterbank, rows already in the graph's (flipped) band order."""
    kernel: np.ndarray
    hop: int
    power: float


def spectrogram_by_conv(body: onnx.ModelProto, specs: list[ConvSpectrogram], n_samples: int, frames: int,
                        eps: float) -> onnx.ModelProto:
    """The cut graph (input ``spectrogram`` [batch, len(specs), bands, frames]) with the front end put
    back in front of it: input ``INPUT`` [batch, n_samples] again, the same outputs.

    Per window: x = ((x - min) / (max(x - min) + eps) - 0.5) * 2, the graph's own normalisation, in its
    order; then per spectrogram Conv(x, kernel, stride hop) -> re [batch, bands, 1, frames'], the
    first ``frames`` frames, exp(power * log(re * re)) (= (re * re) ** power; log 0 = -inf gives 0, as
    0 ** power does), and the spectrograms stacked on axis 1.
    """
    if [i.name for i in body.graph.input] != [SPECTROGRAM_NAME]:
        raise GraphError(f"expected the cut graph (input {SPECTROGRAM_NAME!r}), got "
                         f"{[i.name for i in body.graph.input]}")
    bands = {int(s.kernel.shape[0]) for s in specs}
    if len(bands) != 1:
        raise GraphError(f"spectrograms with different band counts {sorted(bands)}")
    n_bands = bands.pop()
    opset = _opset_versions(body).get("", 0)
    model = onnx.ModelProto()
    model.CopyFrom(body)
    graph = model.graph
    names = {n for node in graph.node for n in (*node.input, *node.output)} | {t.name for t in graph.initializer}

    def fresh(stem: str) -> str:
        name, i = f"frontend/{stem}", 0
        while name in names:
            i += 1
            name = f"frontend/{stem}_{i}"
        names.add(name)
        return name

    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(stem: str, value: np.ndarray) -> str:
        name = fresh(stem)
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], stem: str, **attrs: object) -> str:
        out = fresh(stem)
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def reduce(op: str, x: str, stem: str) -> str:
        if opset >= 18:
            return node(op, [x, const(f"{stem}_axes", np.array([1], np.int64))], stem, keepdims=1)
        return node(op, [x], stem, axes=[1], keepdims=1)

    x = INPUT_NAME
    shifted = node("Sub", [x, reduce("ReduceMin", x, "min")], "shifted")
    scale = node("Add", [reduce("ReduceMax", shifted, "max"), const("eps", np.array(eps, np.float32))], "range")
    unit = node("Div", [shifted, scale], "unit")
    centred = node("Sub", [unit, const("half", np.array(0.5, np.float32))], "centred")
    signal = node("Mul", [centred, const("two", np.array(2.0, np.float32))], "normalised")
    signal4 = node("Unsqueeze", [signal, const("axes12", np.array([1, 2], np.int64))], "signal4")
    stacked = []
    for i, spec in enumerate(specs):
        length = int(spec.kernel.shape[1])
        have = (n_samples - length) // spec.hop + 1
        if have < frames:
            raise GraphError(f"spectrogram {i}: {n_samples} samples give {have} frames of {length} "
                             f"at hop {spec.hop}, fewer than {frames}")
        kernel = const(f"kernel{i}", np.ascontiguousarray(spec.kernel, np.float32).reshape(n_bands, 1, 1, length))
        re = node("Conv", [signal4, kernel], f"re{i}", kernel_shape=[1, length], strides=[1, spec.hop])
        if have > frames:
            re = node("Slice", [re, const(f"start{i}", np.array([0], np.int64)),
                                const(f"end{i}", np.array([frames], np.int64)),
                                const(f"axis{i}", np.array([3], np.int64))], f"re{i}_frames")
        square = node("Mul", [re, re], f"square{i}")
        log = node("Log", [square], f"log{i}")
        scaled = node("Mul", [log, const(f"power{i}", np.array(spec.power, np.float32))], f"scaled{i}")
        energy = node("Exp", [scaled], f"energy{i}")
        stacked.append(node("Reshape", [energy, const(f"shape{i}", np.array([-1, 1, n_bands, frames], np.int64))],
                            f"spec{i}"))
    nodes.append(helper.make_node("Concat", stacked, [SPECTROGRAM_NAME], name="frontend/spectrogram", axis=1))
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + kept)
    graph.initializer.extend(inits)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, n_samples]))
    del graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    return model


def drop_shape_noops(model: onnx.ModelProto) -> int:
    """Remove, in place, each Reshape to a constant [-1, d1, ...] whose input already has the static
    trailing sizes d1, ... (so -1 is its batch size: nothing changes), and the Squeeze feeding it when it
    only undoes that Squeeze. Returns how many nodes went."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | str]] = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    index = _Index(graph)
    outputs = {o.name for o in graph.output}

    def keeps(tensor: str, target: np.ndarray) -> bool:
        shape = shapes.get(tensor)
        if shape is None or len(shape) != len(target):
            return False
        return all(isinstance(d, int) and d > 0 and d == t
                   for d, t in zip(shape[1:], target[1:].tolist(), strict=True))

    drop: set[int] = set()
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Reshape" or node.output[0] in outputs:
            continue
        target = index.const(node.input[1])
        if target is None or target.ndim != 1 or target.size < 2 or target[0] != -1 or (target[1:] <= 0).any():
            continue
        source = index.producer.get(node.input[0])
        if (source is not None and source.op_type == "Squeeze" and len(index.consumers[node.input[0]]) == 1
                and keeps(source.input[0], target)):
            drop.update((id(source), id(node)))
            rename[node.output[0]] = source.input[0]
        elif keeps(node.input[0], target):
            drop.add(id(node))
            rename[node.output[0]] = node.input[0]

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    kept = [n for n in graph.node if id(n) not in drop]
    for n in kept:
        for i, name in enumerate(n.input):
            n.input[i] = resolve(name)
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    return len(drop)
