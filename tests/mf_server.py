"""A real ``jupyter server`` subprocess serving ModelForge, for the HTTP tests and the notebooks (``mf_notebooks``).

The server gets its own Jupyter config/data/runtime dirs (so only the installed ``jupyter_server_config.d`` enables
extensions), a random token, a non-default base_url, and exactly the ModelForge settings it is given: the embedded
backend under a temporary directory unless told otherwise. Fixtures are prefixed ``mf_``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelforge_jupyter.cli.demo import stop_server

# Settings a parent process may have exported; a test server gets only those it is given.
MODELFORGE_VARS = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "ENVIRONMENT")
MODELFORGE_PREFIXES = ("JUPYTER", "JPY_", "MODELFORGE_", "CACHE_")
# Extensions a developer install enables (JupyterLab and its companions): not needed to serve ModelForge, and each
# adds start-up time; scripts/check_dashboard.py starts JupyterLab itself.
OTHER_EXTENSIONS = ("jupyterlab", "jupyter_lsp", "notebook_shim", "jupyter_server_terminals")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(root: Path, **settings: str) -> dict[str, str]:
    """``os.environ`` without Jupyter/ModelForge variables, with Jupyter dirs under ``root`` and ``settings`` (env
    names, e.g. ``MODELFORGE_DATA_DIR=...``) added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(MODELFORGE_PREFIXES) and k not in MODELFORGE_VARS}
    for name in ("config", "data", "runtime"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update(JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_DATA_DIR=str(root / "data"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"), CELERY_BROKER_URL="")
    env.update(settings)
    return env


def http(method: str, url: str, body: bytes | None = None, token: str | None = None,
         **headers: str) -> tuple[int, bytes]:
    """(status, body) of one plain urllib request; 4xx/5xx are returned, not raised."""
    if token:
        headers["Authorization"] = f"token {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


@dataclass
class LiveServer:
    """A running ``jupyter server``: ``url`` (base_url included, trailing ``/``), ``token``, its environment."""

    url: str
    token: str
    proc: subprocess.Popen
    root: Path
    env: dict[str, str] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["JUPYTER_RUNTIME_DIR"])

    @property
    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until ``GET modelforge/health`` answers 200; fail with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with {self.proc.returncode}:\n{self.log}")
            try:
                if http("GET", self.url + "modelforge/health")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter server not ready after {timeout:.0f} s:\n{self.log}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (the server stops its extensions and kernels), SIGKILL after 20 s."""
        stop_server(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_server(root: Path, env: dict[str, str], base_url: str = "/mf-test/", args: tuple[str, ...] = (),
                 wait: bool = True) -> LiveServer:
    """Start ``jupyter server`` on a free loopback port with a random token (its log in ``root/server.log``)."""
    root.mkdir(parents=True, exist_ok=True)
    token, port = secrets.token_hex(16), free_port()
    disabled = [f"--ServerApp.jpserver_extensions={name}=False" for name in OTHER_EXTENSIONS]
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
            f"--IdentityProvider.token={token}", f"--ServerApp.base_url={base_url}",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}", *disabled, *args,
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )
    log.close()
    server = LiveServer(f"http://127.0.0.1:{port}{base_url}", token, proc, root, env)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
    return server


@pytest.fixture(scope="session")
def mf_live_server(tmp_path_factory) -> LiveServer:
    """One ``jupyter server`` for the session, embedded backend (SQLite registry + disk cache) in a temp dir.

    Its registry is ``server.root / "modelforge" / "registry.db"`` and its cache ``server.root / "modelforge" /
    "cache"``: a ``ModelForge`` on those (``mf_live_settings``) shares the server's models and cached predictions.
    """
    root = tmp_path_factory.mktemp("live-server")
    server = start_server(root, isolated_env(root, MODELFORGE_DATA_DIR=str(root / "modelforge")))
    yield server
    server.stop()


@pytest.fixture
def mf_live_settings(mf_live_server) -> dict[str, str]:
    """``ModelForge(**...)`` keyword arguments sharing ``mf_live_server``'s registry and prediction cache."""
    data = mf_live_server.root / "modelforge"
    return {"database_url": f"sqlite:///{data / 'registry.db'}", "redis_url": "", "cache_dir": str(data / "cache"),
            "celery_broker_url": ""}


def run_in_server_kernel(server: LiveServer, cells: list[str], timeout: float = 90.0) -> list[dict[str, str]]:
    """Start a kernel through ``server``'s REST API (so its ``JPY_PARENT_PID`` is the server), run ``cells`` in it
    over the kernel websocket, shut it down. Returns per cell ``{"stdout", "stderr", "error", "result"}`` (text)."""
    import asyncio
    import json
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    status, body = http("POST", server.url + "api/kernels", b"{}", server.token, **{"Content-Type": "application/json"})
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
        http("DELETE", server.url + f"api/kernels/{kernel_id}", None, server.token)
