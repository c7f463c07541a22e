"""The Open Inference Protocol (KServe V2) with Triton's binary tensor extension, HTTP aside: what each endpoint
answers, for every door that serves it (the Jupyter server extension's ``v2_handlers``). The wire format is
``v2_codec``; this module adds the rules that need the model and calls ``ModelForge``.

Endpoints (under ``{base_url}modelforge/``): ``GET v2/health/live``, ``GET v2/health/ready``, ``GET v2`` (server
metadata, ``server_metadata``), ``GET v2/models/{name}[/versions/{v}]`` (``model_metadata``), ``GET .../ready``
(``model_ready``), ``POST .../infer`` (``infer``); Triton's statistics extension: ``GET
v2/models[/{name}[/versions/{v}]]/stats`` (``model_statistics``); its model repository extension: ``POST
v2/repository/index`` (``repository_index``), ``POST v2/repository/models/{name}/load`` and ``.../unload``
(``repository_load``, ``repository_unload``: ModelForge's forced reload and unload). ``{v}`` is ModelForge's version
number (a whole number >= 1, else 400; an unknown one 404); ``{name}`` a model's name or id.

Rules of an infer request, as Triton words them (each an ``InvalidInputError``, 400, and nothing run or cached):
every required input given once and no other (``unexpected inference input 'z' for model 'm'``); each input's
datatype exactly the model's (``inference input data-type is 'FP64', model expects 'FP32' for input 'x' of model
'm'``: no conversion, unlike ModelForge's JSON endpoint); each shape of the model's rank with its fixed dimensions
(``unexpected shape for input 'x' for model 'm'. Expected [-1,4], got [2,3]``; any shape for an input whose model
declares none) and no empty tensor; every output of the ``outputs`` filter one of the model's (``unexpected inference
output 'z' for model 'm'``). The feed is what ``ModelForge.predict`` hashes for the prediction cache, so a V2 request
and a ``POST modelforge/predict`` with the same tensors share one cache entry.

ZipMap outputs (skl2onnx classifiers' ``[{label: probability}]``) are answered as an FP32 tensor ``[N, C]``, the
probabilities in label order, with ``parameters.zipmap_labels`` the labels as a JSON list in a string; model metadata
reports them as FP32 ``[-1, C]``. V2 has no map datatype, and this keeps them binary and NumPy end to end.
"""

from __future__ import annotations

from typing import Any

import orjson

from .._version import __version__
from .errors import InferenceError, InvalidInputError, ModelForgeError, ModelNotFoundError, ModelNotReadyError
from .protocol import json_object, version_from_text
from .records import ModelRecord, TensorSpec
from .v2_codec import V2_OF_DTYPE, V2Request, encode_response, parse_infer, shape_text

SERVER_NAME = "modelforge"
EXTENSIONS = ("binary_tensor_data", "statistics", "model_repository")  # the Triton extensions served: only these
PLATFORM = "onnxruntime_onnx"  # as Triton reports an ONNX Runtime model


def server_metadata() -> dict[str, Any]:
    """``GET v2``: ``{"name": "modelforge", "version": ModelForge's version, "extensions": [...]}``."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def url_version(text: str | None) -> int | None:
    """The ``{v}`` of ``.../versions/{v}``: None when absent (the latest), else a whole number >= 1; raises
    ``ModelForgeError`` (400) naming what was given otherwise."""
    return None if text is None else version_from_text(text)


def model_ready(forge: Any, model: str, version: str | None = None) -> dict[str, Any]:
    """``GET v2/models/{name}[/versions/{v}]/ready``: ``{"name", "ready": true}`` for a registered version: it was
    loaded and run once before its registration committed (``lifecycle``), and any process loads it on first use.
    Raises ``ModelNotReadyError`` (400, Triton's answer for a model not ready: ``tritonclient``'s ``is_model_ready``
    is then False) while this process loads and warms a version of ``{name}`` not registered yet;
    ``ModelNotFoundError`` (404) otherwise for an unknown model or version; 400 for a bad ``{v}``."""
    number = url_version(version)
    try:
        record = forge.get(model, number)
    except ModelNotFoundError:
        if forge.lifecycle.is_warming(model):
            raise ModelNotReadyError(f"model {model!r} is not ready: " + (f"version {number}" if number else "a version")
                                     + " of it is being loaded and warmed up") from None
        raise
    return {"name": record.name, "ready": True}


def model_statistics(forge: Any, model: str | None = None, version: str | None = None) -> dict[str, Any]:
    """``GET v2/models[/{name}[/versions/{v}]]/stats``, Triton's statistics extension: ``{"model_stats": [{name,
    version, last_inference, inference_count, execution_count, inference_stats, batch_stats}]}`` of this process
    (``ModelForge.statistics``). Raises ``ModelNotFoundError`` (404), 400 for a bad ``{v}``."""
    return forge.statistics(model, url_version(version))


def repository_index(forge: Any, body: bytes) -> list[dict[str, Any]]:
    """``POST v2/repository/index`` (body ``{}`` or ``{"ready": bool}``, may be empty): ``[{"name", "version",
    "state": "READY"}]`` for every registered model's latest version, then ``{"name", "state": "LOADING"}`` for
    those this process is warming before their first registration (left out with ``"ready": true``).
    Raises ``ModelForgeError`` (400) for another body."""
    request = _repository_body(body, ("ready",))
    ready_only = request.get("ready", False)
    if not isinstance(ready_only, bool):
        raise ModelForgeError(f"'ready' must be true or false, got {ready_only!r}")
    index = [{"name": r.name, "version": str(r.version), "state": "READY"} for r in forge.models()]
    if not ready_only:
        names = {entry["name"] for entry in index}
        index += [{"name": n, "state": "LOADING", "reason": "loading and warming up before its registration"}
                  for n in sorted(forge.lifecycle.warming_names()) if n not in names]
    return index


def repository_load(forge: Any, model: str, body: bytes) -> dict[str, Any]:
    """``POST v2/repository/models/{name}/load``: ``ModelForge.load`` (the latest version's session reloaded and
    warmed here, the other processes that have it loaded told to reload it); ``{}``. A body with ``parameters``
    (Triton's config or file override) is refused (400): models are registered through ``PUT modelforge/models``.
    Raises ``ModelNotFoundError`` (404), and as ``ModelForge.load`` does (400, 503)."""
    request = _repository_body(body, ("parameters",))
    if request.get("parameters"):
        raise ModelForgeError("load takes no parameters here: register a model or a new version with PUT "
                              "modelforge/models/{name}; load reloads a registered one")
    forge.load(model)
    return {}


def repository_unload(forge: Any, model: str, body: bytes) -> dict[str, Any]:
    """``POST v2/repository/models/{name}/unload``: ``ModelForge.unload`` (this process's session of the latest
    version dropped; the next request loads it again); ``{}``. Raises ``ModelNotFoundError`` (404)."""
    _repository_body(body, ("parameters",))
    forge.unload(model)
    return {}


def _repository_body(body: bytes, keys: tuple[str, ...]) -> dict[str, Any]:
    """A repository request's JSON object body (empty: ``{}``); 400 for another JSON value or an unknown key."""
    request = json_object(body) if body.strip() else {}
    unknown = sorted(set(request) - set(keys))
    if unknown:
        raise ModelForgeError(f"unknown field(s) {', '.join(map(repr, unknown))}; this request takes "
                              f"{', '.join(map(repr, keys))}")
    return request


def model_metadata(forge: Any, model: str, version: str | None = None) -> dict[str, Any]:
    """``GET v2/models/{name}[/versions/{v}]``: ``{"name", "versions": [str], "platform": "onnxruntime_onnx",
    "inputs": [{name, datatype, shape}], "outputs": [...]}``, -1 for a dynamic dimension (``[-1]`` for an input of
    any shape: V2 has no "any rank"). A ZipMap output is FP32 ``[-1, C]`` (C its labels; the model's session is
    loaded to read them); another non-tensor output BYTES ``[1]`` (its JSON text). Raises ``ModelNotFoundError``
    (404), 400 for a bad ``{v}``."""
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
    dims = [None] if spec.shape is None else spec.shape  # any shape: V2 metadata cannot say "any rank"
    return {"name": spec.name, "datatype": V2_OF_DTYPE[spec.dtype], "shape": [-1 if d is None else d for d in dims]}


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
        if spec.shape is not None and (len(item.shape) != len(spec.shape)
                                       or any(d is not None and d != g for d, g in zip(spec.shape, item.shape))):
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

