"""Convert request data to the numpy arrays a session takes, hash them for the cache, and make outputs JSON-safe.

Pure functions over ``TensorSpec`` lists and numpy; no ONNX Runtime, database or cache here.

Input rules (each violation raises ``InvalidInputError`` naming the input, the expected dtype/shape, what was given):
- names: a dict must name every declared input and nothing else; a single-input model also takes a bare value;
- dtype: nested lists and arrays convert to the declared dtype when no information is lost: ints to floats, integral
  floats to ints within range, 0/1 to bool; strings only to ``string`` inputs;
- shape: rank must match; fixed dimensions must match; symbolic/dynamic dimensions (``None``) take any size > 0; an
  input whose model declares no shape (``TensorSpec.shape`` None) takes any rank; ragged nested lists and empty
  batches are refused.

The output rule (JSON-safe values) is ``outputs.json_safe``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson

from .errors import InvalidInputError, first_line
from .outputs import json_safe  # noqa: F401  (the output rule lives in outputs; imported from here too)
from .records import TensorSpec

# ONNX Runtime tensor type string -> the dtype name ModelForge reports and converts to.
ORT_TO_DTYPE = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint64)": "uint64",
    "tensor(uint32)": "uint32",
    "tensor(uint16)": "uint16",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}
NUMPY_DTYPES = {name: np.dtype(object if name == "string" else name) for name in ORT_TO_DTYPE.values()}


def spec_from_ort(node: Any, optional: bool = False, unshaped: frozenset[str] = frozenset()) -> TensorSpec:
    """Build a TensorSpec from an ``onnxruntime.NodeArg`` (``session.get_inputs()[i]``, or ``optional`` for one of
    ``session.get_overridable_initializers()``); a name in ``unshaped`` has shape None (any shape)."""
    if node.name in unshaped:
        return TensorSpec(name=node.name, dtype=ORT_TO_DTYPE.get(node.type, node.type), shape=None, optional=optional)
    shape = node.shape if isinstance(node.shape, list) else []
    dims = [d if isinstance(d, int) and d >= 0 else None for d in shape]
    return TensorSpec(name=node.name, dtype=ORT_TO_DTYPE.get(node.type, node.type), shape=dims, optional=optional)


def input_specs(session: Any, model_of: Callable[[], Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(required, optional) input specs of an ``onnxruntime.InferenceSession``: its ``get_inputs()``, and its
    ``get_overridable_initializers()`` (initializers that are graph inputs too).

    ONNX Runtime reports ``[]`` both for a scalar and for an input whose model declares no shape at all, not even a
    rank; ``model_of()`` (the ``onnx.ModelProto``; None: bytes ``onnx`` cannot parse), called only when some input
    reports ``[]``, tells them apart: an input with no ``TensorShapeProto`` gets shape None (any shape).
    """
    nodes, overridable = session.get_inputs(), session.get_overridable_initializers()
    unshaped: frozenset[str] = frozenset()
    if any(not node.shape for node in (*nodes, *overridable)):
        model = model_of()
        unshaped = frozenset() if model is None else frozenset(
            value.name for value in model.graph.input
            if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"))
    return ([spec_from_ort(node, unshaped=unshaped) for node in nodes],
            [spec_from_ort(node, optional=True, unshaped=unshaped) for node in overridable])


def shape_str(shape: list[int | None] | tuple[int, ...] | None) -> str:
    """A shape as messages print it: ``[?, 4]`` (``?`` a dynamic dimension); ``of any shape`` for None."""
    if shape is None:
        return "of any shape"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def prepare_feed(specs: list[TensorSpec], input_data: Any) -> dict[str, np.ndarray]:
    """Validate ``input_data`` against the declared inputs and return ``{input name: C-contiguous ndarray}``.

    ``input_data``: ``{name: nested list | ndarray | scalar}``, or for a model with one required input the bare
    value. Optional inputs (``TensorSpec.optional``: a default in the model) may be left out, which keeps the
    model's default, or given by name to override it.
    Raises ``InvalidInputError`` (HTTP 400) naming the input, the expected dtype and shape, and what was given.
    """
    if isinstance(input_data, Mapping):
        names = {s.name for s in specs}
        unknown = [k for k in input_data if k not in names]
        missing = [s.name for s in specs if not s.optional and s.name not in input_data]
        if unknown or missing:
            raise InvalidInputError(
                f"input names do not match the model: expected {_describe(specs)}"
                + (f"; unknown: {', '.join(map(repr, unknown))}" if unknown else "")
                + (f"; missing: {', '.join(map(repr, missing))}" if missing else "")
            )
        return {s.name: convert(s, input_data[s.name]) for s in specs if s.name in input_data}
    required = [s for s in specs if not s.optional]
    if len(required) != 1:
        raise InvalidInputError(
            f"the model has {len(specs)} inputs ({_describe(specs)}); pass a dict {{input name: value}}"
        )
    return {required[0].name: convert(required[0], input_data)}


def _describe(specs: list[TensorSpec]) -> str:
    return ", ".join(
        f"{s.name!r} {s.dtype} {shape_str(s.shape)}" + (" (optional)" if s.optional else "") for s in specs
    ) or "no inputs"


def convert(spec: TensorSpec, value: Any) -> np.ndarray:
    """Convert one input value to ``spec``'s dtype and check its shape; see the module docstring for the rules."""
    target = NUMPY_DTYPES.get(spec.dtype)
    if target is None:  # register refuses such models; kept as a guard for records written by other versions
        raise InvalidInputError(f"input {spec.name!r}: dtype {spec.dtype} cannot be fed by ModelForge")
    if isinstance(value, np.ndarray) and value.dtype == target:
        arr = value
    else:
        arr = _cast(spec, _as_array(spec, value), target)
    _check_shape(spec, arr)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _as_array(spec: TensorSpec, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:
        raise InvalidInputError(
            f"input {spec.name!r}: expected {spec.dtype} {shape_str(spec.shape)}, got ragged or mixed nested lists "
            f"({first_line(err)})"
        ) from None


def _cast(spec: TensorSpec, arr: np.ndarray, target: np.dtype) -> np.ndarray:
    kind = arr.dtype.kind
    want = f"input {spec.name!r}: expected {spec.dtype} {shape_str(spec.shape)}"
    if target.kind == "O":  # string tensor
        if kind in "US" or (kind == "O" and all(isinstance(v, str) for v in arr.flat)):
            return arr.astype(object)
        raise InvalidInputError(f"{want}, got {_given(arr)}: string inputs take text values")
    if target.kind == "b":
        if kind == "b" or (kind in "iuf" and np.isin(arr, (0, 1)).all()):
            return arr.astype(bool)
        raise InvalidInputError(f"{want}, got {_given(arr)}: bool inputs take true/false or 0/1")
    if kind == "O" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arr.flat):
        if target.kind != "f":  # numbers numpy keeps as objects: Python ints beyond 64 bits
            raise InvalidInputError(f"{want}, got integers outside the 64-bit range")
        arr, kind = arr.astype(np.float64), "f"
    if kind not in "iuf":  # strings, bools, None, mixed: Triton refuses bools for numeric inputs too
        raise InvalidInputError(f"{want}, got {_given(arr)}: numbers are needed")
    if target.kind in "iu":
        _check_int_range(spec, arr, target, want)
    elif arr.size and (kind == "f" and arr.dtype.itemsize > target.itemsize or target.itemsize == 2):
        _check_float_range(spec, arr, target, want)  # narrowing floats, or ints into float16 (max 65504)
    return arr.astype(target)


def _check_int_range(spec: TensorSpec, arr: np.ndarray, target: np.dtype, want: str) -> None:
    """Refuse non-integral floats and values outside ``target``'s range, compared exactly (no float64 rounding)."""
    if not arr.size:
        return
    info = np.iinfo(target)
    lo, hi = arr.min(), arr.max()
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise InvalidInputError(f"{want}, got {_given(arr)} with non-integer values")
        # 2**(bits-1) and 2**bits are exact in float64, unlike info.max, which rounds up to them; a float at int64's
        # minimum is refused too: JSON's -9223372036854775809 parses to that float (one past the range, rounded in)
        low_out = lo <= info.min if info.bits == 64 else lo < info.min
        outside = low_out or hi >= (2.0 ** (info.bits - 1) if info.min < 0 else 2.0**info.bits)
    else:
        outside = int(lo) < info.min or int(hi) > info.max
    if outside:
        raise InvalidInputError(f"{want}, got values from {lo} to {hi}, outside {spec.dtype}'s range")


def _check_float_range(spec: TensorSpec, arr: np.ndarray, target: np.dtype, want: str) -> None:
    """Refuse finite values that would overflow to ±Inf in a narrower float (float64 -> float32/float16)."""
    finite = arr if arr.dtype.kind in "iu" or np.isfinite(arr).all() else arr[np.isfinite(arr)]
    if finite.size and max(-finite.min(), finite.max()) > np.finfo(target).max:
        raise InvalidInputError(
            f"{want}, got values from {finite.min()} to {finite.max()}, outside {spec.dtype}'s range "
            f"(±{np.finfo(target).max})"
        )


def _given(arr: np.ndarray) -> str:
    kind = {"U": "strings", "S": "bytes", "O": "mixed or non-numeric values", "b": "bools", "f": "floats"}
    return f"{kind.get(arr.dtype.kind, arr.dtype.name)} of shape {shape_str(arr.shape)}"


def _check_shape(spec: TensorSpec, arr: np.ndarray) -> None:
    want = f"input {spec.name!r}: expected {spec.dtype} {shape_str(spec.shape)}"
    if spec.shape is not None:  # None: the model declares no shape, any rank is taken
        _check_rank_and_dims(spec.shape, arr, want)
    if arr.size == 0:
        raise InvalidInputError(f"{want}, got an empty batch of shape {shape_str(arr.shape)}")


def _check_rank_and_dims(shape: list[int | None], arr: np.ndarray, want: str) -> None:
    if arr.ndim != len(shape):
        hint = ""
        if arr.ndim + 1 == len(shape):
            hint = "; a single sample needs a batch around it, e.g. [[...]]"
        raise InvalidInputError(f"{want} (rank {len(shape)}), got shape {shape_str(arr.shape)}{hint}")
    for axis, (want_dim, got_dim) in enumerate(zip(shape, arr.shape)):
        if want_dim is not None and want_dim != got_dim:
            raise InvalidInputError(f"{want}, got shape {shape_str(arr.shape)} (axis {axis} must be {want_dim})")


def input_hash(model_sha256: str, feed: dict[str, np.ndarray]) -> str:
    """sha256 hex over the model version's sha256 and each input's name, dtype, shape and bytes, by name order.

    The same values given as ``[[1, 2]]`` or ``[[1.0, 2.0]]``, or as dicts in another key order, hash the same (they
    are hashed after conversion); another model version, dtype or shape never does.
    """
    h = hashlib.sha256(model_sha256.encode())
    for name in sorted(feed):
        arr = feed[name]
        h.update(f"{len(name)}:{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(orjson.dumps(arr.tolist()) if arr.dtype.kind == "O" else arr.data)
    return h.hexdigest()
