"""The Open Inference Protocol (KServe V2) with Triton's binary tensor extension, HTTP aside: what each endpoint
answers, for every door that serves it (the Jupyter server extension's ``v2_handlers``). The wire format is
``v2_codec``; this module adds the rules that need the model and calls ``ModelForge``.

Endpoints (under ``{base_url}modelforge/``): ``GET v2/health/live``, ``GET v2/health/ready``, ``GET v2`` (server
metadata, ``server_metadata``), ``GET v2/models/{name}[/versions/{v}]`` (``model_metadata``), ``GET .../ready``
(``model_ready``), ``POST .../infer`` (``infer``), ``GET v2/models[/{name}[/versions/{v}]]/stats``
(``model_statistics``). ``{v}`` is ModelForge's version number (a whole number >= 1, else
400; an unknown one 404); ``{name}`` a model's name or id.

Rules of an infer request, as Triton words them (each an ``InvalidInputError``, 400, and nothing run or cached):
every required input given once and no other (``unexpected inference input 'z' for model 'm'``); each input's
datatype exactly the model's (``inference input data-type is 'FP64', model expects 'FP32' for input 'x' of model
'm'``: no conversion, unlike ModelForge's JSON endpoint); each shape of the model's rank with its fixed dimensions
(``unexpected shape for input 'x' for model 'm'. Expected [-1,4], got [2,3]``) and no empty tensor; every output of
the ``outputs`` filter one of the model's (``unexpected inference output 'z' for model 'm'``). The feed is what
``ModelForge.predict`` hashes for the prediction cache, so a V2 request and a ``POST modelforge/predict`` with the
same tensors share one cache entry.

ZipMap outputs (skl2onnx classifiers' ``[{label: probability}]``) are answered as an FP32 tensor ``[N, C]``, the
probabilities in label order, with ``parameters.zipmap_labels`` the labels as a JSON list in a string; model metadata
reports them as FP32 ``[-1, C]``. V2 has no map datatype, and this keeps them binary and NumPy end to end.
"""

from __future__ import annotations

from typing import Any

import orjson

from .._version import __version__
from .errors import InferenceError, InvalidInputError
from .protocol import version_from_text
from .records import ModelRecord, TensorSpec
from .v2_codec import V2_OF_DTYPE, V2Request, encode_response, parse_infer, shape_text

SERVER_NAME = "modelforge"
EXTENSIONS = ("binary_tensor_data", "statistics")  # the Triton extensions served: only what is implemented
PLATFORM = "onnxruntime_onnx"  # as Triton reports an ONNX Runtime model


def server_metadata() -> dict[str, Any]:
    """``GET v2``: ``{"name": "modelforge", "version": ModelForge's version, "extensions": [...]}``."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def url_version(text: str | None) -> int | None:
    """The ``{v}`` of ``.../versions/{v}``: None when absent (the latest), else a whole number >= 1; raises
    ``ModelForgeError`` (400) naming what was given otherwise."""
    return None if text is None else version_from_text(text)


def model_ready(forge: Any, model: str, version: str | None = None) -> dict[str, Any]:
    """``GET v2/models/{name}[/versions/{v}]/ready``: ``{"name", "ready": true}`` for a registered model (sessions
    load on first use, so a registered model is ready). Raises ``ModelNotFoundError`` (404), 400 for a bad ``{v}``."""
    record = forge.get(model, url_version(version))
    return {"name": record.name, "ready": True}


def model_statistics(forge: Any, model: str | None = None, version: str | None = None) -> dict[str, Any]:
    """``GET v2/models[/{name}[/versions/{v}]]/stats``, Triton's statistics extension: ``{"model_stats": [{name,
    version, last_inference, inference_count, execution_count, inference_stats, batch_stats}]}`` of this process
    (``ModelForge.statistics``). Raises ``ModelNotFoundError`` (404), 400 for a bad ``{v}``."""
    return forge.statistics(model, url_version(version))


def model_metadata(forge: Any, model: str, version: str | None = None) -> dict[str, Any]:
    """``GET v2/models/{name}[/versions/{v}]``: ``{"name", "versions": [str], "platform": "onnxruntime_onnx",
    "inputs": [{name, datatype, shape}], "outputs": [...]}``, -1 for a dynamic dimension. A ZipMap output is FP32
    ``[-1, C]`` (C its labels; the model's session is loaded to read them); another non-tensor output BYTES ``[1]``
    (its JSON text). Raises ``ModelNotFoundError`` (404), 400 for a bad ``{v}``."""
    record = forge.get(model, url_version(version))
    labels: dict[str, int] = {}
    if any(spec.dtype not in V2_OF_DTYPE for spec in record.outputs):
        loaded = forge.engine.session(record.sha256, lambda: forge.registry.blob(record.sha256))
        labels = {z.name: len(z.keys) for z in loaded.zipmaps if z is not None}
    return {
        "name": record.name,
        "versions": [str(v) for v in (record.versions or [record.version])],
        "platform": PLATFORM,
        "inputs": [_tensor_meta(spec) for spec in record.inputs],
        "outputs": [_output_meta(spec, labels.get(spec.name)) for spec in record.outputs],
    }


def _tensor_meta(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": V2_OF_DTYPE[spec.dtype], "shape": [-1 if d is None else d
                                                                             for d in spec.shape]}


def _output_meta(spec: TensorSpec, labels: int | None) -> dict[str, Any]:
    if spec.dtype in V2_OF_DTYPE:
        return _tensor_meta(spec)
    if labels is not None:
        return {"name": spec.name, "datatype": "FP32", "shape": [-1, labels]}
    return {"name": spec.name, "datatype": "BYTES", "shape": [1]}


def feed(record: ModelRecord, request: V2Request) -> dict:
    """The feed rule of a V2 infer (``ModelForge.predict``'s ``prepare``): ``{input name: array}`` after the checks
    the module docstring lists, the ``outputs`` filter's names included. Raises ``InvalidInputError`` (400)."""
    model = record.name
    specs = {spec.name: spec for spec in record.inputs}
    given: dict[str, Any] = {}
    for item in request.inputs:
        if item.name not in specs:
            raise InvalidInputError(f"unexpected inference input {item.name!r} for model {model!r}; it takes "
                                    f"{_describe(record.inputs)}")
        if item.name in given:
            raise InvalidInputError(f"input {item.name!r} is given twice for model {model!r}")
        spec = specs[item.name]
        want = V2_OF_DTYPE.get(spec.dtype)
        if item.datatype != want:
            raise InvalidInputError(f"inference input data-type is {item.datatype!r}, model expects {want!r} for "
                                    f"input {item.name!r} of model {model!r}")
        if len(item.shape) != len(spec.shape) or any(d is not None and d != g for d, g in zip(spec.shape, item.shape)):
            raise InvalidInputError(f"unexpected shape for input {item.name!r} for model {model!r}. Expected "
                                    f"{shape_text(spec.shape)}, got {shape_text(item.shape)}")
        if item.array.size == 0:
            raise InvalidInputError(f"input {item.name!r} for model {model!r} has no elements (shape "
                                    f"{shape_text(item.shape)}): send at least one")
        given[item.name] = item.array
    missing = [spec.name for spec in record.inputs if not spec.optional and spec.name not in given]
    if missing:
        required = sum(not spec.optional for spec in record.inputs)
        raise InvalidInputError(f"expected {required} inputs but got {len(given)} inputs for model {model!r}: missing "
                                f"required input(s) {', '.join(map(repr, missing))}; it takes "
                                f"{_describe(record.inputs)}")
    if request.outputs is not None:
        names = {spec.name for spec in record.outputs}
        for name in request.outputs:
            if name not in names:
                raise InvalidInputError(f"unexpected inference output {name!r} for model {model!r}; its outputs are "
                                        f"{', '.join(repr(spec.name) for spec in record.outputs)}")
    return given


def _describe(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name!r} {V2_OF_DTYPE.get(s.dtype, s.dtype)} {shape_text(s.shape)}"
                     + (" (optional)" if s.optional else "") for s in specs) or "no inputs"


def infer(forge: Any, model: str, version: str | None, body: bytes, header_length: str | None = None,
          cancel: Any = None) -> tuple[bytes, int | None]:
    """``POST v2/models/{model}[/versions/{version}]/infer`` with ``body`` (and its
    ``Inference-Header-Content-Length`` text, or None): (answer body, JSON header length or None for plain JSON).
    ``cancel``: the request's ``deadline.Cancellation``. Raises ``InvalidInputError`` (400: ``v2_codec.parse_infer``,
    ``feed``, and values ONNX Runtime refuses, ``InferenceError``'s 422 elsewhere), ``ModelNotFoundError`` (404),
    and whatever else ``ModelForge.predict`` raises (503, 504, 413...)."""
    number = url_version(version)
    request = parse_infer(body, header_length)
    try:
        result = forge.predict(model, request, use_cache=request.use_cache, version=number, cancel=cancel,
                               prepare=feed)
    except InferenceError as err:  # values ONNX Runtime refused: Triton's INVALID_ARG (400), V2 has no 422
        raise InvalidInputError(str(err)) from None
    return encode_response(result.model_name, result.model_version, result.outputs, request, result.cached)


def error_body(message: str) -> bytes:
    """A V2 error's JSON body: ``{"error": message}``."""
    return orjson.dumps({"error": message})

