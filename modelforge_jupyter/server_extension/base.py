"""``ModelForgeHandler``: what every ModelForge endpoint shares (the endpoints are ``handlers``).

Authentication and authorization through Jupyter (``@authorized`` on every verb, resource ``modelforge``), the query
parameters an endpoint declares (any other is a 400 naming it; Jupyter's ``token``, ``_xsrf`` and
``no_track_activity`` aside), request bodies streamed and ``Content-Encoding: gzip`` or ``deflate`` decompressed as
they arrive (any other encoding: 415; over the endpoint's limit, decompressed: 413 before it is read whole), and every
error as JSON (``error_body``: ``{"message": ...}``; V2's ``{"error": ...}``) with the server's CORS headers, a
``ModelForgeError`` answering with its own ``status``.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from http.client import responses
from typing import Any, TypeVar

import orjson
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..core.deadline import Cancellation
from ..core.errors import ModelForgeError
from .fastpath import DataPlaneMixin

AUTH_RESOURCE = "modelforge"
TOKEN_NEEDED = "authentication required: send the Jupyter server's token as the header 'Authorization: token <token>'"
JUPYTER_QUERY_PARAMS = frozenset({"token", "_xsrf", "no_track_activity"})  # read by jupyter_server itself
# Content-Encoding of a request body -> zlib wbits of its decompressor (tritonclient sends gzip or deflate, i.e. zlib)
BODY_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
INFLATE_STEP = 1 << 20  # bytes decompressed per zlib call: the memory a compressed body may take beyond its own size
T = TypeVar("T")


@web.stream_request_body
class ModelForgeHandler(ExtensionHandlerMixin, APIHandler):
    """Base handler: body size limit, executor calls, JSON answers and JSON errors for every subclass."""

    auth_resource = AUTH_RESOURCE
    query_params: frozenset[str] = frozenset()  # the query parameters this endpoint takes, besides Jupyter's
    plane = "control"  # which of the app's executors runs this handler's calls: "data", "control" or "health"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give every handler with a GET a HEAD: the same call through the same authentication, and tornado sends
        no body for a HEAD request (``RequestHandler.flush``); a GET open without token gives an open HEAD."""
        super().__init_subclass__(**kwargs)
        get = cls.__dict__.get("get")
        if get is None or "head" in cls.__dict__:
            return

        async def head(self: ModelForgeHandler, *args: Any, **kwargs: Any) -> None:
            await self.get(*args, **kwargs)

        # decorated as jupyter_server wants every extension method to be (it checks); get() authorizes the call
        open_get = getattr(get, "__allow_unauthenticated", False)
        cls.head = allow_unauthenticated(head) if open_get else web.authenticated(head)

    async def prepare(self) -> None:
        """Before any body byte is read: 403 without a user (unless the verb is open), the query checked (400),
        the ``Content-Encoding`` (415 unless identity, gzip or deflate) and a declared length over the limit (413)."""
        self._chunks: list[bytes] = []
        self._body_size = 0
        self._inflate: Any = None  # a zlib decompressobj while a compressed body streams in
        self._unread = True  # refused before its body is read: Tornado then closes the connection (write_error says so)
        await super().prepare()
        method = getattr(self, self.request.method.lower(), None)
        if self.current_user is None and not getattr(method, "__allow_unauthenticated", False):
            raise web.HTTPError(403)  # refuse before reading a body that @web.authenticated would refuse after
        if self.request.method != "OPTIONS":  # a CORS preflight is answered whatever the query; its request is not
            self.check_query()
        encoding = self.request.headers.get("Content-Encoding", "identity").strip().lower()
        limit = self.body_limit[0]
        if encoding in BODY_ENCODINGS:
            self._inflate = zlib.decompressobj(BODY_ENCODINGS[encoding])
        elif encoding != "identity":
            raise web.HTTPError(415, "%s", f"Content-Encoding {encoding!r} is not supported; send the body "
                                f"uncompressed, gzip or deflate")
        else:  # a compressed body's Content-Length says nothing of its decompressed size: checked as it streams
            length = self.request.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise web.HTTPError(413, "%s", self._too_large(int(length)))
        if limit > self.serverapp.max_body_size:
            self.request.connection.set_max_body_size(limit)
        self._unread = False

    def check_query(self) -> None:
        """Refuse (400 naming it) a query parameter this endpoint does not take, or one given more than once: a
        misspelt ``?versoin=1`` must never read as "no version" (a DELETE of every version)."""
        for name, values in self.request.query_arguments.items():
            if name in JUPYTER_QUERY_PARAMS:
                continue
            if name not in self.query_params:
                takes = f"it takes {', '.join(sorted(self.query_params))}" if self.query_params else "it takes none"
                raise web.HTTPError(400, "%s", f"unknown query parameter {name!r} for this endpoint; {takes}")
            if len(values) > 1:
                raise web.HTTPError(400, "%s", f"query parameter {name!r} given {len(values)} times; give it once")

    def data_received(self, chunk: bytes) -> None:
        """Take a streamed body chunk, decompressing it as it arrives; past the limit: 413 at once, the rest unread."""
        if self._finished:
            return
        if self._inflate is None:
            self._take(chunk)
            return
        if self._inflate.eof:  # tornado may end the body with an empty chunk
            if chunk:
                self._refuse(400, "request body has data after the end of its compressed stream")
            return
        # Decompressed INFLATE_STEP bytes at a time, and never past limit + 1 bytes in all: however far a small input
        # would expand (a zip bomb), memory holds at most the body limit plus one step.
        data = chunk
        while True:
            step = min(self.body_limit[0] - self._body_size + 1, INFLATE_STEP)
            try:
                out = self._inflate.decompress(data, step)
            except zlib.error as err:
                encoding = self.request.headers["Content-Encoding"].strip().lower()
                self._refuse(400, f"request body is not valid {encoding} data: {err}")
                return
            if not self._take(out):
                return
            data = self._inflate.unconsumed_tail
            if not data and len(out) < step:  # input used up and no output left pending in zlib
                break
        if self._inflate.unused_data:
            self._refuse(400, "request body has data after the end of its compressed stream")

    def _take(self, data: bytes) -> bool:
        """Keep ``data`` of the body; False (413 sent) once the body passes the limit."""
        self._body_size += len(data)
        if self._body_size > self.body_limit[0]:  # chunked or compressed: no Content-Length to check
            decompressed = " decompressed" if self._inflate is not None else ""
            self._refuse(413, self._too_large(self._body_size, "at least ", decompressed))
            return False
        self._chunks.append(data)
        return True

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` while the body streams in, dropping what was read of it."""
        self._chunks.clear()
        self._unread = True
        self.send_error(status, message=message)

    @property
    def body_limit(self) -> tuple[int, str]:
        """(largest body in bytes, decompressed, the setting that says so) for this endpoint."""
        return self.extensionapp.body_limits()[0], "max_body_size"

    def _too_large(self, size: int, qualifier: str = "", decompressed: str = "") -> str:
        limit, setting = self.body_limit
        return (
            f"request body too large: {qualifier}{size} bytes{decompressed}; the limit is {limit} bytes "
            f"(ModelForgeApp.{setting})"
        )

    @property
    def body(self) -> bytes:
        """The request body, as streamed in (decompressed). Raises ``HTTPError(400)`` when a compressed body ended
        before its compressed stream did."""
        if self._inflate is not None and not self._inflate.eof:
            encoding = self.request.headers["Content-Encoding"].strip().lower()
            raise web.HTTPError(400, "%s", f"request body is truncated {encoding} data: its stream does not end")
        return b"".join(self._chunks)

    async def forge_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``ModelForge.<method>(*args, **kwargs)`` in the executor of this handler's ``plane``."""
        return await self.run_blocking(lambda: getattr(self.extensionapp.get_forge(), method)(*args, **kwargs))

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the bounded executor of this handler's ``plane``, so the IOLoop keeps serving meanwhile
        and a plane's queue (long predictions) never delays another's calls (model changes, health)."""
        return await asyncio.get_running_loop().run_in_executor(self.extensionapp.pool(self.plane), fn)

    def write_json(self, data: Any, status: int = 200) -> None:
        """Finish with ``data`` as JSON (bytes already encoded are sent as they are) and ``status``."""
        self.set_status(status)
        self.finish(data if isinstance(data, bytes) else orjson.dumps(data))  # APIHandler: application/json

    def query_version(self) -> int | None:
        """The optional ``?version=N``: absent is None (latest, or every version for DELETE); present, it must be a
        whole number >= 1 (``version_from_text``: 400 otherwise, an empty ``?version=`` included)."""
        from ..core.api import version_from_text  # not at import: ``jupyter server extension list`` imports this module

        values = self.get_query_arguments("version", strip=False)
        return version_from_text(values[-1]) if values else None

    # -- errors: JSON, whatever raised them ------------------------------------------------------------------------
    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """Answer an exception with its status: a ``ModelForgeError``'s own (``errors``), else ``status_code``."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ModelForgeError):
            status_code = exc.status
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer ``{"message": ...}``: the ModelForgeError's text, the HTTPError's message, or the status' name."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_cors_headers()  # send_error's clear() dropped those prepare() set: a browser could not read this
        if getattr(self, "_unread", False):  # Tornado drops a connection whose request body was not read: say so,
            self.set_header("Connection", "close")  # so that a keep-alive client opens a new one for its next call
        if "message" in kwargs:
            message = kwargs["message"]
        elif isinstance(exc, ModelForgeError):
            message = str(exc)
        elif status_code == 403 and getattr(self, "_jupyter_current_user", None) is None:
            message = TOKEN_NEEDED
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args
        elif status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
            message = f"{self.request.method} is not allowed here; allowed: {', '.join(self.allowed_methods())}"
        elif status_code >= 500:
            message = "internal server error; the Jupyter server log has the details"
        else:
            message = responses.get(status_code, "error")
        self.finish(self.error_body(message))

    def error_body(self, message: str) -> bytes:
        """The JSON body of an error answer: ``{"message": message}`` (a protocol with its own shape overrides it)."""
        return orjson.dumps({"message": message})

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """A refused request (``ModelForgeError``) is one warning line without traceback; anything else is logged
        as the server's fault, with its traceback."""
        if not isinstance(value, ModelForgeError):
            return super().log_exception(typ, value, tb)
        self.log.warning("%d %s %s: %s", value.status, self.request.method, self.request.path, value)

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The HTTP methods this endpoint implements, OPTIONS aside: a 405 answer lists them in ``Allow``."""
        unimplemented = web.RequestHandler._unimplemented_method
        return [m for m in cls.SUPPORTED_METHODS if getattr(cls, m.lower()) is not unimplemented and m != "OPTIONS"]


class CancellableHandler(DataPlaneMixin, ModelForgeHandler):
    """A data-plane endpoint that runs a model: the lean path through Jupyter (``fastpath``), the predict body limit,
    and the request's ``Cancellation``, which a client closing its connection triggers (its run is stopped, or a
    queued one never starts: 499)."""

    @property
    def body_limit(self) -> tuple[int, str]:
        """``max_predict_body_size`` (JSON decodes to up to ~32x its size in objects), never over ``max_body_size``."""
        body, predict = self.extensionapp.body_limits()
        return (predict, "max_predict_body_size") if predict < body else (body, "max_body_size")

    async def prepare(self) -> None:
        """Make the request's ``Cancellation`` first (the client may leave at any point), then the base's checks."""
        self.cancellation = Cancellation()
        await super().prepare()

    def on_connection_close(self) -> None:
        """The client left: stop its run (``RunOptions.terminate``) or keep a queued one from starting (499)."""
        super().on_connection_close()
        cancellation = getattr(self, "cancellation", None)
        if cancellation is not None:
            cancellation.cancel()
