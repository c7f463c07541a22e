"""One exception family for every door: each error carries the HTTP status a handler answers with.

The server extension maps a ``ModelForgeError`` to ``{"message": str(err)}`` with ``err.status``; the magics print
``str(err)`` as one line. Messages name the problem: which model or input, what was expected, what was given.
Names read from a model file (inputs, outputs, tensors) are quoted with ``repr`` (escapes, no raw newline), and
text from ONNX Runtime or other libraries goes through ``first_line``.
"""

from __future__ import annotations

import re


class ModelForgeError(Exception):
    """Base class: a request ModelForge refuses or cannot serve. ``status`` is the HTTP status (4xx/5xx)."""

    status = 400


class ModelNotFoundError(ModelForgeError):
    """No model (or no such version of it) is registered under the name or id given (HTTP 404)."""

    status = 404


class ModelExistsError(ModelForgeError):
    """``register`` was called with a name that is already registered (HTTP 409); use ``update``."""

    status = 409


class InvalidModelError(ModelForgeError):
    """The bytes given are not a loadable ONNX model, or the model uses inputs ModelForge cannot feed (HTTP 400)."""

    status = 400


class ModelNotReadyError(ModelForgeError):
    """A model or version is not ready to serve here yet: it is being loaded and warmed before its registration
    commits (HTTP 400, as Triton answers a model ready request for a model that is not ready)."""

    status = 400


class InvalidInputError(ModelForgeError):
    """Input data does not match the model's declared inputs: name, dtype, shape or content (HTTP 400)."""

    status = 400


class ServiceUnavailableError(ModelForgeError):
    """The registry database cannot be reached (HTTP 503). The prediction cache never raises this: it is bypassed."""

    status = 503


class InferenceError(ModelForgeError):
    """ONNX Runtime rejected input values that passed validation, e.g. an index out of range (HTTP 422)."""

    status = 422


class InferenceTimeoutError(ModelForgeError):
    """A run took longer than its limit (``inference_timeout``, or predict's ``timeout=``) and was stopped: its
    ONNX Runtime run was terminated, nothing was cached (HTTP 504). The message names the model and the limit."""

    status = 504


class RequestCancelledError(ModelForgeError):
    """The caller cancelled the request (an HTTP client closed its connection): its run was stopped, or never
    started (HTTP 499, nginx's "client closed request": only the server's log sees it)."""

    status = 499


class ResourceLimitError(ModelForgeError):
    """A request needs more memory than a configured limit allows (HTTP 413): its answer is larger than
    ``max_output_bytes``, its run needs more than ONNX Runtime's capped arena (``max_arena_bytes``) has left, or its
    run raised the process's memory more than ``max_request_memory_bytes`` and was stopped. The message names the size
    and the limit; nothing is cached."""

    status = 413


class UnsupportedEncodingError(ModelForgeError):
    """A request body came with a ``Content-Encoding`` other than identity, gzip or deflate (HTTP 415)."""

    status = 415


def error_for_status(status: int) -> type[ModelForgeError]:
    """The error class a client raises for an HTTP ``status`` answered by a ModelForge server: the one subclass with
    that status (404 -> ``ModelNotFoundError``, 413 -> ``ResourceLimitError``...), else ``ModelForgeError`` (400 is
    shared by several classes, so it maps to the base). Only this module's classes count: a door's own errors
    (the kernel client's ``ServerUnreachableError``) are not answers a server sends."""
    matches = [
        cls for cls in _subclasses(ModelForgeError) if cls.__module__ == __name__ and cls.__dict__["status"] == status
    ]
    return matches[0] if len(matches) == 1 else ModelForgeError


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


# An ONNX Runtime source location, e.g. ``/onnxruntime_src/onnxruntime/core/graph/model.cc:256 `` or
# ``tensorprotoutils.cc:619 ``, which ORT puts before the function that threw and its message: found by its end
# (``.cc:256 ``), then extended back over the path's characters (linear time, whatever the text).
_SOURCE_LINE = re.compile(r"\.(?:cc|cpp|cxx|c|h|hpp|hxx):\d+\s+")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+-")
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] *: *\d+ *: *\w+ *: *")
_QUOTED_PATH = re.compile(r'"(?:[A-Za-z]:)?[/\\][^"]*"')  # a filesystem path, which ORT puts in double quotes
MAX_LINE = 2000  # characters of a message line kept: a model can put long names in ORT's messages


def first_line(err: BaseException | str) -> str:
    """The first meaningful line of an exception's text, fit for a message or a log line.

    Drops ONNX Runtime's ``[ONNXRuntimeError] : 1 : FAIL :`` prefix, its source locations with the C++ function or
    signature after them (``model.cc:256 onnxruntime::Model::Model(...)``), and double-quoted absolute file paths
    (``"/tmp/x/README.md"`` becomes ``"<path>"``): a message never shows the server's files. Control characters left
    (an escape sequence in a name read from a model file) are written as escapes; at most ``MAX_LINE`` characters
    are kept. The exception's type name when no text is left.
    """
    for line in str(err).strip().splitlines():
        line = line.strip()[:MAX_LINE]
        if (prefix := _ORT_PREFIX.match(line)) is not None:
            line = line[prefix.end():]
        line = _QUOTED_PATH.sub('"<path>"', _strip_source_locations(line)).strip()
        if line:
            return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return type(err).__name__ if isinstance(err, BaseException) else "error"


def _strip_source_locations(line: str) -> str:
    """Remove each ``dir/file.cc:NNN function`` of ORT's (a plain name, or a C++ signature with its parameters)."""
    out, pos = [], 0
    while (found := _SOURCE_LINE.search(line, pos)) is not None:
        start = found.start()
        while start > pos and line[start - 1] in _PATH_CHARS:
            start -= 1
        out.append(line[pos:start])
        pos = _skip_function(line, found.end())
    out.append(line[pos:])
    return "".join(out)


def _skip_function(line: str, pos: int) -> int:
    """The end of the function name or pretty signature that starts at ``pos`` (``__FUNCTION__`` is one
    identifier; ``__PRETTY_FUNCTION__`` has '::' before its '(' and ends at the matching ')', then maybe 'const')."""
    head = re.compile(r"[^\s(]+").match(line, pos)
    if head is None:
        return pos
    paren = line.find("(", pos)
    if paren > 0 and line.rfind(" ", pos, paren) < line.rfind("::", pos, paren):  # "ret ns::f(" / "ns::C::C("
        depth = 0
        for i in range(paren, len(line)):
            depth += 1 if line[i] == "(" else -1 if line[i] == ")" else 0
            if depth == 0:
                end = re.compile(r"(?: const)?\s*").match(line, i + 1)
                return end.end() if end else i + 1
        return len(line)
    if re.fullmatch(r"[A-Za-z_]\w*", head.group()):
        return re.compile(r"\s*").match(line, head.end()).end()
    return pos
