"""skl2onnx's ZipMap outputs, built by ModelForge after their size is checked instead of inside ONNX Runtime's run.

A ``ZipMap`` node (``ai.onnx.ml``) turns a float tensor ``[N, C]`` (or ``[C]``: one row) into a sequence of N maps
``{class label: probability}``. ONNX Runtime's Python binding builds those maps as Python dicts inside
``session.run``, before the engine can size the answer: a 61-byte request whose ZipMap got 10⁶ rows was refused 413
after the server had peaked ~460 MB higher. So the engine builds its session from the graph without its ZipMap nodes
(``strip``): each one's input tensor becomes a graph output in its place, under a private name (an ``Identity``), the
engine checks the answer's size on that tensor, and only then are the maps built here, from the node's labels
(``ZipMapOutput``). They are the maps ONNX Runtime builds (``ml/zipmap.cc``): a ``std::map`` per row, so keys come
sorted and a label listed twice keeps its last column; keys are Python ints (``classlabels_int64s``) or strings
(``classlabels_strings``), values Python floats of the float32 values. The output specs a model reports
(``seq(map(int64,tensor(float)))``) are the original graph's.

A ZipMap is stripped only where the answer is all it feeds: a node of the main graph whose output is a graph output
that no other node reads, with exactly one of the two label attributes. Any other ZipMap is left to ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InferenceError
from .records import TensorSpec

ML_DOMAIN = "ai.onnx.ml"
MAP_ENTRY = 16  # bytes a map entry is counted in an answer's size (key and value), plus a string key's UTF-8 text
_GRAPH, _GRAPHS = 5, 10  # onnx.AttributeProto.GRAPH, GRAPHS
_SEQUENCE_OF_FLOAT_MAPS = "seq(map({key},tensor(float)))"


@dataclass(frozen=True)
class ZipMapOutput:
    """One stripped ZipMap: the graph output it made (``name``), the session output now holding its input tensor
    (``tensor_name``) and its labels as ONNX Runtime's maps hold them (``keys``: sorted, unique; ``columns``: the
    column of each key, None when that is ``range(len(keys))``)."""

    name: str
    tensor_name: str
    node: str  # the node's name, for messages
    labels: int  # how many labels the node lists: the columns each row must have
    keys: tuple  # ints or strings, as ONNX Runtime's maps give them
    columns: tuple[int, ...] | None
    row_bytes: int  # the answer's bytes a row counts (``MAP_ENTRY`` a key, plus a string key's UTF-8 bytes)

    @property
    def spec(self) -> TensorSpec:
        """The output's spec as ONNX Runtime reports it for the original graph."""
        key = "string" if self.keys and isinstance(self.keys[0], str) else "int64"
        return TensorSpec(name=self.name, dtype=_SEQUENCE_OF_FLOAT_MAPS.format(key=key), shape=[])

    def nbytes(self, tensor: np.ndarray) -> int:
        """Bytes the maps of ``tensor`` count in an answer's size (``limits.output_bytes``), without building them."""
        return (tensor.shape[0] if tensor.ndim == 2 else 1) * self.row_bytes

    def rows(self, tensor: np.ndarray, model_name: str) -> np.ndarray:
        """``tensor`` as ``[N, keys]`` in key order. Raises ``InferenceError`` (422) for what ONNX Runtime's ZipMap
        refuses: a scalar, more than 2 dimensions, or a row length other than the number of labels."""
        if tensor.ndim not in (1, 2) or tensor.shape[-1] != self.labels:
            raise InferenceError(
                f"model {model_name!r} failed on this input: ZipMap node {self.node!r} takes rows of {self.labels} "
                f"values (one a class label), got a tensor of shape {list(tensor.shape)}"
            )
        rows = tensor.reshape(-1, self.labels)
        return rows if self.columns is None else rows[:, self.columns]


def strip(model: Any) -> list[ZipMapOutput]:
    """Remove from ``model`` (an ``onnx.ModelProto``, changed in place) the ZipMap nodes the module docstring says
    can be, and return one ``ZipMapOutput`` for each (none: the model is left unchanged)."""
    from onnx import TensorProto, helper

    graph = model.graph
    read = _names_read(graph)
    outputs = {value.name: value for value in graph.output}
    taken = _names(graph)
    stripped: list[ZipMapOutput] = []
    for node in list(graph.node):
        found = _strippable(node, outputs, read)
        if found is None:
            continue
        keys, labels = found
        tensor_name = _private_name(taken, len(stripped))
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node("Identity", [node.input[0]], [tensor_name], name=tensor_name))
        position = [value.name for value in graph.output].index(node.output[0])
        graph.output.remove(outputs[node.output[0]])
        graph.output.insert(position, helper.make_tensor_value_info(tensor_name, TensorProto.FLOAT, None))
        stripped.append(_output(node, tensor_name, keys, labels))
    return stripped


def all_float(session: Any, zipmaps: list[ZipMapOutput]) -> bool:
    """Whether in ``session`` (an ``InferenceSession`` of the stripped graph) every tensor standing for a ZipMap's maps
    is a float tensor, the only input ZipMap takes (ONNX Runtime refuses the original graph otherwise)."""
    types = {node.name: node.type for node in session.get_outputs()}
    return all(types.get(z.tensor_name) == "tensor(float)" for z in zipmaps)


def _strippable(node: Any, outputs: dict[str, Any], read: dict[str, int]) -> tuple[list, int] | None:
    """(the labels, their count) of a ZipMap that only makes a graph output, else None."""
    if node.op_type != "ZipMap" or node.domain != ML_DOMAIN or len(node.input) != 1 or len(node.output) != 1:
        return None
    out = node.output[0]
    if out not in outputs or read.get(out, 0) or not node.input[0]:
        return None
    attrs = {a.name: a for a in node.attribute}
    ints, strings = attrs.get("classlabels_int64s"), attrs.get("classlabels_strings")
    ints = list(ints.ints) if ints is not None else []
    try:
        strings = [s.decode() for s in strings.strings] if strings is not None else []
    except UnicodeDecodeError:  # keys ONNX Runtime's binding cannot give as str either: left to it
        return None
    if bool(ints) == bool(strings) or set(attrs) - {"classlabels_int64s", "classlabels_strings"}:
        return None  # ONNX Runtime refuses it at load: left for its message
    declared = outputs[out].type
    if declared.HasField("sequence_type") or declared.WhichOneof("value") is None:
        labels = ints or strings
        return labels, len(labels)
    return None  # declared as something else: ONNX Runtime decides


def _output(node: Any, tensor_name: str, labels: list, count: int) -> ZipMapOutput:
    last = {label: column for column, label in enumerate(labels)}  # std::map: a repeated label keeps its last column
    keys = tuple(sorted(last))
    columns = tuple(last[key] for key in keys)
    row_bytes = sum(MAP_ENTRY + (len(key.encode()) if isinstance(key, str) else 0) for key in keys)
    return ZipMapOutput(
        name=node.output[0], tensor_name=tensor_name, node=node.name or "ZipMap", labels=count, keys=keys,
        columns=None if columns == tuple(range(count)) else columns, row_bytes=row_bytes,
    )


def _names_read(graph: Any) -> dict[str, int]:
    """How many times each name is read by a node of ``graph`` or of any subgraph (outer-scope reads included)."""
    read: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            read[name] = read.get(name, 0) + 1
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in (_GRAPH, _GRAPHS) else ():
                for name, count in _names_read(sub).items():
                    read[name] = read.get(name, 0) + count
    return read


def _names(graph: Any) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
    return names


def _private_name(taken: set[str], index: int) -> str:
    name = f"modelforge.zipmap.{index}"
    while name in taken:
        name += "_"
    taken.add(name)
    return name
