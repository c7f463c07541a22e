"""What one request may take: the size of its answer and the strings a model copies outside ONNX Runtime's arena,
and the 413s past a limit (README, "Memory: what is bounded and how").

Pure functions over numpy values; the engine calls them around each run (the process's memory, which the watchdog
reads while runs are in flight, is ``memory``'s). No ONNX Runtime here.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .errors import ResourceLimitError
from .zipmap import ZipMapOutput

MiB = 1 << 20
ARENA_FULL = re.compile(r"requested bytes of (\d+)|Failed to allocate memory for requested buffer of size (\d+)")
REQUEST_MEMORY_SETTING = "max_request_memory_bytes, env MODELFORGE_MAX_REQUEST_MEMORY_BYTES"


def output_bytes(values: list[Any], zipmaps: tuple[ZipMapOutput | None, ...] = ()) -> int:
    """Bytes an answer of ``values`` (a run's outputs) counts against ``max_output_bytes``; see ``value_bytes``.
    ``zipmaps[i]``, when given, is the ZipMap whose maps output ``i`` (a float tensor) stands for."""
    if not zipmaps:
        return sum(map(value_bytes, values))
    return sum(z.nbytes(v) if z is not None else value_bytes(v) for v, z in zip(values, zipmaps))


def value_bytes(value: Any) -> int:
    """Bytes of one output: an array's ``nbytes``, a string array's UTF-8 text plus 8 bytes an element (its pointer);
    a sequence sized from its first item; a map 16 bytes an entry (key and value) plus a string key's text."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return value.nbytes + sum(len(s) if s.isascii() else len(s.encode()) for s in value.flat)
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return len(value) * value_bytes(value[0]) if value else 0
    if isinstance(value, dict):
        return sum(16 + (len(key.encode()) if isinstance(key, str) else 0) for key in value)
    return 8


def check_output(names: list[str], values: list[Any], zipmaps: tuple[ZipMapOutput | None, ...], limit: int,
                 model_name: str) -> None:
    """Refuse (``ResourceLimitError``, 413) outputs holding more than ``limit`` bytes, before any JSON is built."""
    total = output_bytes(values, zipmaps)
    if total > limit:
        shapes = ", ".join(_shape(n, v, z) for n, v, z in zip(names, values, zipmaps or (None,) * len(names))
                           if isinstance(v, np.ndarray))
        raise ResourceLimitError(
            f"the answer of model {model_name!r} would hold {total} bytes of outputs ({shapes or 'sequences'}); the "
            f"limit is {limit} bytes (max_output_bytes, env MODELFORGE_MAX_OUTPUT_BYTES): send fewer rows at once"
        )


def _shape(name: str, value: np.ndarray, zipmap: ZipMapOutput | None) -> str:
    if zipmap is None:
        return f"{name!r} {value.dtype} {list(value.shape)}"
    return f"{name!r} {value.shape[0] if value.ndim == 2 else 1} maps of {len(zipmap.keys)} classes"


def check_string_copies(copies: int, feed: dict[str, np.ndarray], arena_bytes: int, model_name: str) -> None:
    """Refuse (413) before the run a request whose strings, copied ``copies`` times (``footprint.string_copies``),
    would hold more than ``arena_bytes`` outside ONNX Runtime's arena."""
    chars = sum(value_bytes(value) for value in feed.values() if value.dtype == object)
    if chars * copies > arena_bytes:
        raise ResourceLimitError(
            f"model {model_name!r} copies the strings of a request up to {copies} times: this request's {chars} bytes "
            f"of strings could take {chars * copies} bytes outside ONNX Runtime's arena, more than its cap of "
            f"{arena_bytes} bytes (max_arena_bytes, env MODELFORGE_MAX_ARENA_BYTES); send shorter strings or fewer "
            "rows at once"
        )


def arena_full(err: Exception) -> str | None:
    """The bytes ONNX Runtime asked its capped arena for, when ``err`` says the arena could not give them."""
    found = ARENA_FULL.search(str(err))
    return None if found is None else found.group(1) or found.group(2)


def arena_full_error(asked: str, arena_bytes: int, model_name: str) -> ResourceLimitError:
    """The 413 of a run that did not fit in the capped arena: the bytes ``asked`` at once, the cap and the setting."""
    return ResourceLimitError(
        f"model {model_name!r} needs more memory on this input than ONNX Runtime may use: {asked} bytes at once did not "
        f"fit in its arena of {arena_bytes} bytes, shared by the runs in flight and the loaded models "
        "(max_arena_bytes, env MODELFORGE_MAX_ARENA_BYTES); send fewer rows at once"
    )


def request_memory_error(model_name: str, grown: int, budget: int) -> ResourceLimitError:
    """The 413 of a run the watchdog stopped because the server's memory rose ``grown`` bytes over ``budget``."""
    return ResourceLimitError(
        f"model {model_name!r} was stopped: while it ran, the server's memory rose {grown} bytes above its steady "
        f"state, more than a request may take ({budget} bytes: {REQUEST_MEMORY_SETTING}); send fewer rows or "
        "smaller values at once"
    )
