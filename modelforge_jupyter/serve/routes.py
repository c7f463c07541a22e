"""The routes of ``modelforge serve``: the Jupyter server extension's ModelForge endpoints, at the server's root.

``GET modelforge/health``, ``GET modelforge/health/live``, ``GET modelforge/health/ready`` (no token needed),
``POST modelforge/predict``, ``GET modelforge/models``, ``GET|PUT|DELETE modelforge/models/{name}[?version=N]``,
``POST modelforge/models/{name}/unload[?version=N]`` and ``.../load[?version=N]``, ``GET
modelforge/models/{name}/stats[?version=N]``, and ``GET /metrics`` (Prometheus, every worker's; the token needed as
elsewhere). Each handler parses its request, calls the ``ModelForge`` API on a thread of the server
(``ServeApp.call``) and answers ``(status, JSON body, extra headers)``, with the same answers as the extension: the
predict wire format is the core's ``predict_json``, errors the core's family. The Open Inference Protocol's routes
under ``modelforge/v2`` are ``v2_routes``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from ..core.deadline import Cancellation
from ..core.protocol import load_version, version_from_text
from .http import Refusal, Request, error_body

Answer = tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]
Handler = Callable[[Any, Request, dict[str, str]], Awaitable[Answer]]
PREFIX = "/modelforge/"
MODELS = PREFIX + "models/"


def ok(data: Any, status: int = 200) -> Answer:
    """An answer of ``data`` as JSON with ``status``."""
    return status, orjson.dumps(data), ()


def version(query: dict[str, str]) -> int | None:
    """``?version=N``: absent is None (latest, or every version for DELETE); present, a whole number >= 1
    (``version_from_text``: 400 otherwise, an empty ``?version=`` included)."""
    raw = query.get("version")
    return None if raw is None else version_from_text(raw)


# -- health: no token ------------------------------------------------------------------------------------------------
async def health(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{status, database, redis, celery, version, environment, timestamp}``; 503 when unhealthy."""
    answer = await app.health()
    return ok(answer, 503 if answer["status"] == "unhealthy" else 200)


async def live(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{"status": "alive"}`` whenever the worker runs."""
    return ok({"status": "alive"})


async def ready(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``{"status": "ready"}`` once the ModelForge is built and its registry answers; else 503 saying why."""
    await app.call("health", app.check_ready)
    return ok({"status": "ready"})


# -- the data plane --------------------------------------------------------------------------------------------------
async def predict(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """Run a model on ``{"model_id", "input_data", "use_cache"?, "version"?}`` (``protocol.predict_json``).

    The run is stopped (``Cancellation``) when the client closes its connection, or never starts if it was still
    queued; past ``inference_timeout`` it answers 504.
    """
    body = await req.body(*app.options.predict_limit())
    hits = app.holder.loop_hits()
    answer = await hits.answer_json(body) if hits is not None else None  # a proven cache hit, on the loop
    if isinstance(answer, bytes):
        return 200, answer, ()
    return 200, await data_call(app, req, app.predict_json, answer or body), ()  # answer: a ProvenMiss or None


async def data_call(app: Any, req: Request, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args, cancel)`` on the data plane, once the body is read: ``cancel`` (a ``Cancellation``) stops the run
    when the client closes its connection, or keeps a queued one from starting; and when the server gives up."""
    cancel = Cancellation()
    # After the body, receive() returns only when the client leaves (or once the answer is sent): then stop the run.
    watcher = asyncio.ensure_future(req.receive())
    watcher.add_done_callback(functools.partial(_client_left, cancel))
    try:
        return await app.call("data", fn, *args, cancel)
    except asyncio.CancelledError:  # the server stops and gives up waiting: so does the run
        cancel.cancel("the server is shutting down")
        raise
    finally:
        watcher.cancel()


def _client_left(cancel: Cancellation, watcher: asyncio.Future) -> None:
    if not watcher.cancelled():
        cancel.cancel()


# -- the control plane -----------------------------------------------------------------------------------------------
async def list_models(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """The latest version of every registered model."""
    records = await app.forge_call("models")
    return ok([r.to_dict() for r in records])


async def get_model(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``GET /modelforge/models/{name}[?version=N]``: 200 the record; 404 unknown; 400 bad version."""
    return ok((await app.forge_call("get", req.name, version(query))).to_dict())


async def put_model(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """A new version from raw ONNX bytes: 201 with ``Location`` when it registers the name, else 200."""
    body = await req.body(app.options.max_body_size, "--max-body-size")
    record, changed = await app.forge_call("save", req.name, body)
    if changed and record.version == 1:
        return 201, orjson.dumps(record.to_dict()), ((b"location", (MODELS + quote(record.name, safe="")).encode()),)
    return ok(record.to_dict())


async def delete_model(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``DELETE /modelforge/models/{name}[?version=N]``: 204 deleted; 404 unknown."""
    await app.forge_call("delete", req.name, version(query))
    return 204, b"", ()


async def unload(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``POST /modelforge/models/{name}/unload``: 200 ``{"name", "unloaded"}`` (this worker's engine only)."""
    unloaded = await app.forge_call("unload", req.name, version(query))
    return ok({"name": req.name, "unloaded": unloaded})


async def stats(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``GET /modelforge/models/{name}/stats[?version=N]``: 200 Triton's statistics of this worker's process
    (``ModelForge.statistics``; another worker counts its own); 404 unknown model or version."""
    return ok(await app.forge_call("statistics", req.name, version(query)))


async def metrics(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``GET /metrics``: Prometheus' text exposition of ModelForge's metrics summed over every worker
    (``ServeApp.metrics``)."""
    body, content_type = await app.call("control", app.metrics)
    return 200, body, ((b"content-type", content_type.encode()),)


async def load(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """``POST /modelforge/models/{name}/load[?version=N]``, body empty or ``{"version": N}`` (``load_version``): 200
    ``{"name", "version", "loaded": true}`` (``ModelForge.load``: every process sharing the registry reloads it);
    400 another body."""
    body = await req.body(app.options.max_body_size, "--max-body-size")
    record = await app.forge_call("load", req.name, load_version(body, version(query)))
    return ok({"name": record.name, "version": record.version, "loaded": True})


async def not_found(app: Any, req: Request, query: dict[str, str]) -> Answer:
    """Any other path under ``/modelforge/``: 404 as JSON."""
    raise Refusal(404, f"no ModelForge endpoint at {req.path}")


@dataclass(frozen=True)
class Endpoint:
    """A route: its handler per method (HEAD answers as GET), whether GET needs no token, the query parameters it
    takes (None: any, unchecked), how its errors' bodies are written."""

    methods: dict[str, Handler]
    open: bool = False
    takes: frozenset[str] | None = field(default_factory=frozenset)
    error: Callable[[str], bytes] = error_body  # an error's body: ``{"message"}``, V2's ``{"error"}``

    def handler(self, method: str) -> Handler:
        """The handler of ``method`` (HEAD: GET's); 405 with ``Allow`` when the route has none."""
        found = self.methods.get("GET" if method == "HEAD" else method)
        if found is None:
            allowed = ", ".join(sorted({*self.methods, *(("HEAD",) if "GET" in self.methods else ())}))
            raise Refusal(405, f"{method} is not allowed here; allowed: {allowed}", ((b"allow", allowed.encode()),))
        return found


VERSION = frozenset({"version"})
EXACT = {
    PREFIX + "health": Endpoint({"GET": health}, open=True),
    PREFIX + "health/live": Endpoint({"GET": live}, open=True),
    PREFIX + "health/ready": Endpoint({"GET": ready}, open=True),
    PREFIX + "predict": Endpoint({"POST": predict}),
    PREFIX + "models": Endpoint({"GET": list_models}),
    "/metrics": Endpoint({"GET": metrics}),
}
MODEL = Endpoint({"GET": get_model, "PUT": put_model, "DELETE": delete_model}, takes=VERSION)
UNLOAD = Endpoint({"POST": unload}, takes=VERSION)
STATS = Endpoint({"GET": stats}, takes=VERSION)
LOAD = Endpoint({"POST": load}, takes=VERSION)
ACTIONS = {"unload": UNLOAD, "stats": STATS, "load": LOAD}  # modelforge/models/{name}/<action>
# any query: the path is what is wrong (404)
NOT_FOUND = Endpoint({m: not_found for m in ("GET", "POST", "PUT", "DELETE", "PATCH")}, takes=None)


def route(path: str) -> tuple[Endpoint, str | None]:
    """(the endpoint of ``path``, the model name it holds or None); ``NOT_FOUND`` for any other path."""
    endpoint = EXACT.get(path)
    if endpoint is not None:
        return endpoint, None
    if path.startswith(MODELS):
        name, _, rest = path[len(MODELS):].partition("/")
        if name and not rest and not path.endswith("/"):
            return MODEL, name
        if name and rest in ACTIONS:
            return ACTIONS[rest], name
    return NOT_FOUND, None
