"""The wire format of ``POST modelforge/predict``, in one place for every door (no HTTP framework, no IPython).

A predict request is a JSON object ``{"model_id": str, "input_data": ..., "use_cache"?: bool, "version"?: int}``;
its answer is ``PredictionResult.to_dict()`` as JSON. The server's handler, the ``%%mf_predict`` cell, the kernel's
HTTP client and the benchmark's JSON floor all parse and encode through these functions, and the request rules they
share (``use_cache`` a bool, ``version`` a whole number >= 1) are checked here once; ``ModelForge.predict`` calls
the same checks. Every refusal is an ``InvalidInputError`` (400) naming the field, what was expected and what was
given (``ModelForgeError``, 400, for a version given as text); the status of each error class lives in ``errors.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InvalidInputError, ModelForgeError
from .records import PredictionResult, ProvenMiss

MODEL_ID, INPUT_DATA, USE_CACHE, VERSION = "model_id", "input_data", "use_cache", "version"
VERSION_TEXT = re.compile(r"[0-9]+")
RESULT_FIELDS = ("prediction_id", "model_id", "model_version", "output_data", "inference_time_ms", "cached")


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A parsed predict request: the model's name or id, its input as decoded JSON, the cache flag and the version
    (None: the latest)."""

    model: str
    input_data: Any
    use_cache: bool = True
    version: int | None = None


# -- the request rules ---------------------------------------------------------------------------------------------
def check_use_cache(use_cache: Any) -> bool:
    """``use_cache`` is ``True`` or ``False``; else ``InvalidInputError`` (400) naming what was given."""
    if use_cache is not True and use_cache is not False:
        raise InvalidInputError(f"use_cache must be true or false, got {use_cache!r}")
    return use_cache


def check_version(version: Any) -> int | None:
    """``version`` is None (latest) or a whole number >= 1; else ``InvalidInputError`` (400) naming what was given."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError(f"version must be a whole number >= 1, got {version!r}")
    return version


def version_from_text(raw: str) -> int:
    """The version a door was given as text (``?version=N`` in a URL, ``--version N`` of a magic): ASCII digits
    naming a whole number >= 1. Raises ``ModelForgeError`` (400) naming what was given otherwise, so an empty value,
    blanks, a sign or ``1.0`` never reads as "no version" (every version) or as another number.
    """
    if not isinstance(raw, str) or not VERSION_TEXT.fullmatch(raw) or int(raw) < 1:
        raise ModelForgeError(f"version must be a whole number >= 1, got {raw!r}")
    return int(raw)


# -- decoding a request ----------------------------------------------------------------------------------------------
_JSON_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"), (bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "array"),
    (dict, "object"),
)


def json_type(value: Any) -> str:
    """The name JSON gives a decoded JSON value's type (RFC 8259): ``null``, ``boolean``, ``number``, ``string``,
    ``array`` or ``object``, for messages naming what a request sent (never Python's ``NoneType``, ``dict``)."""
    for types, name in _JSON_TYPES:  # bool before number: a Python bool is an int
        if isinstance(value, types):
            return name
    return type(value).__name__  # not a decoded JSON value; no such value comes from orjson.loads


def json_object(body: bytes | dict[str, Any]) -> dict[str, Any]:
    """The request body as a JSON object (orjson; a dict already decoded is taken as it is). Raises
    ``InvalidInputError`` (400) for an empty body, malformed JSON, or JSON that is not an object."""
    if isinstance(body, dict):
        return body
    if not body.strip():
        raise InvalidInputError("empty request body: send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise InvalidInputError(f"malformed JSON body: {err}") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"the body must be a JSON object, got a JSON {json_type(value)}")
    return value


PREDICT_FIELDS = (MODEL_ID, INPUT_DATA, USE_CACHE, VERSION)
LOAD_FIELDS = (VERSION,)


def parse_predict(body: bytes | dict[str, Any]) -> PredictRequest:
    """The ``PredictRequest`` of a ``POST modelforge/predict`` body (JSON bytes, or the decoded object).

    Raises ``InvalidInputError`` (400): a body that is not a JSON object (``json_object``), ``model_id`` missing or not
    a non-empty string, ``input_data`` missing, ``use_cache`` not a bool, ``version`` not a whole number >= 1, or a
    field that is none of these (a misspelt ``versoin`` must not silently mean "the latest version").
    """
    request = json_object(body)
    _only(request, PREDICT_FIELDS, "predict")
    model = request.get(MODEL_ID)
    if not isinstance(model, str) or not model:
        if MODEL_ID not in request:
            raise InvalidInputError("missing 'model_id': the model's name or id, a string")
        got = "an empty string" if model == "" else f"a JSON {json_type(model)}"
        raise InvalidInputError(f"'model_id' must be the model's name or id, a non-empty string; got {got}")
    if INPUT_DATA not in request:
        raise InvalidInputError("missing 'input_data': {input name: nested list}, or a bare nested list")
    return PredictRequest(model, request[INPUT_DATA], check_use_cache(request.get(USE_CACHE, True)),
                          check_version(request.get(VERSION)))


def load_version(body: bytes, query_version: int | None = None) -> int | None:
    """The version a ``POST modelforge/models/{name}/load`` names (None: the latest): its optional JSON body
    ``{"version": N}`` (empty or ``{}``: none given), else its ``?version=N`` (``query_version``). As V2's repository
    load, the body is empty or a JSON object of known fields.

    Raises ``InvalidInputError`` (400): a body that is not a JSON object (``json_object``), a field other than
    ``version``, a version that is not a whole number >= 1, or two different versions in the body and the query.
    """
    request = json_object(body) if body.strip() else {}
    _only(request, LOAD_FIELDS, "load")
    version = check_version(request.get(VERSION))
    if version is not None and query_version is not None and version != query_version:
        raise InvalidInputError(f"version {version} in the body but {query_version} in the query: give it once")
    return query_version if version is None else version


def _only(request: dict[str, Any], fields: tuple[str, ...], what: str) -> None:
    """``InvalidInputError`` (400) naming the fields of ``request`` not in ``fields`` (a misspelt ``versoin`` must
    not silently mean "the latest version")."""
    unknown = [key for key in request if key not in fields]
    if unknown:
        raise InvalidInputError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in the {what} request; "
            f"it takes {', '.join(fields)}"
        )


def request_options(request: dict[str, Any], use_cache: bool = True,
                    version: int | None = None) -> tuple[bool, int | None]:
    """``(use_cache, version)`` of a decoded request, each defaulting to the value given; checked as
    ``parse_predict`` checks them (``InvalidInputError``, 400)."""
    return check_use_cache(request.get(USE_CACHE, use_cache)), check_version(request.get(VERSION, version))


# -- encoding --------------------------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_numpy"):  # pandas DataFrame / Series
        return obj.to_numpy().tolist()
    if hasattr(obj, "tolist"):  # numpy arrays orjson does not take (non-contiguous, object dtype), numpy scalars
        return obj.tolist()
    raise TypeError(f"cannot send a {type(obj).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """JSON bytes of ``value`` (orjson; numpy arrays and DataFrames as nested lists)."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_predict(model: str, input_data: Any, *, use_cache: bool = True, version: int | None = None) -> bytes:
    """The JSON body of ``POST modelforge/predict``: ``{"model_id", "input_data", "use_cache", "version"?}``
    (``input_data``: nested lists, numpy arrays or DataFrames, or a dict of them)."""
    request: dict[str, Any] = {MODEL_ID: model, INPUT_DATA: input_data, USE_CACHE: use_cache}
    if version is not None:
        request[VERSION] = version
    return dumps(request)


def encode_result(result: PredictionResult) -> bytes:
    """The JSON answer of a predict: ``PredictionResult.to_dict()``, encoded by orjson straight from the NumPy
    outputs (``outputs.json_ready``) without building ``output_data``'s lists, to the same JSON."""
    from .outputs import json_ready  # not at import: ``jupyter server extension list`` imports this module, no numpy

    answer = result.to_dict() if result.has_output_data else {
        "prediction_id": result.prediction_id, "model_id": result.model_id, "model_version": result.model_version,
        "output_data": {name: json_ready(value) for name, value in result.outputs.items()},
        "inference_time_ms": result.inference_time_ms, "cached": result.cached,
    }
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_result(answer: dict[str, Any], model: str) -> PredictionResult:
    """The ``PredictionResult`` of a decoded predict answer, asked for as ``model`` (name or id): the answer names
    the model by id only, so ``model_name`` is ``model`` unless it was that id (an id resolves first)."""
    values = {name: answer[name] for name in RESULT_FIELDS if name in answer}
    values.setdefault("model_name", model if model != answer["model_id"] else "")
    return PredictionResult(**values)


def predict_json(forge: Any, body: bytes | dict[str, Any] | ProvenMiss, cancel: Any = None) -> bytes:
    """The answer (JSON bytes) of ``POST modelforge/predict`` with ``body``, HTTP aside: ``parse_predict``,
    ``forge.predict`` (``cancel``: the request's ``deadline.Cancellation``), ``encode_result``. The benchmark's
    ``json_floor`` times this very function. A ``ProvenMiss`` (what ``loop_hits`` answers for a body it looked up)
    goes to ``forge.predict_miss``. Raises ``InvalidInputError`` (400) for a malformed request, and whatever
    ``ModelForge.predict`` raises.
    """
    if isinstance(body, ProvenMiss):
        return encode_result(forge.predict_miss(body, cancel=cancel))
    request = parse_predict(body)
    result = forge.predict(request.model, request.input_data, use_cache=request.use_cache, version=request.version,
                           cancel=cancel)
    return encode_result(result)
