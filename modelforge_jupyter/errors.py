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
    ``max_output_bytes``, or its run needs more than ONNX Runtime's capped arena (``max_arena_bytes``) has left. The
    message names the size and the limit; nothing is cached."""

    status = 413


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
# ``tensorprotoutils.cc:619 ``, which ORT puts before the function that threw and its message.
_SOURCE_LOCATION = re.compile(r"(?:[\w.+-]*/)*[\w.+-]+\.(?:cc|cpp|cxx|c|h|hpp|hxx):\d+\s+")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_QUOTED_PATH = re.compile(r'"(?:[A-Za-z]:)?[/\\][^"]*"')  # a filesystem path, which ORT puts in double quotes


def first_line(err: BaseException | str) -> str:
    """The first meaningful line of an exception's text, fit for a message or a log line.

    Drops ONNX Runtime's ``[ONNXRuntimeError] : 1 : FAIL :`` prefix, its source locations with the C++ function or
    signature after them (``model.cc:256 onnxruntime::Model::Model(...)``), and double-quoted absolute file paths
    (``"/tmp/x/README.md"`` becomes ``"<path>"``): a message never shows the server's files. Control characters left
    (an escape sequence in a name read from a model file) are written as escapes. The exception's type name when no
    text is left.
    """
    text = str(err)
    for line in text.strip().splitlines():
        line = _ORT_PREFIX.sub("", line.strip())
        line = _strip_source_locations(line)
        line = _QUOTED_PATH.sub('"<path>"', line).strip()
        if line:
            return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return type(err).__name__ if isinstance(err, BaseException) else "error"


def _strip_source_locations(line: str) -> str:
    """Remove each ``file.cc:NNN function`` of ORT's (a plain name, or a full C++ signature with its parameters)."""
    while (found := _SOURCE_LOCATION.search(line)) is not None:
        rest = line[found.end():]
        head = re.match(r"[^\s(]+", rest)
        if head is None:
            line = line[: found.start()] + rest
            continue
        paren = rest.find("(")
        # a pretty signature: "void ns::f(...) const" or "ns::C::C(...)": '::' before its first '('
        if paren > 0 and "::" in rest[:paren] and " " not in rest[:paren].split("::")[-1]:
            depth, end = 0, len(rest)
            for i in range(paren, len(rest)):
                depth += {"(": 1, ")": -1}.get(rest[i], 0)
                if depth == 0:
                    end = i + 1
                    break
            rest = re.sub(r"^\s*const\b", "", rest[end:])
        elif re.fullmatch(r"[A-Za-z_]\w*", head.group()):  # __FUNCTION__: one identifier
            rest = rest[head.end():]
        line = line[: found.start()] + rest.lstrip()
    return line
