"""End to end: a real ``jupyter server`` process enabled by the installed config alone, driven with plain HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from .mf_plugin import SAMPLES, mf_http, mf_isolated_env, mf_raw_run, mf_start_server

TOKEN = "e2e-token-0123456789"
BASE_URL = "/mf-e2e/"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def mf_jupyter_env(tmp_path) -> dict[str, str]:
    """The environment of an isolated Jupyter: its own config/data/runtime dirs and HOME; no ModelForge variables."""
    (tmp_path / "home").mkdir()
    return mf_isolated_env(tmp_path, HOME=str(tmp_path / "home"),
                           MODELFORGE_DATA_DIR=str(tmp_path / "modelforge"))  # the embedded backend in tmp_path


@pytest.fixture
def mf_jupyter_server(tmp_path, mf_jupyter_env):
    """``jupyter server`` on a free port of 127.0.0.1 with a token and a non-default base_url; yields its URL."""
    cli = (f"--ModelForgeApp.cache_dir={tmp_path / 'cli-cache'}",)
    server = mf_start_server(tmp_path, mf_jupyter_env, BASE_URL, cli, ready="api/status", token=TOKEN)
    yield server.url
    server.stop()


def http(method: str, url: str, body: bytes | None = None, token: str | None = TOKEN, **headers: str):
    """(status, headers, body bytes) of ``mf_http`` with this file's token by default."""
    answer = mf_http(method, url, body, token, **headers)
    return answer[0], answer.headers, answer[1]


def test_installed_server_serves_modelforge_under_its_base_url(mf_jupyter_server, tmp_path):
    url = mf_jupyter_server + "modelforge/"
    model = SAMPLES / "breast_cancer_rf.onnx"
    X = load_breast_cancer().data[:5].astype(np.float32)

    # health: no token needed
    code, headers, body = http("GET", url + "health", token=None)
    health = json.loads(body)
    assert (code, headers["Content-Type"]) == (200, "application/json")
    assert (health["status"], health["database"], health["redis"]) == ("healthy", "connected", "not_configured")

    # upload: 201 then 200; the CLI trait (cache_dir) and the environment (MODELFORGE_DATA_DIR) both took effect
    code, _, body = http("PUT", url + "models/breast_cancer_rf", model.read_bytes(),
                         **{"Content-Type": "application/octet-stream"})
    assert (code, json.loads(body)["version"]) == (201, 1)
    assert http("PUT", url + "models/breast_cancer_rf", model.read_bytes())[0] == 200
    assert (tmp_path / "modelforge" / "registry.db").is_file()

    # predict with plain HTTP equals raw onnxruntime; the second request is a cache hit in the CLI's cache_dir
    request = json.dumps({"model_id": "breast_cancer_rf", "input_data": {"float_input": X.tolist()}}).encode()
    code, headers, body = http("POST", url + "predict", request, **{"Content-Type": "application/json"})
    result = json.loads(body)
    assert (code, headers["Content-Type"]) == (200, "application/json")
    assert (result["model_version"], result["cached"]) == (1, False)
    for got, want in zip(result["output_data"].values(), mf_raw_run(model, {"float_input": X})):
        np.testing.assert_array_equal(np.asarray(got, dtype=want.dtype), want)
    assert json.loads(http("POST", url + "predict", request)[2])["cached"] is True
    assert any((tmp_path / "cli-cache").iterdir())

    # no token: 403 JSON asking for it, never data; the route without the base_url does not exist
    code, _, body = http("POST", url + "predict", request, token=None)
    assert code == 403 and "token" in json.loads(body)["message"] and "output_data" not in body.decode()
    assert http("GET", url.replace(BASE_URL, "/") + "health", token=None)[0] == 404

    log = (tmp_path / "server.log").read_text()
    assert "modelforge_jupyter | extension was successfully loaded." in log
    assert "registered model 'breast_cancer_rf' v1" in log  # the core's INFO log reaches the server's log


def test_extension_list_shows_modelforge_enabled_and_ok(mf_jupyter_env):
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        env=mf_jupyter_env, capture_output=True, text=True, timeout=60, check=True,
    )
    text = ANSI.sub("", out.stdout + out.stderr)

    assert re.search(r"^\s*modelforge_jupyter enabled$", text, re.M), text
    assert re.search(r"^\s*modelforge_jupyter \S+ OK$", text, re.M), text


def test_extension_points_load_without_onnxruntime_or_sqlalchemy():
    code = (
        "import sys, modelforge_jupyter as m\n"
        "point, = m._jupyter_server_extension_points()\n"
        "assert point['module'] == 'modelforge_jupyter.server_extension'\n"
        "assert point['app']().name == 'modelforge_jupyter'\n"
        "print(sorted(x for x in ('onnxruntime', 'sqlalchemy', 'redis', 'celery', 'numpy') if x in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)

    assert out.stdout.strip() == "[]"


def test_installed_json_enables_the_extension_under_its_name():
    root = Path(__file__).resolve().parent.parent
    config = json.loads((root / "jupyter-config" / "jupyter_server_config.d" / "modelforge_jupyter.json").read_text())

    assert config == {"ServerApp": {"jpserver_extensions": {"modelforge_jupyter": True}}}
    installed = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "modelforge_jupyter.json"
    assert json.loads(installed.read_text()) == config  # pip install put it in the environment


def test_a_bad_database_url_is_logged_masked_and_answered_503_while_live(tmp_path):
    # Given a server whose DATABASE_URL names a driver that is not installed, with a password in it
    env = mf_isolated_env(tmp_path, DATABASE_URL="postgresql+psycopg2://modelforge:s3cret-pw@127.0.0.1:5432/mf",
                          MODELFORGE_DATA_DIR=str(tmp_path / "modelforge"))
    # the extension loads: liveness answers 200 (the server is started once it does) although ModelForge cannot be built
    server = mf_start_server(tmp_path / "server", env, ready="modelforge/health/live")
    try:
        # Then every endpoint answers 503 JSON naming the setting, its password masked, and so does the log
        expected = ("ModelForge is misconfigured: DATABASE_URL 'postgresql+psycopg2://modelforge:***@127.0.0.1:5432/mf'"
                    " is not a database URL SQLAlchemy can use: No module named 'psycopg2'")
        for path, token in [("health", None), ("health/ready", None), ("models", server.token)]:
            code, body = mf_http("GET", server.url + "modelforge/" + path, token=token)
            assert (code, json.loads(body)) == (503, {"message": expected}), path
        log = server.log
        assert f"{expected}; its endpoints answer 503 until the server is restarted with it fixed" in log
        assert "s3cret" not in log and "extension failed loading" not in log
    finally:
        server.stop()


SECRET_CASES = {  # name: (settings in the environment, the secret, the 503 message or None: the server is healthy)
    "query password, valid": ({"DATABASE_URL": "{pg}?password=QSECRET1",
                               "REDIS_URL": "redis://127.0.0.1:6379/0?password=QSECRET2"}, "QSECRET", None),
    "query password, no driver": ({"DATABASE_URL": "postgresql+psycopg2://u@127.0.0.1/db?password=QSECRET1"},
                                  "QSECRET", "DATABASE_URL 'postgresql+psycopg2://u@127.0.0.1/db?password=***' is "
                                  "not a database URL SQLAlchemy can use: No module named 'psycopg2'"),
    "@ in a password": ({"DATABASE_URL": "postgresql+psycopg://u:pa@ss:PSECRET4@127.0.0.1:99999/db"}, "SECRET4",
                        "DATABASE_URL 'postgresql+psycopg://***@127.0.0.1:99999/db' cannot be parsed: invalid "
                        "literal for int() with base 10: '***'"),
    "redis @": ({"REDIS_URL": "redis://u:pa@RSECRET6@127.0.0.1:abc/0"}, "SECRET6",
                "REDIS_URL 'redis://***@127.0.0.1:abc/0' cannot be parsed: Port could not be cast to integer value as "
                "'abc'"),
    "broker @": ({"CELERY_BROKER_URL": "amqp://guest:pa@BSECRET8@127.0.0.1:xx//"}, "SECRET8",
                 "CELERY_BROKER_URL 'amqp://***@127.0.0.1:xx//' cannot be parsed: Port could not be cast to integer "
                 "value as 'xx'"),
}


@pytest.mark.parametrize("case", SECRET_CASES)
def test_no_password_in_a_url_setting_reaches_an_answer_or_the_log(tmp_path, mf_postgres_url, case):
    # Given a server whose URL settings hold a password: in the query string, or in a URL that cannot be parsed
    settings, secret, message = SECRET_CASES[case]
    settings = {var: url.replace("{pg}", mf_postgres_url) for var, url in settings.items()}
    env = mf_isolated_env(tmp_path, MODELFORGE_DATA_DIR=str(tmp_path / "modelforge"), **settings)
    server = mf_start_server(tmp_path / "server", env, ready="modelforge/health/live")  # it loads either way: live
    try:
        # When every endpoint is called, with and without the token
        answers = {}
        for method, path, token, body in [
            ("GET", "health", None, None), ("GET", "health/ready", None, None), ("GET", "health/live", None, None),
            ("GET", "models", server.token, None),
            ("POST", "predict", server.token, b'{"model_id": "x", "input_data": [1]}'),
        ]:
            answers[path] = mf_http(method, server.url + "modelforge/" + path, body, token=server.token and token)

        # Then a misconfiguration is a 503 naming the setting, its URL masked, and the log holds no secret either
        if message is not None:
            for path in ("health/ready", "models", "predict"):
                code, body = answers[path]
                assert (code, json.loads(body)) == (503, {"message": f"ModelForge is misconfigured: {message}"}), path
        else:
            assert answers["health/ready"][0] == 200, answers
            masked_db = mf_postgres_url.replace("postgresql+psycopg://", "") + "?password=***"
            assert f"ModelForge: registry postgresql+psycopg://{masked_db}, cache redis redis://127.0.0.1:6379/0" \
                   "?password=***, " in server.log
        server.stop()
        for path, (code, body) in answers.items():
            assert secret not in body.decode(), (path, code, body)
        assert secret not in server.log and "extension failed loading" not in server.log
    finally:
        server.stop()


def test_sigterm_stops_the_server_within_seconds_while_its_broker_never_answers(tmp_path, mf_silent_listener):
    from concurrent.futures import ThreadPoolExecutor

    # Given a server whose Celery broker accepts connections and never answers (amqp://: test_invalidation)
    broker = f"redis://127.0.0.1:{mf_silent_listener}/0"
    root = tmp_path / "server"
    server = mf_start_server(root, mf_isolated_env(root, MODELFORGE_DATA_DIR=str(root / "modelforge"),
                                             CELERY_BROKER_URL=broker))  # ready: health answered 200
    iris = (SAMPLES / "iris.onnx").read_bytes()
    v2 = (SAMPLES / "iris_v2.onnx").read_bytes()
    try:
        # When health is polled four at a time and the model changes: each answers (degraded), none hangs
        assert mf_http("PUT", server.url + "modelforge/models/iris", iris, server.token)[0] == 201
        with ThreadPoolExecutor(5) as pool:
            polls = [pool.submit(mf_http, "GET", server.url + "modelforge/health") for _ in range(4)]
            change = pool.submit(mf_http, "PUT", server.url + "modelforge/models/iris", v2, server.token)
            answers = [json.loads(p.result(timeout=20)[1]) for p in polls]
            assert change.result(timeout=20)[0] == 200
        assert {(a["status"], a["celery"]) for a in answers} == {("degraded", "disconnected")}

        # and SIGTERM arrives while more calls are in flight
        pool = ThreadPoolExecutor(6)
        for _ in range(4):
            pool.submit(mf_http, "GET", server.url + "modelforge/health")
        pool.submit(mf_http, "PUT", server.url + "modelforge/models/iris", iris, server.token)
        time.sleep(0.3)
        t0 = time.monotonic()
        server.proc.terminate()
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass  # the assertion below says so
        took = time.monotonic() - t0
        pool.shutdown(wait=False, cancel_futures=True)

        # Then the server stopped within a few seconds (the old one never did: its threads waited for the broker)
        assert server.proc.returncode is not None and took < 10, (took, server.log[-3000:])
    finally:
        server.stop()
