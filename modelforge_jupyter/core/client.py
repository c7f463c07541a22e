"""Reach ModelForge over HTTP: find the Jupyter server (the one a kernel runs under, by default), then call
``<base_url>modelforge/``. Core, so that every door may use it: the kernel's ``%mf_bench --http`` and the CLI's
``python -m modelforge_jupyter.cli.bench --http`` (``modelforge_jupyter.kernel.client`` re-exports it).

``connect()`` finds the server with no configuration, first match wins:

1. the URL (and token) given, else ``%config ModelForgeMagics.server_url`` / ``server_token`` when the magics are
   loaded in this IPython;
2. the environment: ``MODELFORGE_URL`` and ``MODELFORGE_TOKEN``;
3. the running Jupyter server (``jupyter_server.serverapp.list_running_servers()``) whose pid is this kernel's
   ``JPY_PARENT_PID``: the server that started the kernel, with its own URL (base_url included) and token.

A client keeps one keep-alive ``http.client`` connection (not thread-safe: one client per thread), sends the token as
``Authorization: token <token>`` and encodes its requests with the wire format (``protocol``: orjson, numpy arrays as
nested lists). An error answer raises
the ``ModelForgeError`` of its status (404 ``ModelNotFoundError``...) with the server's message. ``infer`` speaks the
Open Inference Protocol (KServe V2) with binary tensors (``v2_client``), NumPy in and out, when the server has it
(``has_v2``).
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .errors import ModelForgeError, error_for_status
from .protocol import decode_result, dumps, encode_predict  # noqa: F401  (dumps: the JSON of a request)
from .records import PredictionResult

if TYPE_CHECKING:
    import numpy as np

ENV_URL, ENV_TOKEN = "MODELFORGE_URL", "MODELFORGE_TOKEN"
V2_HEADER = "Inference-Header-Content-Length"
RETRIED = (http.client.RemoteDisconnected, http.client.CannotSendRequest, ConnectionResetError, BrokenPipeError)


class ServerNotFoundError(ModelForgeError):
    """No Jupyter server to send requests to: none configured, and the kernel's parent is not a running server."""

    status = 503


class ServerUnreachableError(ModelForgeError):
    """The Jupyter server did not answer: connection refused or reset, or no answer within the timeout."""

    status = 503


@dataclass(frozen=True)
class ServerInfo:
    """Where a Jupyter server answers: ``url`` with its base_url and a trailing ``/``, its token, how it was found."""

    url: str
    token: str
    source: str

    def __repr__(self) -> str:  # never show the token
        return f"ServerInfo(url={self.url!r}, token={'***' if self.token else ''!r}, source={self.source!r})"


def _normalize(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerNotFoundError(f"not an http(s) URL of a Jupyter server: {url!r}")
    return url.strip().rstrip("/") + "/"


def _configured() -> tuple[str | None, str | None]:
    """``(server_url, server_token)`` of the ``ModelForgeMagics`` loaded in the running IPython, if any."""
    if "IPython" not in sys.modules:
        return None, None
    from IPython import get_ipython

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("ModelForgeMagics") if shell is not None else None
    if magics is None:
        return None, None
    return getattr(magics, "server_url", None), getattr(magics, "server_token", None)


def find_server(url: str | None = None, token: str | None = None) -> ServerInfo:
    """Find the Jupyter server to call: ``url``/``token`` or the magics' traits, env, then the kernel's parent server.

    A token not given comes from where the URL came from (``MODELFORGE_TOKEN`` for a configured URL).
    Raises ``ServerNotFoundError`` (one line saying what to set) when none is found.
    """
    if url is None:
        url, configured_token = _configured()
        token = token if token is not None else configured_token
    if url:
        return ServerInfo(_normalize(url), token if token is not None else os.environ.get(ENV_TOKEN, ""), "config")
    if os.environ.get(ENV_URL):
        env_token = token if token is not None else os.environ.get(ENV_TOKEN, "")
        return ServerInfo(_normalize(os.environ[ENV_URL]), env_token, f"env {ENV_URL}")
    parent = os.environ.get("JPY_PARENT_PID", "")
    if parent.isdigit():
        from jupyter_server.serverapp import list_running_servers

        for info in list_running_servers():
            if info.get("pid") == int(parent):
                found_token = token if token is not None else info.get("token", "")
                return ServerInfo(_normalize(info["url"]), found_token, f"the Jupyter server of this kernel (pid {parent})")
    why = (f"this kernel's parent (JPY_PARENT_PID={parent}) is not a running Jupyter server" if parent
           else "this process is not a kernel started by a Jupyter server (no JPY_PARENT_PID)")
    raise ServerNotFoundError(
        f"no Jupyter server found: {why}; give its URL and token (%config ModelForgeMagics.server_url / "
        f"server_token, or --http URL --token T) or set env {ENV_URL} and {ENV_TOKEN}"
    )


def connect(url: str | None = None, token: str | None = None, timeout: float = 60.0) -> ModelForgeClient:
    """A ``ModelForgeClient`` of the server ``find_server(url, token)`` finds. Raises ``ServerNotFoundError``.

    Example (in a notebook running under ``jupyter lab``: nothing to configure)::

        server = connect()
        server.predict("iris", X[:2])        # PredictionResult, computed by the server
    """
    return ModelForgeClient(find_server(url, token), timeout=timeout)


class ModelForgeClient:
    """Call ``<url>modelforge/...`` over one keep-alive connection; one client per thread. Close it when done."""

    def __init__(self, server: ServerInfo | str, token: str = "", timeout: float = 60.0) -> None:
        self.server = server if isinstance(server, ServerInfo) else ServerInfo(_normalize(server), token, "given")
        parts = urllib.parse.urlsplit(self.server.url)
        self.url = self.server.url
        self._host, self._port, self._https = parts.hostname, parts.port, parts.scheme == "https"
        self._base = parts.path.rstrip("/") + "/modelforge/"
        self._headers = {"Authorization": f"token {self.server.token}"} if self.server.token else {}
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._v2: bool | None = None

    def __repr__(self) -> str:
        return f"<ModelForgeClient {self.url}modelforge/ ({self.server.source})>"

    # -- transport -------------------------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        """(status, body bytes) of ``method <base_url>modelforge/<path>``; a dropped keep-alive is retried once.

        Raises ``ServerUnreachableError`` when the server cannot be reached or does not answer in ``timeout`` s.
        """
        status, _, data = self.exchange(method, path, body, content_type)
        return status, data

    def exchange(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                 headers: dict[str, str] | None = None, *, server_path: bool = False) -> tuple[int, Any, bytes]:
        """(status, response headers (``http.client.HTTPMessage``), body bytes) of ``method
        <base_url>modelforge/<path>`` (``server_path``: ``<base_url><path>``, a route of the server's own) with
        extra request ``headers``; as ``request`` otherwise."""
        headers = {**self._headers, **(headers or {})}
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            try:
                base = self._base[:-len("modelforge/")] if server_path else self._base
                conn.request(method, base + path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.headers, response.read()
            except RETRIED as err:
                self.close()
                if not reused or attempt == 2:
                    raise self._unreachable(err) from err
            except OSError as err:
                self.close()
                raise self._unreachable(err) from err
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def _unreachable(self, err: BaseException) -> ServerUnreachableError:
        return ServerUnreachableError(f"cannot reach the Jupyter server at {self.url}: {err or type(err).__name__}")

    def call(self, method: str, path: str, body: bytes | None = None,
             content_type: str = "application/json") -> Any:
        """The decoded JSON answer (None for 204); an error status raises its ``ModelForgeError``."""
        status, data = self.request(method, path, body, content_type)
        if status >= 400:
            raise self._error(status, data, method, path)
        return orjson.loads(data) if data else None

    def _error(self, status: int, data: bytes, method: str, path: str) -> ModelForgeError:
        try:
            answer = orjson.loads(data)
            message = answer["message"] if "message" in answer else answer["error"]  # V2's routes: {"error"}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = data[:200].decode(errors="replace") or http.client.responses.get(status, "error")
        err = error_for_status(status)(f"{message} (HTTP {status}, {method} {self.url}modelforge/{path})")
        err.status = status
        return err

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> ModelForgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------------------------------------
    def health(self) -> dict[str, str]:
        """``GET modelforge/health``: ``{status, database, redis, celery, version, environment, timestamp}``."""
        return self.call("GET", "health")

    def models(self) -> list[dict[str, Any]]:
        """``GET modelforge/models``: the latest version of every model, as ``ModelRecord.to_dict()``."""
        return self.call("GET", "models")

    def model(self, name: str, version: int | None = None) -> dict[str, Any]:
        """``GET modelforge/models/{name}``: one record (latest version unless ``version``)."""
        query = f"?version={version}" if version is not None else ""
        return self.call("GET", f"models/{urllib.parse.quote(name, safe='')}{query}")

    def save(self, name: str, model: str | os.PathLike | bytes) -> dict[str, Any]:
        """``PUT modelforge/models/{name}`` with the raw ONNX bytes: register, or add a version when they changed."""
        data = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else Path(model).read_bytes()
        return self.call("PUT", f"models/{urllib.parse.quote(name, safe='')}", data, "application/octet-stream")

    def delete(self, name: str, version: int | None = None) -> None:
        """``DELETE modelforge/models/{name}`` (every version, or only ``version``)."""
        query = f"?version={version}" if version is not None else ""
        self.call("DELETE", f"models/{urllib.parse.quote(name, safe='')}{query}")

    def predict_body(self, model: str, input_data: Any, *, use_cache: bool = True,
                     version: int | None = None) -> bytes:
        """The JSON body of ``POST modelforge/predict`` (``protocol.encode_predict``)."""
        return encode_predict(model, input_data, use_cache=use_cache, version=version)

    def post_predict(self, body: bytes) -> dict[str, Any]:
        """``POST modelforge/predict`` with an encoded body (``predict_body``); the decoded answer."""
        return self.call("POST", "predict", body)

    def predict(self, model: str, input_data: Any, *, use_cache: bool = True,
                version: int | None = None) -> PredictionResult:
        """Run ``model`` on the server, as ``ModelForge.predict`` does in the kernel; returns the ``PredictionResult``.

        ``input_data``: ``{input name: nested list | numpy array}`` or the bare value of a single-input model.
        ``inference_time_ms`` is the server's own time; the HTTP round trip is not in it.
        """
        answer = self.post_predict(self.predict_body(model, input_data, use_cache=use_cache, version=version))
        return decode_result(answer, model)

    def metrics_text(self) -> str:
        """``GET <base_url>metrics``: the server's Prometheus text exposition (ModelForge's ``modelforge_*`` families
        beside the server's own; ``modelforge serve``'s summed over its workers). Raises ``ModelForgeError`` for an
        error status (403 with ``ServerApp.authenticate_prometheus`` and a wrong token), ``ServerUnreachableError``."""
        status, _, data = self.exchange("GET", "metrics", server_path=True)
        if status >= 400:
            why = ": it needs the server's token (ServerApp.authenticate_prometheus)" if status in (401, 403) else ""
            err = error_for_status(status)(f"GET {self.url}metrics answered HTTP {status}{why}")
            err.status = status
            raise err
        return data.decode()

    # -- the Open Inference Protocol (KServe V2), binary tensors -------------------------------------------------
    def v2_metadata(self) -> dict[str, Any] | None:
        """``GET modelforge/v2``: ``{"name", "version", "extensions"}``, or None when the server has no V2 routes
        (an older ModelForge answers 404). Raises ``ModelForgeError`` for another error status (403...)."""
        status, data = self.request("GET", "v2")
        if status == 404:
            return None
        if status >= 400:
            raise self._error(status, data, "GET", "v2")
        return orjson.loads(data)

    @property
    def has_v2(self) -> bool:
        """Whether the server answers ``GET modelforge/v2`` with the binary tensor extension (asked once, then
        remembered by this client)."""
        if self._v2 is None:
            meta = self.v2_metadata()
            self._v2 = meta is not None and "binary_tensor_data" in meta.get("extensions", ())
        return self._v2

    def infer_body(self, inputs: dict[str, Any], *, outputs: list[str] | None = None,
                   use_cache: bool = True) -> tuple[bytes, int]:
        """(body, JSON header length) of a V2 infer with binary inputs and outputs (``v2_client.encode_infer``)."""
        from .v2_client import encode_infer

        return encode_infer(inputs, outputs=outputs, use_cache=use_cache)

    def post_infer(self, model: str, body: bytes, header_length: int, version: int | None = None) -> Any:
        """``POST modelforge/v2/models/{model}[/versions/{version}]/infer`` with an encoded body (``infer_body``):
        the decoded ``v2_client.V2Answer``. An error status raises its ``ModelForgeError`` with the server's
        message (400 naming the input, expected and given datatype or shape; 404 unknown model or version)."""
        from .v2_client import decode_infer

        path = f"v2/models/{urllib.parse.quote(model, safe='')}"
        path += f"/versions/{version}/infer" if version is not None else "/infer"
        status, headers, data = self.exchange("POST", path, body, "application/octet-stream",
                                              {V2_HEADER: str(header_length)})
        if status >= 400:
            raise self._error(status, data, "POST", path)
        length = headers.get(V2_HEADER)
        return decode_infer(data, int(length) if length is not None else None)

    def infer(self, model: str, inputs: dict[str, Any], version: int | None = None, outputs: list[str] | None = None,
              *, use_cache: bool = True) -> dict[str, np.ndarray]:
        """Run ``model`` on the server through V2 with binary tensors: ``{output name: np.ndarray}``.

        ``inputs``: ``{input name: array}``, each of the model's exact dtype and shape (V2 converts nothing: a float64
        array for a float32 input is refused, 400). ``outputs``: the names to return (None: every output).
        A ZipMap output comes back as float32 ``[N, C]``, the probabilities in label order (``post_infer``'s
        ``labels`` has the labels); a string output as an object array of ``str``. The prediction cache is the one
        ``predict`` uses (same entries). Raises ``ModelForgeError`` (400, 404, 403...), ``ServerUnreachableError``.
        """
        body, length = self.infer_body(inputs, outputs=outputs, use_cache=use_cache)
        return self.post_infer(model, body, length, version).outputs
