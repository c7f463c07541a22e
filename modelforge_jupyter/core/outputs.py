"""A prediction's outputs as NumPy from the engine to every door, their JSON form, and their one binary form in the
prediction cache.

Outputs are ``{output name: value}``, each value one of:
- ``np.ndarray``: a tensor, exactly as ONNX Runtime returned it (NaN and ±Inf kept);
- ``MapRows``: a ZipMap output (skl2onnx classifiers), kept as the float32 tensor ONNX Runtime's maps would be built
  from (``rows`` ``[N, C]``, one column a class label, in label order) and its ``keys``; ``maps()`` builds the
  ``[{label: probability}]`` list ONNX Runtime gives, ``json()`` the JSON form;
- anything else ONNX Runtime returns (a sequence of tensors): JSON-safe Python data (``json_safe``).

JSON (ModelForge's ``output_data``, V2 JSON): ``json_data`` gives the value ``json_safe`` documents (nested
lists, NaN and ±Inf as ``None``, map keys as strings); ``json_ready`` gives what orjson encodes to the same JSON
without building those lists (``orjson.OPT_SERIALIZE_NUMPY``; float32/float16 widened to float64 first, so that a
float prints as ``ndarray.tolist()`` would print it, e.g. 0.10000000149011612 for float32 0.1).

Cache value (``pack`` / ``unpack``): one entry serves ModelForge JSON, V2 JSON and V2 binary, and a cache hit decodes
no JSON beyond a small header::

    b"MFO1" | uint32 LE header length | header (orjson) | each output's bytes, starting 8-byte aligned

The header lists, per output, ``{"name", "kind", "dtype", "shape", "offset", "nbytes"}``: kind ``tensor`` (``dtype``
a NumPy dtype string such as ``<f4``; raw C-order bytes), ``maps`` (the ``rows`` tensor, plus ``"keys"``: the labels),
``strings`` (a string tensor: each element as a 4-byte little-endian length and its UTF-8 bytes, V2's BYTES layout)
or ``json`` (``"value"``: the JSON-safe value). An entry without the ``MFO1`` tag, or that does not parse (written by
another version of ModelForge sharing the cache), is a cache miss, never an error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

import numpy as np
import orjson

TAG = b"MFO1"  # the cache value's format tag: change it whenever the layout changes
_HEADER = struct.Struct("<4sI")
_LENGTH = struct.Struct("<I")
_ALIGN = 8


@dataclass(frozen=True, slots=True)
class MapRows:
    """A ZipMap output as its tensor: ``rows`` (float32 ``[N, C]``, C-contiguous, column j the probability of
    ``keys[j]``) and ``keys`` (the class labels, ints or strings, as ONNX Runtime's maps key them)."""

    rows: np.ndarray
    keys: tuple

    def maps(self) -> list[dict]:
        """One ``{label: probability}`` dict per row, as ONNX Runtime's ZipMap gives them (Python floats)."""
        return list(map(dict, map(zip, repeat(self.keys), self.rows.tolist())))

    def json(self) -> list[dict]:
        """``maps()`` as JSON takes it: labels as strings, NaN and ±Inf as ``None``."""
        keys = [str(k) for k in self.keys]
        if np.isfinite(self.rows).all():
            values = self.rows.tolist()
        else:
            values = self.rows.astype(object)
            values[~np.isfinite(self.rows)] = None
            values = values.tolist()
        return list(map(dict, map(zip, repeat(keys), values)))

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, rows: slice) -> MapRows:
        """The maps of a slice of the rows (the dynamic batcher splits a batch's outputs this way)."""
        return MapRows(self.rows[rows], self.keys)


# -- JSON ------------------------------------------------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """Return ``value`` (an ONNX Runtime output) as plain Python data that orjson encodes and decodes to the same
    value: tensors as nested lists; NaN, +Inf and -Inf as ``None`` (JSON ``null``, as ``JSON.stringify`` does); maps
    with their keys as strings. A cached answer is therefore identical to a computed one."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            obj = value.astype(object)
            obj[~np.isfinite(value)] = None
            return obj.tolist()
        return value.tolist()
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return _maps_json_safe(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _maps_json_safe(maps: list[dict]) -> list[dict]:
    """A sequence of maps with string keys. ONNX's only op that makes maps is ZipMap (skl2onnx classifiers): one
    ``{class: probability}`` per row, every row with the same classes in the same order. Fast path when every value
    is a finite float: the keys are stringified once and each row rebuilt in C (``dict(zip(keys, values))``), 2.2x
    faster than a comprehension per row (iris, batch 1000: 261 µs against 582 µs, measured with timeit). Else (NaN,
    ±Inf, non-float values) row by row through ``json_safe``."""
    try:
        total = sum(chain.from_iterable(map(dict.values, maps)))
    except TypeError:  # a value that is not a number
        total = None
    # a NaN or ±Inf anywhere makes the sum non-finite; finite floats keep it finite (or it overflows: slow path)
    if isinstance(total, float) and total - total == 0:
        keys = [str(k) for k in maps[0]]
        return list(map(dict, map(zip, repeat(keys), map(dict.values, maps))))
    return [{str(k): json_safe(v) for k, v in m.items()} for m in maps]



def json_value(value: Any) -> Any:
    """One output as JSON-safe Python data (``json_safe``'s form; a ``MapRows`` as ``json()``)."""
    return value.json() if isinstance(value, MapRows) else json_safe(value)


def json_data(outputs: dict[str, Any]) -> dict[str, Any]:
    """``{name: json_value(value)}``: a ``PredictionResult``'s ``output_data``."""
    return {name: json_value(value) for name, value in outputs.items()}


def json_ready(value: Any) -> Any:
    """``value`` in a form ``orjson.dumps(..., option=OPT_SERIALIZE_NUMPY)`` encodes to the JSON of
    ``json_value(value)``: numeric and bool arrays as C-contiguous arrays (float32 and float16 widened to float64;
    orjson writes NaN and ±Inf as ``null``), anything else as ``json_value``."""
    if isinstance(value, np.ndarray) and value.ndim and value.dtype.kind in "biuf":
        if value.dtype.kind == "f" and value.dtype.itemsize < 8:
            return value.astype(np.float64)
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)
    return json_value(value)


# -- V2 BYTES layout -------------------------------------------------------------------------------------------------
def strings_to_bytes(values: np.ndarray) -> bytes:
    """A string (or bytes) tensor, row-major, as V2's BYTES layout: each element a 4-byte little-endian length and
    its bytes (``str`` encoded as UTF-8)."""
    parts = []
    for item in values.flat:
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts += (_LENGTH.pack(len(data)), data)
    return b"".join(parts)


def bytes_to_elements(data: bytes | memoryview, count: int) -> list[bytes]:
    """The ``count`` elements of a V2 BYTES buffer. Raises ``ValueError`` naming where the buffer is short or
    longer than its elements."""
    view, at, items = memoryview(data), 0, []
    for index in range(count):
        if at + 4 > len(view):
            raise ValueError(f"element {index} of {count} has no 4-byte length: the data ends at byte {len(view)}")
        (size,) = _LENGTH.unpack_from(view, at)
        if at + 4 + size > len(view):
            raise ValueError(f"element {index} of {count} says {size} bytes, but only {len(view) - at - 4} follow")
        items.append(bytes(view[at + 4 : at + 4 + size]))
        at += 4 + size
    if at != len(view):
        raise ValueError(f"{len(view) - at} bytes follow the last of the {count} elements")
    return items


# -- the cache value -------------------------------------------------------------------------------------------------
def pack(outputs: dict[str, Any]) -> bytes:
    """The cache value of ``outputs`` (module docstring): NumPy bytes as they are, NaN and ±Inf included."""
    header, buffers, offset = [], [], 0
    for name, value in outputs.items():
        entry, data = _pack_one(name, value)
        if data is not None:
            pad = -offset % _ALIGN
            if pad:
                buffers.append(b"\0" * pad)
                offset += pad
            entry.update(offset=offset, nbytes=len(data))
            buffers.append(data)
            offset += len(data)
        header.append(entry)
    head = orjson.dumps(header)
    start = _HEADER.size + len(head)
    lead = b"\0" * (-start % _ALIGN)
    return b"".join((_HEADER.pack(TAG, len(head) + len(lead)), head, lead, *buffers))


def _pack_one(name: str, value: Any) -> tuple[dict[str, Any], Any]:
    if isinstance(value, MapRows):
        rows = value.rows
        return {"name": name, "kind": "maps", "dtype": rows.dtype.str, "shape": rows.shape,
                "keys": list(value.keys)}, rows.tobytes()
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return {"name": name, "kind": "strings", "shape": value.shape}, strings_to_bytes(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"name": name, "kind": "tensor", "dtype": value.dtype.str, "shape": value.shape}, value.tobytes()
    return {"name": name, "kind": "json", "value": json_safe(value)}, None


def unpack(data: bytes | None, names: list[str] | None = None) -> dict[str, Any] | None:
    """The outputs a cache value holds (arrays copied out of ``data``: writable, as a computed answer's), or None
    when its outputs are not exactly ``names`` (the model version's output names, when given), or when ``data`` is None or not a value this version wrote (another tag, or not parseable): a cache miss."""
    if data is None or len(data) < _HEADER.size or data[:4] != TAG:
        return None
    try:
        _tag, size = _HEADER.unpack_from(data)
        start = _HEADER.size + size
        header = orjson.loads(data[_HEADER.size : start].rstrip(b"\0"))
        if names is not None and [entry["name"] for entry in header] != names:
            return None  # not this version's outputs: a value written by something else is a miss
        body = memoryview(data)[start:]
        return {entry["name"]: _unpack_one(entry, body) for entry in header}
    except (ValueError, KeyError, TypeError):  # orjson.JSONDecodeError is a ValueError
        return None


def _unpack_one(entry: dict[str, Any], body: memoryview) -> Any:
    kind = entry["kind"]
    if kind == "json":
        return entry["value"]
    data = body[entry["offset"] : entry["offset"] + entry["nbytes"]]
    shape = tuple(entry["shape"])
    if kind == "strings":
        items = bytes_to_elements(data, int(np.prod(shape, dtype=np.int64)))
        strings = np.empty(len(items), dtype=object)
        strings[:] = [item.decode() for item in items]
        return strings.reshape(shape)
    array = np.frombuffer(data, dtype=np.dtype(entry["dtype"])).reshape(shape).copy()
    if kind == "maps":
        return MapRows(array, tuple(entry["keys"]))
    if kind != "tensor":
        raise ValueError(f"unknown output kind {kind!r}")
    return array
