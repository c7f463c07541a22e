"""The ModelForge endpoints: parse the request, call the ``ModelForge`` API in the app's executor, answer JSON.

Routes (relative to the server's base_url): ``GET modelforge/health``, ``GET modelforge/health/live`` and
``GET modelforge/health/ready`` (no token needed), ``POST modelforge/predict``, ``GET modelforge/models``,
``GET|PUT|DELETE modelforge/models/{name}``, ``POST modelforge/models/{name}/unload`` and ``.../load``, ``GET
modelforge/models/{name}/stats`` (Triton's statistics; the Prometheus metrics are on Jupyter's own ``/metrics``,
``core.prometheus``); the Open Inference Protocol's ``modelforge/v2/...`` (``v2_handlers``). HEAD answers as GET
without the body, with the same
authentication. What every endpoint shares (authorization, query parameters, bodies, errors as
JSON) is ``base.ModelForgeHandler``; the predict request's wire format is ``core.protocol``.
"""

from __future__ import annotations

import functools
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.escape import url_escape

from ..core.deadline import Cancellation
from ..core.protocol import load_version, predict_json
from .base import CancellableHandler, ModelForgeHandler
from .v2_handlers import v2_handlers


class HealthHandler(ModelForgeHandler):
    """``{status, database, redis, celery, version, environment, timestamp}``; 503 when unhealthy. No token needed."""

    plane = "health"

    @allow_unauthenticated
    async def get(self) -> None:
        """``GET modelforge/health``: 200 healthy or degraded, 503 unhealthy (``ModelForge.health``'s fields)."""
        health = await self.extensionapp.health()
        self.write_json(health, 503 if health["status"] == "unhealthy" else 200)


class LivenessHandler(ModelForgeHandler):
    """``{"status": "alive"}`` (200) whenever the extension is loaded, misconfigured or not. No token needed."""

    @allow_unauthenticated
    async def get(self) -> None:
        """``GET modelforge/health/live``: 200 ``{"status": "alive"}``, always (no database or Redis call)."""
        self.write_json({"status": "alive"})


class ReadinessHandler(ModelForgeHandler):
    """``{"status": "ready"}`` (200) once the ModelForge is built and its registry database answers; else 503 with
    ``{"message"}`` saying why (a setting it cannot use, the database unreachable, the server stopping). No token."""

    plane = "health"  # a probe: never queued behind predictions or model changes

    @allow_unauthenticated
    async def get(self) -> None:
        """``GET modelforge/health/ready``: 200 ``{"status": "ready"}``, or 503 ``{"message"}`` saying why not."""
        await self.run_blocking(self.extensionapp.check_ready)
        self.write_json({"status": "ready"})


class PredictHandler(CancellableHandler):
    """Run a model on ``{"model_id", "input_data", "use_cache"?, "version"?}``; a batch goes along axis 0.

    A run past ``inference_timeout`` answers 504 (``InferenceTimeoutError``). A client that closes its connection
    cancels its request (``base.CancellableHandler``): the run in progress is stopped; a request still queued for the
    executor never runs the model.
    """

    plane = "data"

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """``POST modelforge/predict``: 200 ``{prediction_id, model_id, model_version, output_data,
        inference_time_ms, cached}`` (``protocol.encode_result``); 400 bad input naming the input, expected and given
        dtype/shape; 404 unknown model; 413 answer over ``max_output_bytes``; 504 past ``inference_timeout``."""
        body, hits = self.body, self.extensionapp.loop_hits()
        answer = await hits.answer_json(body) if hits is not None else None  # a proven cache hit, on the loop
        if not isinstance(answer, bytes):  # a ProvenMiss (the loop's lookup, for the run) or None (the whole predict)
            answer = await self.run_blocking(functools.partial(self._predict, answer or body, self.cancellation))
        self.write_json(answer)

    def _predict(self, body: Any, cancel: Cancellation) -> bytes:
        """Decode, predict and encode in one executor call: a large batch's JSON never blocks the IOLoop either.
        ``body``: the request's bytes, or the ``ProvenMiss`` the loop looked up (``protocol.predict_json``)."""
        return predict_json(self.extensionapp.get_forge(), body, cancel)


class ModelsHandler(ModelForgeHandler):
    """List the latest version of every registered model."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """``GET modelforge/models``: 200, a JSON list of ``ModelRecord.to_dict()``, sorted by name."""
        records = await self.forge_call("models")
        self.write_json([r.to_dict() for r in records])


class ModelHandler(ModelForgeHandler):
    """One model: its metadata (GET), a new version from raw ONNX bytes (PUT), deletion (DELETE)."""

    @property
    def query_params(self) -> frozenset[str]:
        """PUT takes ``quantize`` and ``outputs`` (each once), GET and DELETE ``version``: any other is a 400."""
        return frozenset({"quantize", "outputs"} if self.request.method == "PUT" else {"version"})

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """``GET modelforge/models/{name}[?version=N]``: 200 the record (name or id); 404 unknown; 400 bad version."""
        record = await self.forge_call("get", name, self.query_version())
        self.write_json(record.to_dict())

    @web.authenticated
    @authorized
    async def put(self, name: str) -> None:
        """``PUT modelforge/models/{name}[?quantize=dynamic][&outputs=a,b]`` with raw ONNX bytes: 201 + ``Location``
        registered (version 1), 200 a new version or the same bytes (no new version); 400 invalid model or name, a bad
        ``quantize`` / ``outputs`` value, an unknown output, nothing to quantise or a quantised model off its float one
        (checked on synthetic rows: ``prepare.SYNTHETIC``); 413 body over its limit. The record's ``preparation``
        says what the steps did."""
        quantize, outputs = self.get_query_argument("quantize", None), self.get_query_argument("outputs", None)
        record, changed = await self.forge_call("save", name, self.body, quantize=quantize, outputs=outputs,
                                                sample="synthetic" if quantize is not None else None)
        created = changed and record.version == 1
        if created:  # escaped: a header value with a newline would raise after the model was written
            location = url_path_join(self.base_url, "modelforge", "models", url_escape(record.name, plus=False))
            self.set_header("Location", location)
        self.write_json(record.to_dict(), 201 if created else 200)

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        """``DELETE modelforge/models/{name}[?version=N]``: 204 the model (or one version) deleted; 404 unknown."""
        await self.forge_call("delete", name, self.query_version())
        self.set_status(204)
        self.finish()


class UnloadHandler(ModelForgeHandler):
    """Drop the model's loaded session from this server's engine; the next predict loads it again."""

    query_params = frozenset({"version"})

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """``POST modelforge/models/{name}/unload``: 200 ``{"name", "unloaded": bool}`` (this server's engine only)."""
        unloaded = await self.forge_call("unload", name, self.query_version())
        self.write_json({"name": name, "unloaded": unloaded})


class ModelStatsHandler(ModelForgeHandler):
    """Triton's statistics of one model in this server's process (its own counts; a kernel's are its own)."""

    query_params = frozenset({"version"})

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """``GET modelforge/models/{name}/stats[?version=N]``: 200 ``{"model_stats": [{name, version, last_inference,
        inference_count, execution_count, inference_stats: {success, fail, queue, compute_input, compute_infer,
        compute_output, cache_hit, cache_miss: {count, ns}}, batch_stats}]}`` (``ModelForge.statistics``); 404
        unknown model or version."""
        self.write_json(await self.forge_call("statistics", name, self.query_version()))


class LoadHandler(ModelForgeHandler):
    """Reload the model's session, warmed, in every process sharing the registry (``ModelForge.load``)."""

    query_params = frozenset({"version"})

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """``POST modelforge/models/{name}/load[?version=N]``, body empty or ``{"version": N}``
        (``protocol.load_version``): 200 ``{"name", "version", "loaded": true}``; 404 unknown; 400 another body, a
        failed warm-up run, 503 one refused for memory (the loaded session keeps serving then)."""
        record = await self.forge_call("load", name, load_version(self.body, self.query_version()))
        self.write_json({"name": record.name, "version": record.version, "loaded": True})


class NotFoundHandler(ModelForgeHandler):
    """404 as JSON for any other path under ``modelforge/`` (not the server's HTML page)."""

    def check_query(self) -> None:
        """Any query: the path is what is wrong (404)."""

    def _not_found(self) -> None:
        raise web.HTTPError(404, "%s", f"no ModelForge endpoint at {self.request.path}")

    # one wrapper per verb: @authorized remembers the action of the first method it served
    get = web.authenticated(authorized(_not_found))
    post = web.authenticated(authorized(_not_found))
    put = web.authenticated(authorized(_not_found))
    delete = web.authenticated(authorized(_not_found))
    patch = web.authenticated(authorized(_not_found))


# -- URL to handler mappings (ExtensionApp prepends the server's base_url) ------------------------------------------
_name = r"(?P<name>[^/]+)"
default_handlers = [
    (r"modelforge/health", HealthHandler),
    (r"modelforge/health/live", LivenessHandler),
    (r"modelforge/health/ready", ReadinessHandler),
    (r"modelforge/predict", PredictHandler),
    (r"modelforge/models", ModelsHandler),
    (rf"modelforge/models/{_name}", ModelHandler),
    (rf"modelforge/models/{_name}/unload", UnloadHandler),
    (rf"modelforge/models/{_name}/stats", ModelStatsHandler),
    (rf"modelforge/models/{_name}/load", LoadHandler),
    *v2_handlers,  # the Open Inference Protocol (V2) under modelforge/v2
    (r"modelforge(?:/.*)?", NotFoundHandler),
]
