"""The client's half of the Open Inference Protocol (KServe V2) wire format, with Triton's binary tensor extension:
encode an infer request whose inputs are NumPy arrays sent as binary tensors, decode the answer's outputs back to
arrays. The server's half (parsing requests, encoding answers) and the datatypes are ``v2_codec``; the HTTP calls
are ``client.ModelForgeClient.infer``. No dependency on ``tritonclient``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .errors import InvalidInputError
from .outputs import bytes_to_elements, strings_to_bytes
from .v2_codec import NUMPY, V2_OF_DTYPE


@dataclass(frozen=True, slots=True)
class V2Answer:
    """A decoded infer answer: ``outputs`` ``{name: np.ndarray}`` in the answer's order (BYTES as an object array
    of ``str``; a ZipMap output as FP32 ``[N, C]``, its labels in ``labels[name]``), whether the server answered
    from its prediction cache, the model's name and version."""

    outputs: dict[str, np.ndarray]
    cached: bool
    model_name: str
    model_version: int
    labels: dict[str, list] = field(default_factory=dict)


def datatype_of(name: str, array: np.ndarray) -> str:
    """The V2 datatype of ``array`` (input ``name``): ``FP32`` for float32 ... ``BYTES`` for str/bytes/object
    arrays. Raises ``InvalidInputError`` (400) for a dtype V2 has no datatype for (complex, datetime...)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    datatype = V2_OF_DTYPE.get(array.dtype.name)
    if datatype is None:
        raise InvalidInputError(f"input {name!r}: dtype {array.dtype} has no V2 datatype; V2 takes "
                                f"{', '.join(sorted({*V2_OF_DTYPE} - {'string'}))} and strings")
    return datatype


def encode_infer(inputs: dict[str, Any], *, outputs: list[str] | None = None, use_cache: bool = True,
                 binary_output: bool = True) -> tuple[bytes, int]:
    """(body, JSON header length) of ``POST v2/models/{m}/infer`` sending each of ``inputs`` (``{name: array-like}``,
    any shape, rank 0 included) as a binary tensor, little-endian and row-major (BYTES: each element a 4-byte
    length and its UTF-8 bytes). ``outputs``: the names to return (None: all); ``use_cache`` False skips the
    server's prediction cache; ``binary_output`` asks for binary outputs. The length goes in the
    ``Inference-Header-Content-Length`` header. Raises ``InvalidInputError`` for an input of no V2 datatype."""
    entries, buffers = [], []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(name, array)
        if datatype == "BYTES":
            data = strings_to_bytes(array)
        else:
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        entries.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                        "parameters": {"binary_data_size": len(data)}})
        buffers.append(data)
    parameters: dict[str, Any] = {"binary_data_output": binary_output}
    if not use_cache:
        parameters["use_cache"] = False
    request: dict[str, Any] = {"inputs": entries, "parameters": parameters}
    if outputs is not None:
        request["outputs"] = [{"name": name} for name in outputs]
    head = orjson.dumps(request)
    return b"".join((head, *buffers)), len(head)


def decode_infer(body: bytes, header_length: int | None) -> V2Answer:
    """The ``V2Answer`` of an infer answer: ``body`` plain JSON (``header_length`` None) or a JSON header of
    ``header_length`` bytes followed by the binary outputs in order. A binary output is a read-only view of
    ``body`` (no copy); JSON ``null`` (NaN, ±Inf by the JSON policy) reads as NaN. Raises ``ValueError`` for an
    answer that does not parse (a truncated body)."""
    view = memoryview(body)
    head = orjson.loads(view if header_length is None else view[:header_length])
    at = 0 if header_length is None else header_length
    outputs, labels = {}, {}
    for entry in head["outputs"]:
        name, datatype, shape = entry["name"], entry["datatype"], tuple(entry["shape"])
        parameters = entry.get("parameters") or {}
        if "zipmap_labels" in parameters:
            labels[name] = orjson.loads(parameters["zipmap_labels"])
        size = parameters.get("binary_data_size")
        if size is None:
            data = entry["data"]
            if datatype == "BYTES":
                array = np.empty(len(data), dtype=object)
                array[:] = data
                outputs[name] = array.reshape(shape)
            else:
                outputs[name] = np.array(data, dtype=NUMPY[datatype].newbyteorder("=")).reshape(shape)
            continue
        if at + size > len(view):
            raise ValueError(f"output {name!r} says {size} bytes at byte {at}, but the answer has {len(view)}")
        chunk, at = view[at:at + size], at + size
        if datatype == "BYTES":
            array = np.empty(math.prod(shape), dtype=object)
            array[:] = [item.decode(errors="replace") for item in bytes_to_elements(chunk, math.prod(shape))]
            outputs[name] = array.reshape(shape)
        else:
            outputs[name] = np.frombuffer(chunk, dtype=NUMPY[datatype]).reshape(shape)
    return V2Answer(outputs, bool((head.get("parameters") or {}).get("cached", False)), head["model_name"],
                    int(head["model_version"]), labels)
