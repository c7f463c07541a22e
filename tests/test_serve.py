"""``modelforge serve`` end to end: real worker processes on one port, plain HTTP, a ``ModelForge`` in this process on
the same registry and cache (both backends), answers compared with raw onnxruntime."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.errors import ModelNotFoundError
from modelforge_jupyter.core.settings import ENV_VARS

from .mf_plugin import (
    FOREVER, REFERENCE_THREADS, SAMPLES, mf_clear_registry, mf_free_port, mf_http, mf_launch, mf_raw_run, mf_spin_input, mf_spin_model,
    mf_stop_process, mf_zipmap,
)

TOKEN = "serve-token-0123456789"
TOKEN_NEEDED = "authentication required: send the server's token as the header 'Authorization: token <token>'"
IRIS, IRIS_V2, FOREST = SAMPLES / "iris.onnx", SAMPLES / "iris_v2.onnx", SAMPLES / "breast_cancer_rf.onnx"
SETTINGS_ENV = ENV_VARS  # setting -> its environment variable (the core's settings table)


def http(method: str, url: str, body: bytes | None = None, token: str | None = TOKEN,
         **headers: str) -> tuple[int, Any, bytes]:
    """(status, headers, body) of one request on a new connection (the plugin's ``mf_http``); 4xx/5xx are returned,
    not raised."""
    answer = mf_http(method, url, body, token, **headers)
    return answer[0], answer.headers, answer[1]


@dataclass
class Serve:
    """A running ``modelforge serve``: its supervisor process (its own process group), URL and log."""

    proc: subprocess.Popen
    url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        """Pids of the supervisor's worker processes (its children but multiprocessing's resource tracker)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2:].split()[1]) == self.proc.pid and b"resource_tracker" not in cmdline:
                    found.append(int(entry))
        return found

    def stop(self) -> None:
        """SIGTERM the supervisor's process group, SIGKILL after 20 s (the plugin's ``mf_stop_process``)."""
        mf_stop_process(self.proc, 20.0, group=True)


def serve_env(settings: dict, **extra: str) -> dict[str, str]:
    """This environment without ModelForge variables, with ``settings`` (``mf_settings``' keys) as theirs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODELFORGE_", "CACHE_", "JUPYTER")) and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({SETTINGS_ENV[k]: str(v) for k, v in settings.items()}, CELERY_BROKER_URL="")
    return env | extra


def start_serve(tmp_path: Path, settings: dict, *args: str, workers: int = 2, token: str | None = TOKEN,
                env: dict[str, str] | None = None, wait: bool = True) -> Serve:
    """``modelforge serve`` (``python -m modelforge_jupyter.cli.main serve``) on a free port of 127.0.0.1."""
    port = mf_free_port()
    cmd = [sys.executable, "-m", "modelforge_jupyter.cli.main", "serve", "--port", str(port), "--workers",
           str(workers), *(["--token", token] if token else []), *args]
    log_path = tmp_path / f"serve-{port}.log"
    proc = mf_launch(cmd, log_path, env=env if env is not None else serve_env(settings), group=True).proc
    server = Serve(proc, f"http://127.0.0.1:{port}/modelforge/", log_path)
    deadline = time.monotonic() + 90
    while wait:
        assert proc.poll() is None, server.log
        try:
            if http("GET", server.url + "health/ready", token=None)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    return server


@pytest.fixture(scope="module")
def serve2_module(mf_module_settings, tmp_path_factory):
    """``modelforge serve --workers 2`` on ``mf_module_settings``: started once per backend for this module."""
    server = start_serve(tmp_path_factory.mktemp("serve2"), mf_module_settings)
    yield server
    server.stop()


@pytest.fixture
def serve2(serve2_module, mf_module_forge):
    """``serve2_module`` on an empty registry (the models an earlier test left deleted, so are their answers)."""
    mf_clear_registry(mf_module_forge)
    return serve2_module


@pytest.fixture
def mf_forge(mf_module_forge):
    """This module's ``ModelForge`` on ``serve2``'s registry and cache."""
    return mf_module_forge


def predict(url: str, model: str, x: np.ndarray, **fields) -> tuple[int, dict]:
    body = json.dumps({"model_id": model, "input_data": x.tolist(), **fields}).encode()
    status, _, answer = http("POST", url + "predict", body)
    return status, json.loads(answer)


def test_two_workers_serve_the_notebooks_registry_with_no_stale_answer(serve2, mf_forge):
    url = serve2.url
    # Given two worker processes on one port, and a model registered through the Python API in this process
    assert len(serve2.workers()) == 2, serve2.log
    mf_forge.register("iris", IRIS)
    x = load_iris().data[:5].astype(np.float32)
    want = mf_zipmap(mf_raw_run(IRIS, {"float_input": x})[1])

    # When predictions come over HTTP, each on a new connection (spread over the workers): raw onnxruntime's answer
    for _ in range(12):
        status, answer = predict(url, "iris", x)
        assert status == 200, answer
        assert answer["model_version"] == 1 and answer["output_data"]["output_probability"] == want
    assert predict(url, "iris", x)[1]["cached"] is True

    # When the model is updated in this process: no worker answers from version 1 any more (cache or session)
    mf_forge.update("iris", IRIS_V2)
    want_v2 = mf_zipmap(mf_raw_run(IRIS_V2, {"float_input": x})[1])
    assert want_v2 != want
    for _ in range(12):
        status, answer = predict(url, "iris", x)
        assert (status, answer["model_version"]) == (200, 2)
        assert answer["output_data"]["output_probability"] == want_v2

    # PUT over HTTP: a new name is 201 with its Location, a new version of a known one 200; seen in this process
    status, headers, body = http("PUT", url + "models/forest", FOREST.read_bytes())
    assert (status, headers["Location"], json.loads(body)["version"]) == (201, "/modelforge/models/forest", 1)
    status, _, body = http("PUT", url + "models/iris", IRIS.read_bytes())
    assert (status, json.loads(body)["version"]) == (200, 3)
    assert mf_forge.get("iris").version == 3
    rows = np.random.default_rng(0).uniform(0, 5, (3, 30)).astype(np.float32)
    status, answer = predict(url, "forest", rows, use_cache=False)
    assert status == 200
    label, probabilities = mf_raw_run(FOREST, {"float_input": rows})
    assert answer["output_data"] == {"label": label.tolist(), "probabilities": probabilities.tolist()}

    # GET, list, unload; a misspelt query parameter is refused naming it, and deletes nothing
    assert json.loads(http("GET", url + "models/iris?version=2")[2])["version"] == 2
    assert {m["name"] for m in json.loads(http("GET", url + "models")[2])} == {"iris", "forest"}
    status, _, body = http("POST", url + "models/iris/unload")
    assert status == 200 and json.loads(body)["name"] == "iris" and json.loads(body)["unloaded"] in (True, False)
    status, _, body = http("DELETE", url + "models/iris?versoin=1")
    assert (status, json.loads(body)) == (400, {"message": "unknown query parameter 'versoin' for this endpoint; "
                                                            "it takes version"})
    assert mf_forge.get("iris", version=1).version == 1

    # DELETE over HTTP: one version, then the model; this process sees it, and no worker serves it any more
    assert http("DELETE", url + "models/iris?version=1")[0] == 204
    with pytest.raises(ModelNotFoundError):
        mf_forge.get("iris", version=1)
    assert http("DELETE", url + "models/iris")[0] == 204
    for _ in range(6):
        status, answer = predict(url, "iris", x)
        assert status == 404 and "iris" in answer["message"]


def test_the_token_is_required_everywhere_but_health(serve2, mf_forge):
    url = serve2.url
    mf_forge.register("iris", IRIS)
    body = json.dumps({"model_id": "iris", "input_data": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    calls = [("POST", "predict", body), ("GET", "models", None), ("GET", "models/iris", None),
             ("PUT", "models/iris", IRIS_V2.read_bytes()), ("DELETE", "models/iris", None),
             ("POST", "models/iris/unload", None), ("GET", "nowhere", None), ("POST", "health", None)]
    for method, path, data in calls:
        for token in (None, "wrong-token"):
            status, _, answer = http(method, url + path, data, token=token)
            assert (status, json.loads(answer)) == (403, {"message": TOKEN_NEEDED}), (method, path, token)
        status, _, answer = http(method, url + path, data, token=None, Authorization=f"Basic {TOKEN}")
        assert status == 403, (method, path)
    assert mf_forge.get("iris").version == 1  # nothing changed
    # the health endpoints answer without a token, for a load balancer
    status, _, answer = http("GET", url + "health", token=None)
    assert status == 200 and json.loads(answer)["database"] == "connected"
    assert http("GET", url + "health/live", token=None)[:3:2] == (200, b'{"status":"alive"}')
    assert http("GET", url + "health/ready", token=None)[:3:2] == (200, b'{"status":"ready"}')
    # Bearer is taken as token is (as Jupyter does); HEAD answers as GET without a body
    assert http("GET", url + "models", token=None, Authorization=f"Bearer {TOKEN}")[0] == 200
    status, headers, answer = http("HEAD", url + "models/iris")
    assert (status, answer) == (200, b"") and int(headers["Content-Length"]) > 0
    assert http("PATCH", url + "models/iris")[0] == 405


def embedded(tmp_path: Path) -> dict[str, str]:
    """``mf_settings`` of the embedded backend under ``tmp_path``, for tests where the backend makes no difference."""
    return {"database_url": f"sqlite:///{tmp_path / 'registry.db'}", "redis_url": "",
            "cache_dir": str(tmp_path / "cache"), "celery_broker_url": "", **REFERENCE_THREADS}


def test_sigterm_lets_the_request_in_flight_finish_then_every_process_exits(tmp_path):
    settings = embedded(tmp_path)
    with ModelForge(**settings) as forge:
        forge.register("spin", mf_spin_model())
        forge.predict("spin", mf_spin_input(3), use_cache=False)
        start = time.perf_counter()
        forge.predict("spin", mf_spin_input(2000), use_cache=False)
        trips = int(2000 * 2.0 / (time.perf_counter() - start))  # ~2 s of work in one run
    server = start_serve(tmp_path, settings)
    try:
        workers = server.workers()
        assert len(workers) == 2
        x = mf_spin_input(trips)
        answers: list = []
        slow = threading.Thread(target=lambda: answers.append((predict(server.url, "spin", x), time.monotonic())))
        # Given a slow request in flight
        slow.start()
        time.sleep(0.7)
        # When the process group gets SIGTERM (as a container runtime or the README test sends it)
        stopped_at = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)
        slow.join(30)
        # Then the request finished with its answer, after the signal
        ((status, answer), answered_at) = answers[0]
        assert status == 200, answer
        assert answered_at > stopped_at  # answered after the signal (its run takes ~2 s; it was 0.7 s in)
        (want,) = mf_raw_run(mf_spin_model().SerializeToString(), {"x": x})
        np.testing.assert_allclose(answer["output_data"]["y"], want, rtol=1e-5, atol=1e-6)
        # and the supervisor and its workers exit within a few seconds of it
        server.proc.wait(timeout=10)
        assert time.monotonic() - answered_at < 5, server.log
        assert server.proc.returncode == 0, server.log
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        with pytest.raises(OSError):
            http("GET", server.url + "health/live", token=None)
    finally:
        server.stop()


def test_client_leaving_stops_its_run_and_a_run_past_the_timeout_is_504(tmp_path):
    settings = embedded(tmp_path)
    with ModelForge(**settings) as forge:
        forge.register("spin", mf_spin_model())
    env = serve_env(settings, MODELFORGE_INFERENCE_TIMEOUT="60")
    server = start_serve(tmp_path, settings, workers=1, env=env)
    try:
        worker = server.proc.pid  # one worker: the process itself, no supervisor
        body = json.dumps({"model_id": "spin", "input_data": mf_spin_input(FOREVER).tolist()}).encode()
        port = int(server.url.split(":")[2].split("/")[0])
        # Given a request that would run for hours, When its client closes the connection
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"POST /modelforge/predict HTTP/1.1\r\nHost: x\r\nAuthorization: token " + TOKEN.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(1.0)
            assert cpu_seconds(worker, 2.0) > 0.3  # it runs (0.15 of a core at least over 2 s: a 2-core box at load 10)
        # Then its run stops: the worker spends no more CPU on it
        time.sleep(0.5)
        assert cpu_seconds(worker, 1.0) < 0.1, server.log  # idle: a few ms a second
    finally:
        server.stop()
    env = serve_env(settings, MODELFORGE_INFERENCE_TIMEOUT="0.5")
    server = start_serve(tmp_path, settings, workers=1, env=env)
    try:
        status, answer = predict(server.url, "spin", mf_spin_input(FOREVER))
        assert status == 504 and "'spin' did not finish within 500 ms" in answer["message"]
    finally:
        server.stop()


def cpu_seconds(pid: int, over: float) -> float:
    """CPU seconds process ``pid`` spent during the next ``over`` seconds."""
    def used() -> float:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = used()
    time.sleep(over)
    return used() - before


def test_bodies_limited_before_they_are_read_and_compressed_ones_decoded(tmp_path):
    settings = embedded(tmp_path)
    with ModelForge(**settings) as forge:
        forge.register("iris", IRIS)
    server = start_serve(tmp_path, settings, "--max-predict-body-size", "2000", workers=1)
    url = server.url
    try:
        x = [[5.1, 3.5, 1.4, 0.2]]
        body = json.dumps({"model_id": "iris", "input_data": x}).encode()
        want = mf_raw_run(IRIS, {"float_input": np.array(x, np.float32)})[0].tolist()
        for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
            status, _, answer = http("POST", url + "predict", data, **{"Content-Encoding": encoding})
            assert (status, json.loads(answer)["output_data"]["output_label"]) == (200, want), answer
        big = json.dumps({"model_id": "iris", "input_data": x * 200}).encode()
        status, _, answer = http("POST", url + "predict", big)
        assert (status, json.loads(answer)) == (413, {"message": f"request body too large: {len(big)} bytes; the "
                                                                 "limit is 2000 bytes (--max-predict-body-size)"})
        status, _, answer = http("POST", url + "predict", gzip.compress(big), **{"Content-Encoding": "gzip"})
        assert status == 413 and "decompressed" in json.loads(answer)["message"]
        status, _, answer = http("POST", url + "predict", b"not gzip", **{"Content-Encoding": "gzip"})
        assert status == 400 and "not valid gzip data" in json.loads(answer)["message"]
        status, _, answer = http("POST", url + "predict", body, **{"Content-Encoding": "br"})
        assert (status, json.loads(answer)["message"]) == (415, "Content-Encoding 'br' is not supported; send the "
                                                                "body uncompressed, gzip or deflate")
        status, _, answer = http("POST", url + "predict", b"{")
        assert status == 400 and json.loads(answer)["message"].startswith("malformed JSON body")
    finally:
        server.stop()


def test_no_token_refuses_to_start_unless_no_auth(tmp_path):
    settings = embedded(tmp_path)
    env = serve_env(settings)
    cmd = [sys.executable, "-m", "modelforge_jupyter.cli.main", "serve", "--port", str(mf_free_port())]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no token: give --token TOKEN or set $MODELFORGE_TOKEN" in done.stderr
    assert "--no-auth" in done.stderr
    done = subprocess.run([*cmd, "--token", "  "], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no token" in done.stderr
    # a setting of the environment that cannot be read stops it before any worker starts, naming it
    bad = serve_env(settings, MODELFORGE_MAX_SESSIONS="many", MODELFORGE_TOKEN=TOKEN)
    done = subprocess.run(cmd, env=bad, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "MODELFORGE_MAX_SESSIONS" in done.stderr, done.stderr
    # MODELFORGE_TOKEN is the token's default; --no-auth serves without one
    server = start_serve(tmp_path, settings, token=None, workers=1,
                         env=serve_env(settings, MODELFORGE_TOKEN=TOKEN))
    try:
        assert http("GET", server.url + "models")[0] == 200
        assert http("GET", server.url + "models", token=None)[0] == 403
    finally:
        server.stop()
    server = start_serve(tmp_path, settings, "--no-auth", token=None, workers=1)
    try:
        assert http("GET", server.url + "models", token=None)[:3:2] == (200, b"[]")
    finally:
        server.stop()


def test_the_modelforge_command_routes_to_each_door():
    run = [sys.executable, "-m", "modelforge_jupyter.cli.main"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage: modelforge {serve,demo,bench}" in done.stderr
    for command, says in (("serve", "--workers"), ("demo", "--no-server"), ("bench", "--batch-sizes")):
        done = subprocess.run([*run, command, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and says in done.stdout, done.stderr
