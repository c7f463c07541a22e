"""The Open Inference Protocol (KServe V2) endpoints, with Triton's binary tensor extension, under
``{base_url}modelforge/``: ``tritonclient.http.InferenceServerClient(url="host:port{base_url}modelforge")`` works
against the Jupyter server unchanged (its token in ``headers={"Authorization": "token ..."}``).

Routes: ``GET v2/health/live`` and ``GET v2/health/ready`` (no token needed, as ModelForge's own health), ``GET v2``,
``GET v2/models/{name}[/versions/{v}]``, ``GET .../ready``, ``POST .../infer``, ``GET
v2/models[/{name}[/versions/{v}]]/stats``; Triton's model repository extension: ``POST v2/repository/index``, ``POST
v2/repository/models/{name}/load`` and ``.../unload``. What each answers is ``core.v2``; authentication, body limits
and streaming, and executors are ``base.ModelForgeHandler``'s. Errors answer Triton's status codes (400 invalid
request, 404 unknown model or version, 503 unavailable, 500 internal; 413/415/504 as the rest of ModelForge) with
V2's body ``{"error": "<message>"}``.
"""

from __future__ import annotations

import functools

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from tornado import web

from ..core.deadline import Cancellation
from .base import CancellableHandler, ModelForgeHandler

BINARY_HEADER = "Inference-Header-Content-Length"


class V2Handler(ModelForgeHandler):
    """Base of the V2 endpoints: errors as ``{"error": message}``, V2's shape, instead of ``{"message"}``."""

    def error_body(self, message: str) -> bytes:
        """``{"error": message}`` (``core.v2.error_body``)."""
        from ..core.v2 import error_body  # not at import: ``jupyter server extension list`` imports this module

        return error_body(message)

    def write_v2(self, body: bytes, header_length: int | None = None) -> None:
        """Finish with an answer ``core.v2`` encoded: plain JSON (``application/json``), or with binary outputs
        (``header_length`` the JSON's bytes) ``application/octet-stream`` and ``Inference-Header-Content-Length``."""
        if header_length is None:
            self.finish(body)
            return
        self.set_header(BINARY_HEADER, str(header_length))
        self.finish(body, set_content_type="application/octet-stream")


class V2LiveHandler(V2Handler):
    """``GET v2/health/live``: 200 ``{"live": true}`` whenever the extension is loaded. No token needed."""

    @allow_unauthenticated
    async def get(self) -> None:
        """200 ``{"live": true}``, always (no database or Redis call)."""
        self.write_json({"live": True})


class V2ReadyHandler(V2Handler):
    """``GET v2/health/ready``: 200 ``{"ready": true}`` once the registry answers; else 503 ``{"error"}`` saying why
    (as ``modelforge/health/ready``). No token needed."""

    plane = "health"

    @allow_unauthenticated
    async def get(self) -> None:
        """200 ``{"ready": true}``, or 503 ``{"error"}`` naming what is not ready."""
        await self.run_blocking(self.extensionapp.check_ready)
        self.write_json({"ready": True})


class V2ServerHandler(V2Handler):
    """``GET v2``: the server metadata ``{"name": "modelforge", "version", "extensions"}``."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """200 ``core.v2.server_metadata()``."""
        from ..core.v2 import server_metadata

        self.write_json(server_metadata())


class V2ModelHandler(V2Handler):
    """``GET v2/models/{name}[/versions/{v}]``: the model metadata (``core.v2.model_metadata``)."""

    @web.authenticated
    @authorized
    async def get(self, name: str, version: str | None = None) -> None:
        """200 ``{name, versions, platform, inputs, outputs}``; 404 unknown model or version; 400 a bad ``{v}``."""
        from ..core.v2 import model_metadata

        self.write_json(await self.run_blocking(lambda: model_metadata(self.extensionapp.get_forge(), name, version)))


class V2ModelReadyHandler(V2Handler):
    """``GET v2/models/{name}[/versions/{v}]/ready``: 200 ``{"name", "ready": true}`` for a registered model."""

    @web.authenticated
    @authorized
    async def get(self, name: str, version: str | None = None) -> None:
        """200 ``{"name", "ready": true}``; 404 unknown model or version; 400 a bad ``{v}``."""
        from ..core.v2 import model_ready

        self.write_json(await self.run_blocking(lambda: model_ready(self.extensionapp.get_forge(), name, version)))


class V2StatsHandler(V2Handler):
    """``GET v2/models[/{name}[/versions/{v}]]/stats``: Triton's statistics extension (``core.v2.model_statistics``),
    this server's process's counts."""

    @web.authenticated
    @authorized
    async def get(self, name: str | None = None, version: str | None = None) -> None:
        """200 ``{"model_stats": [...]}``; 404 unknown model or version; 400 a bad ``{v}``."""
        from ..core.v2 import model_statistics

        self.write_json(await self.run_blocking(lambda: model_statistics(self.extensionapp.get_forge(), name, version)))


class V2InferHandler(V2Handler, CancellableHandler):
    """``POST v2/models/{name}[/versions/{v}]/infer``: JSON, or JSON plus binary tensors (Triton's extension).

    On the data plane with ``POST modelforge/predict``'s body limit (``max_predict_body_size``) and cancellation: a
    client that closes its connection stops its run, or keeps a queued one from starting.
    """

    plane = "data"

    @web.authenticated
    @authorized
    async def post(self, name: str, version: str | None = None) -> None:
        """200 the outputs (``core.v2.infer``); 400 invalid request naming the input, expected and given datatype or
        shape; 404 unknown model or version; 413 body over its limit; 504 past ``inference_timeout``."""
        body, header_length, hits = self.body, self.request.headers.get(BINARY_HEADER), self.extensionapp.loop_hits()
        answer = await hits.answer_v2(name, version, body, header_length) if hits is not None else None
        if answer is None:  # not a cache hit proven on the loop (``core.loop_hits``): the executor answers it
            call = functools.partial(self._infer, name, version, body, header_length, self.cancellation)
            answer = await self.run_blocking(call)
        self.write_v2(*answer)

    def _infer(self, name: str, version: str | None, body: bytes, header_length: str | None,
               cancel: Cancellation) -> tuple[bytes, int | None]:
        """Decode, predict and encode in one executor call: a large batch never blocks the IOLoop."""
        from ..core.v2 import infer

        return infer(self.extensionapp.get_forge(), name, version, body, header_length, cancel)


class V2RepositoryIndexHandler(V2Handler):
    """``POST v2/repository/index``: the registered models and their state (``core.v2.repository_index``)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """200 ``[{"name", "version", "state"}]``; 400 a body other than ``{}`` / ``{"ready": bool}``."""
        from ..core.v2 import repository_index

        body = self.body
        self.write_json(await self.run_blocking(lambda: repository_index(self.extensionapp.get_forge(), body)))


class V2RepositoryModelHandler(V2Handler):
    """``POST v2/repository/models/{name}/load`` (every process sharing the registry reloads it, warmed) and
    ``.../unload`` (this server's session dropped): ``core.v2.repository_load`` / ``repository_unload``."""

    @web.authenticated
    @authorized
    async def post(self, name: str, action: str) -> None:
        """200 ``{}``; 404 unknown model; 400 a failed warm-up run or a body with parameters; 503 a warm-up refused
        for lack of memory."""
        from ..core import v2

        call = v2.repository_load if action == "load" else v2.repository_unload
        body = self.body
        self.write_json(await self.run_blocking(lambda: call(self.extensionapp.get_forge(), name, body)))


class V2NotFoundHandler(V2Handler):
    """404 ``{"error"}`` for any other path under ``modelforge/v2/`` (Triton's ``config`` and other extensions not
    served), so that a V2 client reads the reason rather than failing on ``{"message"}``."""

    def check_query(self) -> None:
        """Any query: the path is what is wrong (404)."""

    def _not_found(self) -> None:
        raise web.HTTPError(404, "%s", f"no Open Inference Protocol endpoint at {self.request.path}; this server "
                            f"has health, server and model metadata, model ready, infer, stats and the model repository")

    # one wrapper per verb: @authorized remembers the action of the first method it served
    get = web.authenticated(authorized(_not_found))
    post = web.authenticated(authorized(_not_found))


# -- URL to handler mappings (before handlers.NotFoundHandler's catch-all) ------------------------------------------
_model = r"modelforge/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
v2_handlers = [
    (r"modelforge/v2/health/live", V2LiveHandler),
    (r"modelforge/v2/health/ready", V2ReadyHandler),
    (r"modelforge/v2", V2ServerHandler),
    (r"modelforge/v2/models/stats", V2StatsHandler),  # before _model: "stats" is no model's name here (Triton's rule)
    (_model, V2ModelHandler),
    (rf"{_model}/ready", V2ModelReadyHandler),
    (rf"{_model}/infer", V2InferHandler),
    (rf"{_model}/stats", V2StatsHandler),
    (r"modelforge/v2/repository/index", V2RepositoryIndexHandler),
    (r"modelforge/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)", V2RepositoryModelHandler),
    (r"modelforge/v2/.*", V2NotFoundHandler),
]
