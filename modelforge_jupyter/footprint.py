"""The memory an ONNX model asks for when a session is built, read from its graph before any session exists.

ONNX Runtime folds constant subgraphs when it builds a session: a node whose inputs are all constants (initializers,
``Constant`` nodes, the outputs of other such nodes, ``Shape``/``Size`` of a tensor of static shape) is run once and
its output kept in the session as an initializer. It also densifies sparse constants. A graph of a few hundred bytes
can so ask for gigabytes: ``ConstantOfShape`` of a constant shape of 5·10⁷ floats is a 200 MB tensor held by every
session of the model; reduced to one number, 200 MB at each build, more at peak.

``constant_footprint`` sizes those computed constants without allocating any: shapes come from ONNX shape inference
(``onnx.shape_inference``, without data propagation, which materialises shape values as protobuf dimensions and
can itself take gigabytes), run on a copy of the graph whose initializers of more than ``SHAPE_VALUE_MAX`` elements
are replaced by inputs of the same type and shape (their values are never shapes, and inference then costs
microseconds instead of a copy of the weights). Tensors stored in the file are bounded by the file's size and not
counted; what the graph computes from them is.

The engine refuses a model whose known computed constants exceed ``max_constant_bytes`` and gives ONNX Runtime
``fold_limit`` as its per-node folding cap (``optimization.constant_folding_max_output_size_in_bytes``), so that
the constants whose size inference could not tell stay within the rest of the budget: they are computed at each run
instead, inside the run memory cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

from .errors import InvalidModelError

SHAPE_VALUE_MAX = 1024  # initializers with more elements are not shapes, axes or pads: inference gets their type only
SIZED_FROM_INPUT = {"Shape", "Size"}  # ORT folds these when their input's shape is static


@dataclass(frozen=True)
class ConstantFootprint:
    """Bytes of the constants ONNX Runtime computes when it builds a session of one model.

    ``computed_bytes``: the sum over outputs of constant-foldable nodes and over densified sparse constants whose
    shape inference gives a static shape; ``unknown``: how many such outputs inference could not size; ``largest``:
    (a description of the node and output, its bytes) of the largest one, for messages.
    """

    computed_bytes: int = 0
    unknown: int = 0
    largest: tuple[str, int] = ("", 0)

    def fold_limit(self, budget: int) -> int:
        """ONNX Runtime's per-node constant-folding cap (bytes) that keeps all folded constants within ``budget``.

        Every output of known size fits in the budget (``check`` refused the model otherwise); the outputs of unknown
        size share what is left equally, so their sum cannot pass it either. A node over the cap is not folded: it
        runs at each prediction instead, within the run memory cap.
        """
        if not self.unknown:
            return budget
        return max(1, (budget - self.computed_bytes) // self.unknown)

    def check(self, budget: int, setting: str = "max_constant_bytes, env MODELFORGE_MAX_CONSTANT_BYTES") -> None:
        """Raise ``InvalidModelError`` (400) naming the largest constant, the total and ``budget`` when over it."""
        if self.computed_bytes > budget:
            where, size = self.largest
            raise InvalidModelError(
                f"the model computes {self.computed_bytes} bytes of constants when it is loaded (the largest: {where},"
                f" {size} bytes); the limit is {budget} bytes ({setting})"
            )


def constant_footprint(model: Any) -> ConstantFootprint:
    """Size the constants a session of ``model`` (an ``onnx.ModelProto``) computes; see the module docstring.

    Never allocates a tensor of the model; a graph shape inference cannot read leaves every output unknown. Shape
    inference runs only if some node is foldable (most converted models have none: no cost but the walk).
    """
    walk = _Walk(model)
    walk.graph(model.graph, frozenset())
    return ConstantFootprint(walk.total, walk.unknown, walk.largest)


class _Walk:
    """One pass over the graph and its subgraphs in node order (ONNX graphs are topologically sorted)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._types: dict[str, Any] | None = None
        self.total = 0
        self.unknown = 0
        self.largest: tuple[str, int] = ("", 0)

    def graph(self, graph: Any, outer: frozenset[str]) -> None:
        constants = set(outer) | {t.name for t in graph.initializer}
        for sparse in graph.sparse_initializer:
            constants.add(sparse.values.name)
            self.add(f"sparse initializer {sparse.values.name!r}", _sparse_bytes(sparse))
        for index, node in enumerate(graph.node):
            where = f"{node.op_type!r} node {node.name!r}" if node.name else f"{node.op_type!r} node #{index}"
            for attr in node.attribute:  # If/Loop/Scan bodies fold too; they see the outer constants
                for sub in [attr.g, *attr.graphs] if attr.type in (5, 10) else ():  # GRAPH, GRAPHS
                    self.graph(sub, frozenset(constants))
            inputs = [name for name in node.input if name]
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                constants.update(node.output)
                for attr in node.attribute:
                    if attr.name == "sparse_value":
                        self.add(f"{where}, sparse value", _sparse_bytes(attr.sparse_tensor))
            elif self._foldable(node, inputs, constants):
                constants.update(node.output)
                for output in node.output:
                    self.add(f"{where}, output {output!r}", self.size(output))

    def _foldable(self, node: Any, inputs: list[str], constants: set[str]) -> bool:
        if node.op_type in SIZED_FROM_INPUT and inputs:
            return self.size(inputs[0], shape_only=True) is not None
        return all(name in constants for name in inputs)

    def size(self, name: str, shape_only: bool = False) -> int | None:
        """Bytes of tensor ``name`` from its inferred type and shape (``shape_only``: its element count), else None."""
        if self._types is None:
            self._types = _inferred_types(self.model)
        kind = self._types.get(name)
        if kind is None or not kind.HasField("tensor_type") or not kind.tensor_type.HasField("shape"):
            return None
        dims = kind.tensor_type.shape.dim
        if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            return None
        count = prod(d.dim_value for d in dims)
        if shape_only:
            return count
        itemsize = _itemsize(kind.tensor_type.elem_type)
        return None if itemsize is None else count * itemsize

    def add(self, where: str, size: int | None) -> None:
        if size is None:
            self.unknown += 1
            return
        self.total += size
        if size > self.largest[1]:
            self.largest = (where, size)


def _inferred_types(model: Any) -> dict[str, Any]:
    """{tensor name: TypeProto} after shape inference on a copy of ``model`` without its large initializers' data."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    src, graph = model.graph, light.graph
    graph.node.extend(src.node)
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)
    declared = {v.name for v in src.input}
    for tensor in src.initializer:
        if prod(tensor.dims) <= SHAPE_VALUE_MAX:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for sparse in src.sparse_initializer:
        if sparse.values.name not in declared:
            elem = sparse.values.data_type
            graph.input.append(onnx.helper.make_tensor_value_info(sparse.values.name, elem, list(sparse.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=False)
    except Exception:  # a graph ONNX cannot read (ORT may still; it says so when the session is built)
        return {}
    types: dict[str, Any] = {}
    _collect(inferred.graph, types)
    return types


def _collect(graph: Any, types: dict[str, Any]) -> None:
    for value in (*graph.input, *graph.value_info, *graph.output):
        types[value.name] = value.type
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in (5, 10) else ():
                _collect(sub, types)


def _sparse_bytes(sparse: Any) -> int | None:
    itemsize = _itemsize(sparse.values.data_type)
    return None if itemsize is None else prod(sparse.dims) * itemsize


def _itemsize(elem_type: int) -> int | None:
    """Bytes per element of an ONNX tensor element type; None for strings and unknown types."""
    from onnx import helper

    try:
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    except (KeyError, ValueError, TypeError):
        return None
    return None if dtype.kind in "OUS" else dtype.itemsize
