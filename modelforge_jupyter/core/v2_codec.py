"""The Open Inference Protocol's (KServe V2) wire format with Triton's binary tensor extension: datatypes, the infer
request, the infer response. No HTTP framework: a door hands the body and its ``Inference-Header-Content-Length``
here and sends back what ``encode_response`` returns. The rules that need the model (exact datatypes, shapes, input
and output names) and the other endpoints' answers are ``v2``.

Request (``parse_infer``): a JSON object ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``, or, with the
binary extension, that JSON (its length in the ``Inference-Header-Content-Length`` header) followed by the inputs'
bytes, in input order. Each input is ``{"name", "datatype", "shape", "parameters"?, "data"?}``: ``data`` row-major,
flat or nested, or ``parameters.binary_data_size`` bytes in the tail (little-endian, row-major; BOOL one byte an
element; BYTES each element a 4-byte little-endian length and its bytes). ``parameters`` values are strings, numbers
or bools; ``outputs`` absent or ``[]`` asks for every output (as Triton), else names each output once;
``binary_data_output`` (bool) asks for every output in binary, an output's own ``binary_data`` wins; ``use_cache``
(bool, ModelForge's own, default true) skips the prediction cache when false; others are accepted and ignored. Every
refusal is an ``InvalidInputError`` (400) naming the field or input, what was expected and what was given.

Response (``encode_response``): ``{"model_name", "model_version", "id"?, "parameters": {"cached": bool}, "outputs":
[{"name", "datatype", "shape", "data" | "parameters": {"binary_data_size"}}]}``, JSON ``data`` flat row-major with
NaN and ±Inf as ``null``; binary outputs' bytes follow the JSON in output order. A ZipMap output (``MapRows``) is an
FP32 tensor ``[N, C]``, column j the probability of the j-th label, with ``parameters.zipmap_labels`` the labels as a
JSON list in a string (V2 parameters cannot hold lists); another non-tensor output is a BYTES ``[1]`` tensor holding
its JSON text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .errors import InvalidInputError
from .outputs import MapRows, bytes_to_elements, json_ready, json_safe, strings_to_bytes
from .protocol import json_object, json_type

# V2 datatype -> ModelForge dtype name (records' TensorSpec.dtype); the NumPy dtype of each is ``NUMPY``'s.
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "string",
}
V2_OF_DTYPE = {dtype: datatype for datatype, dtype in DATATYPES.items()}
NUMPY = {datatype: np.dtype(object if dtype == "string" else dtype).newbyteorder("<")
         for datatype, dtype in DATATYPES.items()}
REQUEST_FIELDS = ("id", "parameters", "inputs", "outputs")
UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "classification")


@dataclass(frozen=True, slots=True)
class V2Input:
    """One request input: its name, V2 datatype, shape and values (a C-contiguous array of that shape: the
    datatype's NumPy dtype, an object array of ``str`` for BYTES)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass(slots=True)
class V2Request:
    """A parsed infer request. ``outputs``: None (every output) or ``{name: binary_data or None}`` in request order;
    ``binary_output``: the request's ``binary_data_output``; ``use_cache``: the ``use_cache`` parameter."""

    inputs: list[V2Input]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, bool | None] | None = None
    binary_output: bool = False
    use_cache: bool = True


def shape_text(shape: Any) -> str:
    """A shape as Triton's messages print it: ``[-1,4]`` (``None``, a dynamic dimension, as -1); ``of any shape`` for
    None (an input whose model declares no shape)."""
    if shape is None:
        return "of any shape"
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


# -- the request ------------------------------------------------------------------------------------------------------
def parse_infer(body: bytes, header_length: str | None = None) -> V2Request:
    """The ``V2Request`` of an infer body: JSON alone (``header_length`` None), or a JSON header of ``header_length``
    bytes (the ``Inference-Header-Content-Length`` header's text) followed by the binary inputs. Raises
    ``InvalidInputError`` (400) as the module docstring says: a header length that is not a whole number or is past
    the body's end, malformed JSON, an unknown datatype, ``data`` whose element count is not the shape's, a
    ``binary_data_size`` that disagrees with the shape, binary bytes short of what the inputs declare (a truncated
    body) or left over after them."""
    view = memoryview(body)
    if header_length is None:
        head, tail = view, view[len(view):]
    else:
        text = header_length.strip()
        if not text.isdigit():
            raise InvalidInputError(f"Inference-Header-Content-Length must be a whole number of bytes, got {text!r}")
        size = int(text)
        if size > len(view):
            raise InvalidInputError(f"Inference-Header-Content-Length is {size} but the body has only {len(view)} "
                                    f"bytes: the request is truncated")
        head, tail = view[:size], view[size:]
    try:
        request = json_object(bytes(head))  # the core's rule: 400 for an empty, malformed or non-object body
    except InvalidInputError as err:
        if header_length is None:
            raise
        raise InvalidInputError(f"the body's first {len(head)} bytes (Inference-Header-Content-Length) are not the "
                                f"JSON header: {err}") from None
    unknown = [key for key in request if key not in REQUEST_FIELDS]
    if unknown:
        raise InvalidInputError(f"unknown field(s) {', '.join(map(repr, unknown))} in the infer request; it takes "
                                f"{', '.join(REQUEST_FIELDS)}")
    parameters = _parameters(request.get("parameters"), "the request's parameters")
    binary_output = _flag(parameters, "binary_data_output", False, "the request's parameters")
    use_cache = _flag(parameters, "use_cache", True, "the request's parameters")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError(f"'id' must be a string, got {orjson.dumps(request_id).decode()}")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        given = ("no 'inputs'" if "inputs" not in request else "an empty array" if raw_inputs == []
                 else f"a JSON {json_type(raw_inputs)}")
        raise InvalidInputError(f"'inputs' must be a non-empty array of {{name, datatype, shape, data}} objects, got "
                                f"{given}")
    inputs, at = [], 0
    for index, raw in enumerate(raw_inputs):
        item, at = _input(raw, index, tail, at)
        inputs.append(item)
    if at != len(tail):
        raise InvalidInputError(f"{len(tail) - at} bytes of binary data follow the last input's: the inputs' "
                                f"binary_data_size add up to {at} bytes")
    return V2Request(inputs, request_id, parameters, _outputs(request.get("outputs")), binary_output, use_cache)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a JSON object, got {orjson.dumps(value).decode()[:100]}")
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)):
            raise InvalidInputError(f"parameter {key!r} in {where} must be a string, number or boolean, got "
                                    f"{orjson.dumps(item).decode()[:100]}")
        if key in UNSUPPORTED_PARAMETERS:
            raise InvalidInputError(f"parameter {key!r} in {where}: this server does not support "
                                    f"{'classification' if key == 'classification' else 'shared memory'}")
    return value


def _flag(parameters: dict[str, Any], name: str, default: bool, where: str) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInputError(f"parameter {name!r} in {where} must be true or false, got {value!r}")
    return value


def _input(raw: Any, index: int, tail: memoryview, at: int) -> tuple[V2Input, int]:
    """One input of the request, and where the next binary input starts in ``tail``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidInputError(f"input {index} must be an object with a string 'name', got {_holding(raw)}")
    name = raw["name"]
    datatype = raw.get("datatype")
    if datatype not in NUMPY:
        raise InvalidInputError(f"input {name!r}: unknown datatype {datatype!r}; V2 datatypes are "
                                f"{', '.join(DATATYPES)}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InvalidInputError(f"input {name!r}: 'shape' must be an array of whole numbers >= 0, got "
                                f"{orjson.dumps(shape).decode()[:100]}")
    shape = tuple(shape)
    count = math.prod(shape)
    where = f"the parameters of input {name!r}"
    size = _parameters(raw.get("parameters"), where).get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise InvalidInputError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        return V2Input(name, datatype, shape, _from_json(name, datatype, shape, count, raw["data"])), at
    if "data" in raw:
        raise InvalidInputError(f"input {name!r} has both 'data' and parameters.binary_data_size; give one")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInputError(f"input {name!r}: binary_data_size must be a whole number of bytes, got {size!r}")
    if at + size > len(tail):
        raise InvalidInputError(f"input {name!r} declares binary_data_size {size} at byte {at} of the binary data, "
                                f"but only {len(tail) - at} bytes are left: the request is truncated")
    return V2Input(name, datatype, shape, _from_binary(name, datatype, shape, count, tail[at:at + size])), at + size


def _from_binary(name: str, datatype: str, shape: tuple[int, ...], count: int, data: memoryview) -> np.ndarray:
    dtype = NUMPY[datatype]
    if datatype == "BYTES":
        try:
            items = [item.decode() for item in bytes_to_elements(data, count)]
        except ValueError as err:  # UnicodeDecodeError is a ValueError too
            raise InvalidInputError(f"input {name!r}: BYTES data for shape {shape_text(shape)} ({count} elements) "
                                    f"does not parse: {str(err)[:200]} (each element a 4-byte little-endian length "
                                    f"and UTF-8 bytes)") from None
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    want = count * dtype.itemsize
    if len(data) != want:
        raise InvalidInputError(f"input {name!r}: binary_data_size is {len(data)} bytes, but shape "
                                f"{shape_text(shape)} of {datatype} needs {want} ({count} x {dtype.itemsize})")
    if datatype == "BOOL":  # one byte an element, any non-zero byte true: stored as 0/1 (one cache key per value)
        return np.frombuffer(data, dtype=np.uint8).astype(bool).reshape(shape)
    array = np.frombuffer(data, dtype=dtype).reshape(shape)  # read-only view of the body; ONNX Runtime takes it
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _from_json(name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any) -> np.ndarray:
    want = f"input {name!r}: {datatype} data"
    try:
        array = np.asarray(data, dtype=object if datatype == "BYTES" else None)
    except (ValueError, TypeError):
        raise InvalidInputError(f"{want} is ragged or mixed nested lists; give a flat row-major list") from None
    if array.size != count:
        raise InvalidInputError(f"input {name!r}: 'data' has {array.size} elements, but shape {shape_text(shape)} "
                                f"holds {count}")
    kind = array.dtype.kind
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in array.flat):
            raise InvalidInputError(f"{want} must be strings")
        return np.ascontiguousarray(array).reshape(shape)
    dtype = NUMPY[datatype].newbyteorder("=")
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidInputError(f"{want} must be true or false")
    elif dtype.kind in "iu":
        if kind not in "iu":
            raise InvalidInputError(f"{want} must be whole numbers")
        info = np.iinfo(dtype)
        if count and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise InvalidInputError(f"{want} has values from {array.min()} to {array.max()}, outside {datatype}'s "
                                    f"range {info.min}..{info.max}")
    elif kind not in "iuf":
        raise InvalidInputError(f"{want} must be numbers")
    out = array.astype(dtype).reshape(shape)
    if dtype.kind == "f" and count and not np.isfinite(out).all():
        raise InvalidInputError(f"{want} has values outside {datatype}'s range (±{np.finfo(dtype).max})")
    return out


def _holding(item: Any) -> str:
    """What an item of 'inputs' or 'outputs' that is not an object with a string 'name' holds, in JSON's terms."""
    if not isinstance(item, dict):
        return f"a JSON {json_type(item)}"
    return "an object with no 'name'" if "name" not in item else f"a JSON {json_type(item['name'])} 'name'"


def _outputs(value: Any) -> dict[str, bool | None] | None:
    if value is None or value == []:  # as Triton: a request that names no output gets them all
        return None
    if not isinstance(value, list):
        raise InvalidInputError(f"'outputs' must be an array of {{name, parameters?}} objects, got a JSON "
                                f"{json_type(value)}")
    chosen: dict[str, bool | None] = {}
    for index, raw in enumerate(value):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidInputError(f"output {index} of 'outputs' must be an object with a string 'name', got "
                                    f"{_holding(raw)}")
        if raw["name"] in chosen:  # which of the two asks (JSON or binary) holds would be a guess
            raise InvalidInputError(f"output {raw['name']!r} is asked for twice in 'outputs'; name each output once")
        parameters = _parameters(raw.get("parameters"), f"the parameters of output {raw['name']!r}")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInputError(f"output {raw['name']!r}: binary_data must be true or false, got {binary!r}")
        chosen[raw["name"]] = binary
    return chosen


# -- the response -----------------------------------------------------------------------------------------------------
def encode_response(model_name: str, model_version: int, outputs: dict[str, Any], request: V2Request,
                    cached: bool = False) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) of the answer to ``request``: the outputs it asks for (all of ``outputs``
    without a filter, else the filter's, in its order), each in binary or in JSON as asked (module docstring). The
    length is None when no output is binary: the body is then plain JSON."""
    chosen = request.outputs if request.outputs is not None else dict.fromkeys(outputs)
    entries, buffers = [], []
    for name, binary in chosen.items():
        entry, data = encode_output(name, outputs[name], request.binary_output if binary is None else binary)
        entries.append(entry)
        if data is not None:
            buffers.append(data)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request.id is not None:
        answer["id"] = request.id
    answer["parameters"] = {"cached": cached}
    answer["outputs"] = entries
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return head, None
    return b"".join((head, *buffers)), len(head)


def encode_output(name: str, value: Any, binary: bool) -> tuple[dict[str, Any], Any]:
    """(the output's JSON entry, its bytes or None): ``value`` an ``np.ndarray``, a ``MapRows`` or another output
    (module docstring), in binary (``parameters.binary_data_size`` and the bytes) or JSON (flat ``data``)."""
    parameters: dict[str, Any] = {}
    if isinstance(value, MapRows):
        parameters["zipmap_labels"] = orjson.dumps(list(value.keys)).decode()
        value = value.rows
    if not (isinstance(value, np.ndarray) and (value.dtype.kind in "biuf" or value.dtype.kind == "O")):
        value = np.array([orjson.dumps(json_safe(value)).decode()], dtype=object)
    elif value.dtype.kind == "O" and not all(isinstance(item, (str, bytes)) for item in value.flat):
        value = np.array([orjson.dumps(json_safe(value)).decode()], dtype=object)
    datatype = "BYTES" if value.dtype.kind == "O" else V2_OF_DTYPE[value.dtype.name]
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
    flat = np.ascontiguousarray(value).reshape(-1)
    data = None
    if binary:
        if datatype == "BYTES":
            data = strings_to_bytes(flat)
        else:
            flat = flat if flat.dtype.byteorder != ">" else flat.astype(flat.dtype.newbyteorder("<"))
            data = flat.view(np.uint8).data
        parameters["binary_data_size"] = len(data) if datatype == "BYTES" else flat.nbytes
    elif datatype == "BYTES":
        entry["data"] = [item if isinstance(item, str) else item.decode(errors="replace") for item in flat.tolist()]
    else:
        entry["data"] = json_ready(flat)
    if parameters:
        entry["parameters"] = parameters
    return entry, data
