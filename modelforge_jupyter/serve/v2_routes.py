"""The Open Inference Protocol (KServe V2) routes of ``modelforge serve``, with Triton's binary tensor extension:
``tritonclient.http.InferenceServerClient(url="host:port/modelforge")`` works against it as against the Jupyter
server (its token in ``headers={"Authorization": "token ..."}``).

``GET /modelforge/v2/health/live`` and ``GET /modelforge/v2/health/ready`` (no token needed), ``GET /modelforge/v2``,
``GET /modelforge/v2/models/{name}[/versions/{v}]``, ``GET .../ready``, ``POST .../infer``, ``GET .../stats`` and
``GET /modelforge/v2/models/stats`` (Triton's statistics, this worker's); the model repository extension: ``POST
/modelforge/v2/repository/index``, ``POST /modelforge/v2/repository/models/{name}/load`` and ``.../unload``. What
each answers is the
core's ``v2`` (as the Jupyter extension's ``v2_handlers``); authentication, threads and the body limit are the other
routes' (``routes``). Errors carry V2's body ``{"error": "<message>"}`` with Triton's status codes (400 invalid
request, 404 unknown model or version or path, 503 unavailable; 403, 413, 415, 504 as the other routes).
"""

from __future__ import annotations

from typing import Any

from ..core import v2
from .http import Refusal, Request
from .routes import PREFIX, Answer, Endpoint, data_call, ok

V2 = PREFIX + "v2"
MODELS = V2 + "/models/"
BINARY_HEADER = b"inference-header-content-length"
BINARY_TYPE = (b"content-type", b"application/octet-stream")


async def live(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{"live": true}`` whenever the worker runs."""
    return ok({"live": True})


async def ready(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{"ready": true}`` once the registry answers; else 503 ``{"error"}`` saying why."""
    await app.call("health", app.check_ready)
    return ok({"ready": True})


async def server_metadata(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{"name": "modelforge", "version", "extensions"}`` (``core.v2.server_metadata``)."""
    return ok(v2.server_metadata())


async def model_metadata(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{name, versions, platform, inputs, outputs}``; 404 unknown model or version; 400 a bad ``{v}``."""
    return ok(await app.call("control", lambda: v2.model_metadata(app.get_forge(), req.name, req.version)))


async def model_ready(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{"name", "ready": true}``; 404 unknown model or version; 400 a bad ``{v}``."""
    return ok(await app.call("control", lambda: v2.model_ready(app.get_forge(), req.name, req.version)))


async def infer(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """The outputs of a JSON or JSON + binary request (``core.v2.infer``), on the data plane with ``POST
    modelforge/predict``'s body limit and cancellation. Binary outputs answer ``application/octet-stream`` with
    ``Inference-Header-Content-Length`` (the JSON's bytes)."""
    body = await req.body(*app.options.predict_limit())
    header_length = req.header(BINARY_HEADER)
    hits = app.holder.loop_hits()
    hit = await hits.answer_v2(req.name, req.version, body, header_length) if hits is not None else None
    answer, length = hit or await data_call(app, req, _infer, app, req.name, req.version, body, header_length)
    if length is None:
        return 200, answer, ()
    return 200, answer, (BINARY_TYPE, (BINARY_HEADER, b"%d" % length))


def _infer(app: Any, name: str, version: str | None, body: bytes, header_length: str | None,
           cancel: Any) -> tuple[bytes, int | None]:
    """Decode, predict and encode in one data-plane call: a large batch never blocks the event loop."""
    return v2.infer(app.get_forge(), name, version, body, header_length, cancel)


async def model_stats(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{"model_stats": [...]}`` of this worker's process (``core.v2.model_statistics``); 404 unknown model or
    version; 400 a bad ``{v}``."""
    return ok(await app.call("control", lambda: v2.model_statistics(app.get_forge(), req.name, req.version)))


async def repository_index(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``[{"name", "version", "state"}]`` (``core.v2.repository_index``); 400 for another body than ``{"ready"}``."""
    body = await req.body(app.options.max_body_size, "--max-body-size")
    return ok(await app.call("control", lambda: v2.repository_index(app.get_forge(), body)))


async def repository_load(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{}`` once every process sharing the registry was told to reload it and this one did, warmed
    (``core.v2.repository_load``); 404 unknown; 400 a failed warm-up or parameters; 503 refused for memory."""
    body = await req.body(app.options.max_body_size, "--max-body-size")
    return ok(await app.call("control", lambda: v2.repository_load(app.get_forge(), req.name, body)))


async def repository_unload(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{}`` once this worker's session is dropped (``core.v2.repository_unload``); 404 unknown."""
    body = await req.body(app.options.max_body_size, "--max-body-size")
    return ok(await app.call("control", lambda: v2.repository_unload(app.get_forge(), req.name, body)))


async def not_found(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """Any other path under ``/modelforge/v2``: 404 ``{"error"}``."""
    raise Refusal(404, f"no V2 endpoint at {req.path}")


def _endpoint(methods: dict, open: bool = False) -> Endpoint:
    return Endpoint(methods, open=open, error=v2.error_body)


EXACT = {
    V2: _endpoint({"GET": server_metadata}),
    V2 + "/health/live": _endpoint({"GET": live}, open=True),
    V2 + "/health/ready": _endpoint({"GET": ready}, open=True),
    MODELS + "stats": _endpoint({"GET": model_stats}),  # every model's: "stats" is no model's name here (Triton's)
    V2 + "/repository/index": _endpoint({"POST": repository_index}),
}
REPOSITORY = V2 + "/repository/models/"
REPOSITORY_ACTIONS = {"load": _endpoint({"POST": repository_load}), "unload": _endpoint({"POST": repository_unload})}
MODEL = _endpoint({"GET": model_metadata})
MODEL_READY = _endpoint({"GET": model_ready})
INFER = _endpoint({"POST": infer})
NOT_FOUND = Endpoint({m: not_found for m in ("GET", "POST", "PUT", "DELETE", "PATCH")}, takes=None,
                     error=v2.error_body)
ACTIONS = {"": MODEL, "ready": MODEL_READY, "infer": INFER, "stats": _endpoint({"GET": model_stats})}


def route_v2(path: str) -> tuple[Endpoint, str | None, str | None] | None:
    """(the endpoint, the model name, the ``{v}`` text) of a path under ``/modelforge/v2``; None for another path
    (``routes.route``'s). ``{name}`` may be a model's name or id; ``{v}`` is checked by ``core.v2`` (400)."""
    if path != V2 and not path.startswith(V2 + "/"):
        return None
    endpoint = EXACT.get(path)
    if endpoint is not None:
        return endpoint, None, None
    if path.startswith(REPOSITORY):
        name, _, action = path[len(REPOSITORY):].partition("/")
        if name and action in REPOSITORY_ACTIONS:
            return REPOSITORY_ACTIONS[action], name, None
    if path.startswith(MODELS):
        parts = path[len(MODELS):].split("/")
        name, version = parts[0], None
        if len(parts) >= 3 and parts[1] == "versions":
            version, parts = parts[2], parts[2:]
        rest = parts[1:]
        if name and version != "" and len(rest) <= 1 and all(rest) and (rest[0] if rest else "") in ACTIONS:
            return ACTIONS[rest[0] if rest else ""], name, version
    return NOT_FOUND, None, None
