"""Immutable records passed between the registry, the engine and the doors (Python API, HTTP, magics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One declared model input or output.

    ``dtype`` is a numpy dtype name (``float32``, ``int64``, ``bool``, ``string`` ...) for tensors, or ONNX
    Runtime's type string for non-tensor values (``seq(map(int64,tensor(float)))`` for skl2onnx's ZipMap).
    ``shape`` lists each dimension: an int when fixed, ``None`` when symbolic or dynamic (e.g. the batch). ``[]`` is a
    rank-0 (scalar) tensor; ``shape`` itself is ``None`` for an input whose model declares no shape, not even a rank:
    it takes any shape. ``optional`` inputs have a default in the model (an initializer that is also a graph
    input): a request may leave them out, or give a value that overrides the default.
    """

    name: str
    dtype: str
    shape: list[int | None] | None
    optional: bool = False

    def to_dict(self) -> dict[str, Any]:
        """``{name, dtype, shape, optional}``; ``shape`` a list with None for a dynamic dimension, or None for any
        shape."""
        shape = None if self.shape is None else list(self.shape)
        return {"name": self.name, "dtype": self.dtype, "shape": shape, "optional": self.optional}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        """From ``to_dict``'s form; records stored before ``optional`` existed lack it (False)."""
        shape = None if d["shape"] is None else list(d["shape"])
        return cls(name=d["name"], dtype=d["dtype"], shape=shape, optional=bool(d.get("optional", False)))


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One version of a registered model.

    ``id`` is the model's uuid, stable across versions (a deleted and re-registered name gets a new one).
    ``version`` counts from 1 and never reuses a number. ``sha256`` is the hex digest of the ONNX bytes, which the
    registry stores content-addressed. ``created_at`` is when the name was first registered; ``updated_at`` when this
    version was registered (both timezone-aware UTC). ``size_bytes`` is the ONNX file's size.
    ``conversion`` is None for a version registered as ONNX; for one converted from a fitted object
    (``convert``), ``{converter, converter_version, source, sample_rows, compared, tolerance, max_abs_error,
    max_rel_error}`` (``verify.Verdict.record``): the converter and its version, the original's class, the tolerance
    by output dtype and the largest errors measured on the sample. ``preparation`` is None unless the version was
    prepared for serving (``register(..., quantize=, outputs=, measure=)``): what each step did, sizes in bytes before
    and after, the answers' agreement and, when measured, p50 latency in ms (``prepare`` module docstring).
    ``warmup`` is the input every process warms this version up on (``lifecycle``: ``{rows, feed}``, the feed packed
    as ``outputs.pack`` in base64), None for an input generated from ``inputs``; not part of ``to_dict()``.
    """

    id: str
    name: str
    version: int
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    created_at: datetime
    updated_at: datetime
    size_bytes: int = 0
    versions: list[int] = field(default_factory=list)
    conversion: dict[str, Any] | None = None
    preparation: dict[str, Any] | None = None
    warmup: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe metadata: timestamps as ISO 8601 UTC strings (``warmup`` left out)."""
        d = asdict(self)
        del d["warmup"]
        d["created_at"] = self.created_at.isoformat()
        d["updated_at"] = self.updated_at.isoformat()
        return d


class PredictionResult:
    """The answer to one ``predict`` call.

    ``outputs`` maps each output name to its value as NumPy (``outputs`` module): an ``np.ndarray`` per tensor, as
    ONNX Runtime returned it (NaN and ±Inf kept); a ZipMap output as ``MapRows`` (its float32 ``[N, C]`` ``rows`` and
    class ``keys``; ``maps()`` gives ONNX Runtime's own ``[{label: probability}]``).
    ``output_data`` maps each output name to a JSON-safe value (nested lists; NaN and ±Inf become ``None``; ZipMap
    outputs become lists of ``{str(class): probability}``), identical whether it came from the cache or the engine;
    it is built from ``outputs`` on first read (a result built from a JSON answer has it, and ``outputs`` is then
    built from it: ``np.asarray`` of each tensor's nested list).
    ``inference_time_ms`` is the wall time ModelForge spent on the call (resolve, validate, cache lookup, session run),
    in milliseconds, so a cache hit reports the cache lookup's cost. ``model_name`` is the model's registered name
    (``""`` when unknown: a result built from an HTTP answer for a model called by id); it is for display and not part
    of ``to_dict()``, the HTTP answer.
    """

    __slots__ = ("prediction_id", "model_id", "model_version", "inference_time_ms", "cached", "model_name",
                 "_outputs", "_output_data")

    def __init__(self, prediction_id: str, model_id: str, model_version: int, output_data: dict[str, Any] | None = None,
                 inference_time_ms: float = 0.0, cached: bool = False, model_name: str = "", *,
                 outputs: dict[str, Any] | None = None) -> None:
        if output_data is None and outputs is None:
            raise TypeError("a PredictionResult needs output_data or outputs")
        self.prediction_id, self.model_id, self.model_version = prediction_id, model_id, model_version
        self.inference_time_ms, self.cached, self.model_name = inference_time_ms, cached, model_name
        self._outputs, self._output_data = outputs, output_data

    @property
    def outputs(self) -> dict[str, Any]:
        """``{output name: np.ndarray | MapRows | other}`` (class docstring)."""
        if self._outputs is None:
            self._outputs = {name: _array(value) for name, value in self._output_data.items()}
        return self._outputs

    @property
    def output_data(self) -> dict[str, Any]:
        """``{output name: JSON-safe value}`` (class docstring), built once from ``outputs``."""
        if self._output_data is None:
            from .outputs import json_data

            self._output_data = json_data(self._outputs)
        return self._output_data

    @property
    def has_output_data(self) -> bool:
        """True once ``output_data`` exists (read, or given): an encoder may then use it as it is."""
        return self._output_data is not None

    def to_dict(self) -> dict[str, Any]:
        """The documented predict answer: ``{prediction_id, model_id, model_version, output_data,
        inference_time_ms, cached}`` (``model_name`` is not part of the HTTP answer)."""
        return {
            "prediction_id": self.prediction_id,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "output_data": self.output_data,
            "inference_time_ms": self.inference_time_ms,
            "cached": self.cached,
        }

    def __eq__(self, other: object) -> bool:
        """Equal when the answers are (``to_dict()``, compared through ``output_data``) and the model names too."""
        if not isinstance(other, PredictionResult):
            return NotImplemented
        return self.to_dict() == other.to_dict() and self.model_name == other.model_name

    __hash__ = None  # type: ignore[assignment]  (mutable caches inside: not hashable, as the dataclass was not)

    def __repr__(self) -> str:
        return (f"PredictionResult(model_name={self.model_name!r}, model_version={self.model_version}, "
                f"outputs={list(self.outputs)}, cached={self.cached}, inference_time_ms={self.inference_time_ms:.3f})")


def _array(value: Any) -> Any:
    """A JSON output value as NumPy where it is a tensor's nested list (a list of maps, or ``None`` for NaN, as is)."""
    import numpy as np  # not at import: ``jupyter server extension list`` imports this module, and needs no numpy

    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value
    try:
        array = np.asarray(value)
    except ValueError:
        return value
    return value if array.dtype.kind == "O" else array


@dataclass(frozen=True, slots=True)
class ProvenMiss:
    """A predict looked up on an event loop (``loop_hits``) that found no cached answer: the record proven current by
    the registry stamp in that same round trip, the feed validated (``{input name: ndarray}``), the cache key (None:
    the request does not use the cache, which was not read and is not written).
    ``ModelForge.predict_miss`` finishes it on an executor thread without a second lookup. ``start``, ``fed``,
    ``looked``: ``time.perf_counter_ns()`` when the lookup began, the feed was ready and the cache answered."""

    record: ModelRecord
    feed: dict[str, Any]
    key: str | None
    start: int
    fed: int
    looked: int
