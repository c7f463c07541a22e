"""HTTP on raw ASGI for ``modelforge serve``: one request's headers, query and body, and its JSON answer.

No web framework: the server (uvicorn with httptools) parses HTTP, and the few things a route needs are read here
straight from the ASGI scope. Errors are JSON ``{"message": ...}``; a refusal that is HTTP's own (403, 404, 405,
400 for the query) is a ``Refusal``, every other one a ``ModelForgeError`` of the core's family.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..core.bodies import BodyReader

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON_TYPE = (b"content-type", b"application/json")
HEADERS_READ = frozenset({b"authorization", b"content-encoding", b"content-length",
                          b"inference-header-content-length"})


class Refusal(Exception):
    """An HTTP-level refusal: its ``status``, the ``message`` of its JSON body and extra ``headers``."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class ClientGone(Exception):
    """The client closed its connection before its request was read whole: there is no one to answer."""


class Request:
    """One request: ``method``, ``path``, the model ``name`` and ``version`` text its path holds (if any) and the
    headers routes read."""

    __slots__ = ("scope", "receive", "method", "path", "name", "version", "headers")

    def __init__(self, scope: dict[str, Any], receive: Receive, name: str | None, version: str | None = None) -> None:
        self.scope, self.receive, self.name, self.version = scope, receive, name, version
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers = {k: v for k, v in scope["headers"] if k in HEADERS_READ}

    def header(self, name: bytes) -> str | None:
        """The request header ``name`` (lower-case bytes) as text, or None when absent."""
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def query(self, takes: frozenset[str]) -> dict[str, str]:
        """The query parameters, each once and each one this endpoint ``takes``; else ``Refusal(400)`` naming it
        (a misspelt ``?versoin=1`` must never read as "no version": a DELETE of every version)."""
        raw = self.scope["query_string"]
        if not raw:
            return {}
        found: dict[str, str] = {}
        for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
            if name not in takes:
                says = f"it takes {', '.join(sorted(takes))}" if takes else "it takes none"
                raise Refusal(400, f"unknown query parameter {name!r} for this endpoint; {says}")
            if name in found:
                raise Refusal(400, f"query parameter {name!r} given more than once; give it once")
            found[name] = value
        return found

    async def body(self, limit: int, setting: str) -> bytes:
        """The request body, decompressed (gzip/deflate), at most ``limit`` bytes (``setting`` names the option).

        Raises ``ResourceLimitError`` (413) before reading a body whose Content-Length is over the limit, or as soon
        as what arrived passes it; ``UnsupportedEncodingError`` (415); ``ModelForgeError`` (400) for bad gzip data;
        ``ClientGone`` when the client leaves first.
        """
        reader = BodyReader(self.header(b"content-encoding"), self.header(b"content-length"), limit, setting)
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                raise ClientGone()
            reader.feed(message.get("body", b""))
            if not message.get("more_body", False):
                return reader.body()


def error_body(message: str) -> bytes:
    """An error's JSON body, ``{"message": ...}``, as the Jupyter extension answers."""
    return orjson.dumps({"message": message})


async def respond(send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = (),
                  head: bool = False) -> None:
    """Send one whole answer: ``body``, JSON unless ``headers`` give a Content-Type (none for a 204, nor for a HEAD
    request, which gets the same headers)."""
    if status == 204:
        start: list[tuple[bytes, bytes]] = [*headers]
        body = b""
    else:
        typed = any(name == b"content-type" for name, _ in headers)
        start = [*(() if typed else (JSON_TYPE,)), (b"content-length", b"%d" % len(body)), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": b"" if head else body})
