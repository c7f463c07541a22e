"""Jupyter for the tests: a real ``jupyter server`` subprocess serving ModelForge (``mf_start_server``, the one
launcher of every test that starts one), plain HTTP to it, a kernel under it, and IPython shells with the extension.

A server gets its own Jupyter config/data/runtime dirs (so only the installed ``jupyter_server_config.d`` enables
extensions), a token, a non-default base_url, and exactly the ModelForge settings it is given: the embedded
backend under a temporary directory unless told otherwise.
"""

from __future__ import annotations

import os
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .processes import MfProcess, mf_free_port, mf_launch
from .services import mf_embedded

# Settings a parent process may have exported; a test server gets only those it is given.
MODELFORGE_VARS = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "ENVIRONMENT")
MODELFORGE_PREFIXES = ("JUPYTER", "JPY_", "MODELFORGE_", "CACHE_")
# Extensions a developer install enables (JupyterLab and its companions): not needed to serve ModelForge, and each
# adds start-up time; scripts/check_dashboard.py starts JupyterLab itself.
OTHER_EXTENSIONS = ("jupyterlab", "jupyter_lsp", "notebook_shim", "jupyter_server_terminals")


def mf_isolated_env(root: Path, **settings: str) -> dict[str, str]:
    """``os.environ`` without Jupyter/ModelForge variables, with Jupyter dirs under ``root`` and ``settings`` (env
    names, e.g. ``MODELFORGE_DATA_DIR=...``) added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(MODELFORGE_PREFIXES) and k not in MODELFORGE_VARS}
    for name in ("config", "data", "runtime"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update(JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_DATA_DIR=str(root / "data"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"), CELERY_BROKER_URL="")
    env.update(settings)
    return env


class HttpAnswer(tuple):
    """``(status, body bytes)`` of one request, unpacked as a pair; ``headers``: the response's headers."""

    headers: object

    def __new__(cls, status: int, body: bytes, headers) -> HttpAnswer:
        answer = super().__new__(cls, (status, body))
        answer.headers = headers
        return answer


def mf_http(method: str, url: str, body: bytes | None = None, token: str | None = None,
            **headers: str) -> HttpAnswer:
    """(status, body) of one plain urllib request (``headers`` on the answer); 4xx/5xx are returned, not raised."""
    if token:
        headers["Authorization"] = f"token {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return HttpAnswer(r.status, r.read(), r.headers)
    except urllib.error.HTTPError as err:
        with err:
            return HttpAnswer(err.code, err.read(), err.headers)


@dataclass
class LiveServer(MfProcess):
    """A running ``jupyter server``: ``url`` (base_url included, trailing ``/``), ``token``, its environment."""

    url: str = ""
    token: str = ""
    root: Path = Path()
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["JUPYTER_RUNTIME_DIR"])

    def wait_answers(self, path: str = "modelforge/health", timeout: float = 60.0) -> None:
        """Wait until ``GET <path>`` (with the token) answers 200; ``RuntimeError`` with the server's log if it exits or
        times out (it is stopped then)."""
        self.wait_ready(lambda: mf_http("GET", self.url + path, token=self.token)[0] == 200, timeout, "jupyter server")


def mf_start_server(root: Path, env: dict[str, str], base_url: str = "/mf-test/", args: tuple[str, ...] = (),
                    ready: str | None = "modelforge/health", token: str | None = None,
                    only_modelforge: bool = True) -> LiveServer:
    """Start ``jupyter server`` on a free loopback port, serving ``root``, with ``token`` (default: a random one) and
    ``args`` added; its log in ``root/server.log``. Returns once ``GET <ready>`` answers 200 (``ready`` None: at
    once), stopping it and raising ``RuntimeError`` with its log if it does not. ``only_modelforge``: the developer
    install's other extensions (``OTHER_EXTENSIONS``) disabled."""
    root.mkdir(parents=True, exist_ok=True)
    token, port = token or secrets.token_hex(16), mf_free_port()
    disabled = [f"--ServerApp.jpserver_extensions={name}=False" for name in OTHER_EXTENSIONS] if only_modelforge else []
    cmd = [
        sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
        f"--IdentityProvider.token={token}", f"--ServerApp.base_url={base_url}",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}", *disabled, *args,
    ]
    started = mf_launch(cmd, root / "server.log", env, root)
    server = LiveServer(started.proc, started.log_path, url=f"http://127.0.0.1:{port}{base_url}", token=token,
                        root=root, env=env)
    if ready is not None:
        server.wait_answers(ready)
    return server


@pytest.fixture(scope="session")
def mf_live_server(tmp_path_factory) -> LiveServer:
    """One ``jupyter server`` for the session, embedded backend (SQLite registry + disk cache) in a temp dir.

    Its registry is ``server.root / "modelforge" / "registry.db"`` and its cache ``server.root / "modelforge" /
    "cache"``: a ``ModelForge`` on those (``mf_live_settings``) shares the server's models and cached predictions.
    """
    root = tmp_path_factory.mktemp("live-server")
    server = mf_start_server(root, mf_isolated_env(root, MODELFORGE_DATA_DIR=str(root / "modelforge")))
    yield server
    server.stop()


@pytest.fixture
def mf_live_settings(mf_live_server) -> dict[str, str]:
    """``ModelForge(**...)`` keyword arguments sharing ``mf_live_server``'s registry and prediction cache."""
    return mf_embedded(mf_live_server.root / "modelforge")


def mf_run_in_server_kernel(server: LiveServer, cells: list[str], timeout: float = 90.0) -> list[dict[str, str]]:
    """Start a kernel through ``server``'s REST API (so its ``JPY_PARENT_PID`` is the server), run ``cells`` in it
    over the kernel websocket, shut it down. Returns per cell ``{"stdout", "stderr", "error", "result"}`` (text)."""
    import asyncio
    import json
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    status, body = mf_http("POST", server.url + "api/kernels", b"{}", server.token,
                           **{"Content-Type": "application/json"})
    assert status == 201, body
    kernel_id = json.loads(body)["id"]
    session = uuid.uuid4().hex

    async def run() -> list[dict[str, str]]:
        ws_url = server.url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels?session_id={session}"
        request = HTTPRequest(ws_url, headers={"Authorization": f"token {server.token}"})
        conn = await asyncio.wait_for(websocket_connect(request), timeout)
        try:
            return [await asyncio.wait_for(execute(conn, code), timeout) for code in cells]
        finally:
            conn.close()

    async def execute(conn, code: str) -> dict[str, str]:
        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        out = {"stdout": "", "stderr": "", "error": "", "result": ""}
        while True:
            raw = await conn.read_message()
            assert raw is not None, "the kernel websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind == "execute_result":
                out["result"] = content["data"].get("text/plain", "")
            elif kind == "status" and content["execution_state"] == "idle" and msg["channel"] == "iopub":
                return out

    try:
        return asyncio.run(run())
    finally:
        mf_http("DELETE", server.url + f"api/kernels/{kernel_id}", None, server.token)


# -- IPython shells with the extension loaded --------------------------------------------------------------------------
def mf_make_shell(config=None, **traits):
    """The ``InteractiveShell`` instance with ``modelforge_jupyter`` loaded; ``traits`` set as ``c.ModelForgeMagics``
    on ``config`` (a ``traitlets.config.Config``). No history file. The caller unloads it and clears the instance
    (``mf_shell`` does)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    c = config or Config()
    c.HistoryAccessor.enabled = False  # no sqlite history file per shell
    for trait, value in traits.items():
        c.ModelForgeMagics[trait] = value
    shell = InteractiveShell.instance(config=c)
    shell.run_line_magic("load_ext", "modelforge_jupyter")
    return shell


@pytest.fixture
def mf_shell():
    """``mf_make_shell`` as a fixture: call it (``mf_shell(config, **traits)``) for the shell; after the test the
    extension is unloaded and the instance cleared."""
    from IPython.core.interactiveshell import InteractiveShell

    shells = []

    def make(config=None, **traits):
        shells.append(mf_make_shell(config, **traits))
        return shells[-1]

    yield make
    for shell in shells:
        shell.run_line_magic("unload_ext", "modelforge_jupyter")
    InteractiveShell.clear_instance()


MAGICS_TRAITS = ("database_url", "redis_url", "cache_dir", "cache_key_prefix")  # mf_ip configures them from mf_settings


@pytest.fixture
def mf_ip(mf_settings, monkeypatch, mf_shell):
    """An IPython shell with the extension loaded, its magics configured (``c.ModelForgeMagics``) for the backend
    (``mf_settings``), five iris rows (float64 [5, 4]) as ``X`` in its namespace."""
    from sklearn.datasets import load_iris
    from traitlets.config import Config

    monkeypatch.setenv("CELERY_BROKER_URL", mf_settings["celery_broker_url"])
    c = Config()
    for trait in MAGICS_TRAITS:
        if trait in mf_settings:
            c.ModelForgeMagics[trait] = mf_settings[trait]
    shell = mf_shell(c)
    shell.user_ns["X"] = load_iris().data[:5]
    return shell


def mf_run_cell(shell, src: str):
    """Run a cell in ``shell``; its result. Raises what the cell raised (the magics print refusals, they never raise,
    so any exception fails the test)."""
    result = shell.run_cell(src)
    result.raise_error()
    return result.result
