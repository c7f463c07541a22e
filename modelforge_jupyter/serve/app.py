"""``ServeApp``: the ASGI application each ``modelforge serve`` worker runs (uvicorn, httptools, uvloop).

One per worker process, built there (``create_app``, uvicorn's factory), after the worker started: its
``ModelForge`` (database pool, cache client, sessions) and its thread pools never cross a process boundary. Every
ModelForge call runs on a thread (``call``): predictions on the data plane (``--threads``), model list/get/put/
delete/unload on the control plane (``--control-threads``), health on a thread of its own, so the event loop only
parses HTTP and a long prediction never delays a model change or a probe.

Authentication: every route but the health GETs (ModelForge's three, V2's live and ready) needs ``Authorization:
token <token>`` (or ``Bearer``); without it, or with another token, the answer is 403 ``{"message": ...}`` (V2's
``{"error": ...}``), as the Jupyter server extension's.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.errors import ModelForgeError, ServiceUnavailableError
from ..core.forge_holder import ForgeHolder
from ..core.pools import ThreadPool
from ..core.settings import Settings, mask_url
from .http import ClientGone, Receive, Refusal, Request, Send, respond
from .options import ServeOptions
from .routes import route
from .v2_routes import route_v2

if TYPE_CHECKING:
    from ..core.api import ModelForge

log = logging.getLogger("modelforge_jupyter.serve")
T = TypeVar("T")
TOKEN_NEEDED = "authentication required: send the server's token as the header 'Authorization: token <token>'"
SCHEMES = (b"token", b"bearer")


class StartupError(Exception):
    """A worker cannot start: a setting ModelForge cannot use. uvicorn stops every worker with this message."""


class ServeApp:
    """ModelForge's HTTP routes as a raw ASGI 3 application (``http`` and ``lifespan`` scopes)."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.token = None if options.token is None else options.token.encode()
        self.holder = ForgeHolder("ModelForge is stopped: the server is shutting down")
        self.pools: dict[str, ThreadPool] = {}
        self._health: asyncio.Future | None = None
        self.metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set by ``modelforge serve`` (``server.run``)
        self.metric_files: Any = None  # this worker's ``prometheus.MultiProcessFiles``, once started

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    # -- one request -------------------------------------------------------------------------------------------------
    async def http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Authenticate, route, check the query, run the handler; answer JSON (or V2's binary), errors as
        ``{"message"}`` (V2's routes: ``{"error"}``)."""
        path = scope["path"]
        endpoint, name, version = route_v2(path) or (*route(path), None)
        req = Request(scope, receive, name, version)
        method = req.method
        extra: tuple[tuple[bytes, bytes], ...] = ()
        try:
            if not (endpoint.open and method in ("GET", "HEAD")) and not self.authorized(req):
                raise Refusal(403, TOKEN_NEEDED)
            handler = endpoint.handler(method)
            query = req.query(endpoint.takes) if endpoint.takes is not None else {}
            status, body, extra = await handler(self, req, query)
        except ClientGone:
            return
        except Refusal as refusal:
            status, body, extra = refusal.status, endpoint.error(refusal.message), refusal.headers
        except ModelForgeError as err:
            status, body = err.status, endpoint.error(str(err))
            if status == 413:  # the rest of the body may still be on its way: do not keep reading it
                extra = ((b"connection", b"close"),)
            log.log(logging.WARNING if status >= 500 else logging.INFO, "%d %s %s: %s", status, method, req.path, err)
        except Exception:
            log.exception("%s %s failed", method, req.path)
            status, body = 500, endpoint.error("internal server error; the server log has the details")
        await respond(send, status, body, extra, head=method == "HEAD")

    def authorized(self, req: Request) -> bool:
        """``Authorization: token <token>`` (or ``Bearer <token>``) with this server's token; always with --no-auth."""
        if self.token is None:
            return True
        header = req.headers.get(b"authorization")
        if not header:
            return False
        scheme, _, value = header.partition(b" ")
        return scheme.lower() in SCHEMES and hmac.compare_digest(value.strip(), self.token)

    # -- ModelForge calls, off the event loop ----------------------------------------------------------------------
    async def call(self, plane: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread of ``plane`` ("data", "control" or "health"); 503 once the worker stops."""
        pool = self.pools.get(plane)
        if pool is None or self.holder.stopped:
            raise ServiceUnavailableError("ModelForge is stopped: the server is shutting down")
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def forge_call(self, method: str, *args: Any) -> Any:
        """``ModelForge.<method>(*args)`` on the control plane."""
        return await self.call("control", lambda: getattr(self.get_forge(), method)(*args))

    def predict_json(self, body: Any, cancel: Any) -> bytes:
        """Decode, predict and encode on one data-plane thread (``protocol.predict_json``: ``body`` the request's
        bytes, or the ``ProvenMiss`` the loop looked up)."""
        from ..core.protocol import predict_json

        return predict_json(self.get_forge(), body, cancel)

    async def health(self) -> dict[str, str]:
        """``ModelForge.health()`` on the health thread; concurrent callers share the check in flight."""
        check = self._health
        if check is None or check.done():
            check = self._health = asyncio.ensure_future(self.call("health", lambda: self.get_forge().health()))
        return await asyncio.shield(check)

    def check_ready(self) -> None:
        """Raise ``ServiceUnavailableError`` (503) unless the ModelForge is built and its registry answers."""
        if not self.get_forge().registry.ping():
            raise ServiceUnavailableError("model registry database unavailable: it does not answer a query")

    @property
    def forge(self) -> ModelForge | None:
        """The worker's ``ModelForge`` once built (None before, and after shutdown)."""
        return self.holder.forge

    def get_forge(self) -> ModelForge:
        """The worker's ``ModelForge``, built on first use (``ForgeHolder.get``). Blocking: call it on a thread.
        Raises ``ServiceUnavailableError`` (503) while the registry is unreachable or once the worker stops."""
        return self.holder.get()

    # -- start and stop ----------------------------------------------------------------------------------------------
    async def lifespan(self, receive: Receive, send: Send) -> None:
        """ASGI lifespan of one worker: build its ModelForge at startup (after the fork), close it at shutdown."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except StartupError as err:
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Build the thread pools and the ModelForge (its registry may still be down: 503 until it answers).
        Raises ``StartupError`` for a setting ModelForge cannot use."""
        o = self.options
        if self.metrics_dir and os.path.isdir(self.metrics_dir):
            from ..core.prometheus import MultiProcessFiles

            self.metric_files = MultiProcessFiles(self.metrics_dir)
            self.metric_files.start()
        self.pools = {"data": ThreadPool(o.threads, "modelforge"),
                      "control": ThreadPool(o.control_threads, "modelforge-control"),
                      "health": ThreadPool(1, "modelforge-health")}
        try:
            self.holder.settings = Settings()
            forge = await self.call("control", self.get_forge)
        except ValueError as err:
            raise StartupError(f"ModelForge is misconfigured: {mask_url(str(err))}") from None
        except ServiceUnavailableError as err:
            if self.holder.config_error is not None:  # a setting ModelForge cannot use: refuse to start
                raise StartupError(self.holder.config_error) from None
            log.error("ModelForge: %s; its endpoints answer 503 until the registry is reachable", err)
            return
        self.pools["health"].submit(forge.health)  # the first Celery probe and the broker client, not on a request

    async def shutdown(self) -> None:
        """Refuse new calls, wait for running ones at most ``--shutdown-timeout`` s, then close the ModelForge.
        uvicorn has already waited for the requests in flight; the pools' threads are daemons, so a call stuck in a
        socket cannot keep the process alive."""
        self.holder.stopped = True
        pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + self.options.shutdown_timeout
        for pool in pools:
            await asyncio.to_thread(pool.shutdown, timeout=max(0.0, deadline - time.monotonic()))
        await self.holder.close(max(1.0, deadline - time.monotonic()))
        if self.metric_files is not None:
            self.metric_files.close()

    def metrics(self) -> tuple[bytes, str]:
        """(the Prometheus text exposition of every worker's metrics, its content type): this worker's written now,
        the others' as of their last write (at most a second old). Blocking: call it on a thread."""
        from ..core.prometheus import exposition

        if self.metric_files is None:  # not started by ``modelforge serve``: this process alone
            return exposition()
        self.metric_files.write()
        return exposition(self.metrics_dir)


def create_app() -> ServeApp:
    """uvicorn's factory, called in each worker: the app of the options ``modelforge serve`` exported."""
    options = ServeOptions.from_environment()
    core = logging.getLogger("modelforge_jupyter")
    if not core.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:  [%(process)d] %(name)s: %(message)s"))
        core.addHandler(handler)
    core.setLevel(options.log_level.upper())
    return ServeApp(options)
