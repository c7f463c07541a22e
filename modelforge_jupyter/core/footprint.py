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

Model-local functions are inlined first (``onnx.inliner``, as ONNX Runtime does when it loads the model), after their
expanded node count is checked against ``MAX_INLINED_NODES``: a call node otherwise looks like one small output while
its body folds gigabytes. String tensors are sized as ONNX Runtime holds them: a ``std::string`` object
(``STRING_OBJECT`` bytes) per element plus its characters, whose length is bounded from the constant strings they are
copied from (``StringConcat`` adds its inputs' lengths, ``Cast`` to string gives at most ``CAST_STRING_MAX``).

``string_growth`` finds the nodes a request could make allocate string characters outside ONNX Runtime's arena:
``Expand``, ``Tile``, ``Gather``... whose element count a run computes (a non-constant shape, repeats or indices) over
strings that are not constants of at most ``COPIED_STRING_MAX`` bytes; ``string_copies`` bounds how many times the
nodes whose count the model fixes (``Tile`` by constant repeats, ``Gather`` of constant indices...) copy a request's
strings (and ``Concat`` listing them more than once), for the engine to check each request's strings against before
the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

from .errors import InvalidModelError, first_line

SHAPE_VALUE_MAX = 1024  # initializers with more elements are not shapes, axes or pads: inference gets their type only
SIZED_FROM_INPUT = {"Shape", "Size"}  # ORT folds these when their input's shape is static
MAX_INLINED_NODES = 100_000  # nodes a model's local functions may expand to; more is refused (400)
STRING_OBJECT = 32  # sizeof(std::string) in libstdc++: what ORT's arena and its folding cap count per string element
# the longest string a node whose count a run sets may copy: libstdc++ keeps strings of up to 15 bytes inside the
# object (in the arena); up to 47 bytes, the block malloc gives the characters (48 + its 16-byte header: 64 bytes) is at
# most twice the 32 bytes the arena holds for the object, so such copies hold outside the arena at most twice its cap
COPIED_STRING_MAX = 47
CAST_STRING_MAX = 64  # characters of a number cast to a string (ORT prints at most ~25)
STRING = 8  # onnx.TensorProto.STRING
# ops whose output element count is set by the VALUES of some inputs (indices listed; None: all), with their data
# inputs copied to the output: over strings, a request could make them allocate string characters outside the arena
COUNT_FROM_VALUES: dict[str, tuple[int, ...] | None] = {
    "Expand": (1,), "Tile": (1,), "Gather": (1,), "GatherElements": (1,), "GatherND": (1,), "Pad": (1, 3),
    "ArrayFeatureExtractor": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "ConstantOfShape": (0,),
    "Where": None, "StringConcat": None,  # broadcasting: any input's shape sets the count
    "LabelEncoder": (0,), "CategoryMapper": (0,),  # ai.onnx.ml: one string of their attributes per input element
}


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
    unknown_string_chars: int = 0  # the longest string an output of unknown size may hold (characters)
    string_growth: str = ""  # a node a request could make allocate string characters outside the arena (see module)
    string_copies: int = 0  # at most how many times the model copies a request's strings (0: it never does)

    def fold_limit(self, budget: int) -> int:
        """ONNX Runtime's per-node constant-folding cap (bytes) that keeps all folded constants within ``budget``.

        Every output of known size fits in the budget (``check`` refused the model otherwise); the outputs of unknown
        size share what is left equally, so their sum cannot pass it either. A node over the cap is not folded: it
        runs at each prediction instead, within the run memory cap.
        ONNX Runtime counts ``STRING_OBJECT`` bytes per string element, not its characters: when an output of unknown
        size may hold strings of up to ``unknown_string_chars`` characters, the cap shrinks by that ratio.
        """
        if not self.unknown:
            return budget
        share = max(1, (budget - self.computed_bytes) // self.unknown)
        return max(1, share * STRING_OBJECT // (STRING_OBJECT + self.unknown_string_chars))

    def check(self, budget: int, setting: str = "max_constant_bytes, env MODELFORGE_MAX_CONSTANT_BYTES") -> None:
        """Raise ``InvalidModelError`` (400) naming the largest constant, the total and ``budget`` when over it."""
        if self.computed_bytes > budget:
            where, size = self.largest
            raise InvalidModelError(
                f"the model computes {self.computed_bytes} bytes of constants when it is loaded (the largest: {where},"
                f" {size} bytes); the limit is {budget} bytes ({setting})"
            )

    def check_strings(self) -> None:
        """Raise ``InvalidModelError`` (400) naming the node when a request could make the model allocate string
        characters outside ONNX Runtime's capped arena (``string_growth``)."""
        if self.string_growth:
            raise InvalidModelError(
                f"the model cannot be served within the memory limits: {self.string_growth}, and the characters of"
                " strings are held outside ONNX Runtime's capped arena (max_arena_bytes); only constant strings of at"
                f" most {COPIED_STRING_MAX} bytes may be copied a number of times a request sets"
            )


def parsed(model_bytes: bytes) -> Any:
    """``model_bytes`` as an ``onnx.ModelProto``; None for bytes ``onnx`` cannot parse (ONNX Runtime says why)."""
    import onnx

    try:
        return onnx.load_from_string(model_bytes)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors alike
        return None


def constant_footprint(model: Any) -> ConstantFootprint:
    """Size the constants a session of ``model`` (an ``onnx.ModelProto``) computes; see the module docstring.

    Never allocates a tensor of the model; a graph shape inference cannot read leaves every output unknown. Shape
    inference runs only if some node is foldable or copies values a run counts (most converted models have none: no
    cost but the walk). Raises ``InvalidModelError`` (400) for local functions that call themselves, expand to more
    than ``MAX_INLINED_NODES`` nodes or cannot be inlined.
    """
    if model.functions:
        model = _inlined(model)
    walk = _Walk(model)
    walk.graph(model.graph, frozenset())
    return ConstantFootprint(walk.total, walk.unknown, walk.largest, walk.unknown_chars, walk.growth, walk.copies)


def _inlined(model: Any) -> Any:
    """``model`` with its local functions inlined (a copy), once their expanded size is known to be bounded."""
    from onnx import inliner

    functions = {(f.domain, f.name, f.overload): f for f in model.functions}
    sizes: dict[tuple, int] = {}
    calling: set[tuple] = set()

    def count(nodes: Any) -> int:
        total = 0
        for node in nodes:
            key = (node.domain, node.op_type, node.overload)
            total += function(key) if key in functions else 1
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs] if attr.type in (5, 10) else ():
                    total += count(sub.node)
            if total > MAX_INLINED_NODES:
                break
        return total

    def function(key: tuple) -> int:
        if key not in sizes:
            if key in calling:
                raise InvalidModelError(f"the model's local function {key[1]!r} calls itself")
            calling.add(key)
            sizes[key] = count(functions[key].node)
            calling.discard(key)
        return sizes[key]

    if count(model.graph.node) > MAX_INLINED_NODES:
        raise InvalidModelError(f"the model's local functions expand to more than {MAX_INLINED_NODES} nodes")
    try:
        return inliner.inline_local_functions(model)
    except Exception as err:  # noqa: BLE001 - onnx's C++ errors have no common type
        raise InvalidModelError(f"the model's local functions cannot be inlined: {first_line(err)}") from None


class _Walk:
    """One pass over the graph and its subgraphs in node order (ONNX graphs are topologically sorted)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._types: dict[str, Any] | None = None
        self.total = 0
        self.unknown = 0
        self.unknown_chars = 0
        self.largest: tuple[str, int] = ("", 0)
        self.growth = ""
        self.copies = 0
        self.values: dict[str, list[int]] = {}  # small integer constants: repeats and shapes
        self.chars: dict[str, int] = {}  # constant string tensor: its longest string's length (UTF-8 bytes)

    def graph(self, graph: Any, outer: frozenset[str]) -> None:
        constants = set(outer) | {t.name for t in graph.initializer}
        for tensor in graph.initializer:
            if tensor.data_type == STRING:
                self.chars[tensor.name] = max(map(len, tensor.string_data), default=0)
            self._keep_values(tensor.name, tensor)
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
                self.chars.update(dict.fromkeys(node.output, _attribute_chars(node)))
                for attr in node.attribute:
                    if attr.name == "value" and node.output:
                        self._keep_values(node.output[0], attr.t)
                for attr in node.attribute:
                    if attr.name == "sparse_value":
                        self.add(f"{where}, sparse value", _sparse_bytes(attr.sparse_tensor))
            elif self._foldable(node, inputs, constants):
                constants.update(node.output)
                chars = self._chars(node, inputs)
                for output in node.output:
                    self.chars[output] = chars
                    self.add(f"{where}, output {output!r}", self.size(output, chars=chars), chars)
            elif node.op_type in COUNT_FROM_VALUES and not self.growth:
                self._check_growth(node, where, constants)
            elif node.op_type == "Concat":
                self._count_concat(node, constants)

    def _foldable(self, node: Any, inputs: list[str], constants: set[str]) -> bool:
        if node.op_type in SIZED_FROM_INPUT and inputs:
            return self.size(inputs[0], shape_only=True) is not None
        return all(name in constants for name in inputs)

    def _chars(self, node: Any, inputs: list[str]) -> int:
        """The longest string a constant-folded output of ``node`` can hold (0: none), from its inputs' and
        attributes' strings: ``StringConcat`` adds its inputs', ``Cast`` to string prints a number, the rest copy."""
        if node.op_type == "StringConcat":
            return sum(self.chars.get(name, 0) for name in inputs)
        if node.op_type == "Cast" and any(a.name == "to" and a.i == STRING for a in node.attribute):
            return max(CAST_STRING_MAX, *(self.chars.get(name, 0) for name in inputs))
        return max(_attribute_chars(node), *(self.chars.get(name, 0) for name in inputs))

    def _check_growth(self, node: Any, where: str, constants: set[str]) -> None:
        """Record ``node`` in ``growth`` if a run sets how many strings it makes (a count input not constant) and the
        strings it copies may be longer than ``COPIED_STRING_MAX`` (not constants, or long ones): their characters
        would be allocated outside ONNX Runtime's arena, unbounded by it."""
        counts = COUNT_FROM_VALUES[node.op_type]
        indexed = list(enumerate(node.input))
        if not any(name and name not in constants and (counts is None or i in counts) for i, name in indexed):
            self._count_copies(node, where, constants)
            return
        if not node.output or self.elem(node.output[0]) not in (STRING, None):
            return
        data = [name for i, name in indexed if name and (counts is None or i not in counts)]
        for name in data:
            if self.elem(name) == STRING and (name not in constants or self.chars.get(name, 0) > COPIED_STRING_MAX):
                self.growth = f"{where} copies the strings of {name!r} into a number of elements a request sets"
                return
        if _attribute_chars(node) > COPIED_STRING_MAX:
            self.growth = f"{where} copies a string of its attributes into a number of elements a request sets"

    def _count_copies(self, node: Any, where: str, constants: set[str]) -> None:
        """A node whose count the model fixes over a request's strings (``Tile`` by constant repeats, ``Gather`` of
        constant indices...) multiplies ``copies`` by how many times it may copy each; where that cannot be told,
        the model is refused (``growth``)."""
        if len(node.input) < 2 or node.input[0] in constants or self.elem(node.input[0]) != STRING:
            return
        counter = node.input[1]
        if node.op_type == "Tile" and counter in self.values:
            factor = prod(self.values[counter])
        elif node.op_type == "Expand" and counter in self.values:
            factor = prod(self.values[counter])
        elif node.op_type in ("Gather", "GatherElements", "GatherND", "ArrayFeatureExtractor"):
            factor = self.size(counter, shape_only=True)
        else:
            factor = None
        if factor is None:
            self.growth = f"{where} copies the strings of {node.input[0]!r} a number of times ModelForge cannot tell"
            return
        self.copies = max(1, self.copies) * max(1, factor)

    def _count_concat(self, node: Any, constants: set[str]) -> None:
        """``Concat`` copies each input once, and one node may list a request's strings many times (a single node,
        which ``RunOptions.terminate`` cannot stop midway): ``copies`` is multiplied by its string inputs' count."""
        listed = [name for name in node.input if name and name not in constants]
        if len(listed) > 1 and self.elem(listed[0]) == STRING:  # a Concat's inputs are all of one type
            self.copies = max(1, self.copies) * len(listed)

    def _keep_values(self, name: str, tensor: Any) -> None:
        if tensor.data_type == 7 and prod(tensor.dims) <= SHAPE_VALUE_MAX:  # INT64: shapes and repeats
            from onnx import numpy_helper

            self.values[name] = [int(v) for v in numpy_helper.to_array(tensor).ravel()]

    def elem(self, name: str) -> int | None:
        """The inferred element type of tensor ``name`` (``onnx.TensorProto`` code), None if unknown."""
        if self._types is None:
            self._types = _inferred_types(self.model)
        kind = self._types.get(name)
        return kind.tensor_type.elem_type if kind is not None and kind.HasField("tensor_type") else None

    def size(self, name: str, shape_only: bool = False, chars: int = 0) -> int | None:
        """Bytes of tensor ``name`` from its inferred type and shape (``shape_only``: its element count), else None;
        a string tensor ``STRING_OBJECT`` bytes an element plus ``chars``."""
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
        if kind.tensor_type.elem_type == STRING:
            return count * (STRING_OBJECT + chars)
        itemsize = _itemsize(kind.tensor_type.elem_type)
        return None if itemsize is None else count * itemsize

    def add(self, where: str, size: int | None, chars: int = 0) -> None:
        if size is None:
            self.unknown += 1
            self.unknown_chars = max(self.unknown_chars, chars)
            return
        self.total += size
        if size > self.largest[1]:
            self.largest = (where, size)


def _attribute_chars(node: Any) -> int:
    """The longest string in ``node``'s attributes (a ``Constant``'s value, a ``LabelEncoder``'s labels...)."""
    longest = 0
    for attr in node.attribute:
        longest = max(longest, len(attr.s), *map(len, attr.strings), *map(len, attr.t.string_data),
                      *(len(s) for t in attr.tensors for s in t.string_data))
    return longest


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
    from onnx.helper import make_tensor_type_proto

    for tensor in graph.initializer:  # not graph inputs since IR 4: no value_info of their own (Gather's indices...)
        types[tensor.name] = make_tensor_type_proto(tensor.data_type, list(tensor.dims))
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
