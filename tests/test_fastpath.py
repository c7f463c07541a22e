"""The data plane's lean path through Jupyter (``server_extension/fastpath.py``) answers every auth case as the full
path does, on real ``jupyter server`` processes: no token, a bad token, a header token, a token in the query, a login
cookie with and without XSRF, ``allow_unauthenticated_access=False``, and a custom IdentityProvider (which the lean
path must leave alone). Also: a header-token request gets no login cookie, a success writes no access-log line at
the default level while Jupyter's request metric still counts it, and a failure is logged as before.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from .mf_plugin import SAMPLES, mf_embedded, mf_http, mf_isolated_env, mf_start_server

ROOT = Path(__file__).resolve().parent.parent
X = [[5.1, 3.5, 1.4, 0.2]]
PREDICT = orjson.dumps({"model_id": "iris", "input_data": X, "use_cache": False})
V2_INFER = orjson.dumps({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4], "data": X[0]}]})
ROUTES = {"predict": ("modelforge/predict", PREDICT), "v2": ("modelforge/v2/models/iris/infer", V2_INFER)}


ALICE = {"X-Test-User": "alice", "Cookie": "_xsrf=abc123", "X-XSRFToken": "abc123"}  # the custom provider's user


def _start(tmp_path_factory, name: str, *args: str, **auth: str):
    """A server whose registry holds iris, put with ``auth`` headers (default: the token)."""
    root = tmp_path_factory.mktemp(name)
    env = mf_isolated_env(root, MODELFORGE_DATA_DIR=str(root / "modelforge"), PYTHONPATH=str(ROOT))
    server = mf_start_server(root, env, args=args, ready="modelforge/health/live")
    try:
        status, body = mf_http("PUT", server.url + "modelforge/models/iris", (SAMPLES / "iris.onnx").read_bytes(),
                               None if auth else server.token, **auth)
        assert status in (200, 201), body
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    server = _start(tmp_path_factory, "fast-default")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def custom_server(tmp_path_factory):
    """A server with a custom IdentityProvider (``X-Test-User: alice`` only; tokens never) and
    ``allow_unauthenticated_access=False``."""
    server = _start(tmp_path_factory, "fast-custom",
                    "--ServerApp.identity_provider_class=tests.mf_plugin.identity.MfHeaderIdentityProvider",
                    "--ServerApp.allow_unauthenticated_access=False", **ALICE)
    yield server
    server.stop()


def _post(server, route: str, token: str | None = None, query: str = "", **headers: str):
    path, body = ROUTES[route]
    return mf_http("POST", server.url + path + query, body, token, **headers)


def _login_cookie(answer) -> str | None:
    cookies = answer.headers.get_all("Set-Cookie") or []
    return next((c.split(";")[0] for c in cookies if c.startswith("username-")), None)


@pytest.mark.parametrize("route", list(ROUTES))
def test_the_default_provider_s_auth_cases_answer_as_the_full_path(default_server, route):
    s = default_server
    # no token, a bad token: 403 naming how to authenticate
    for token in (None, "not-the-token"):
        status, body = _post(s, route, token)
        assert status == 403 and b"token" in body, (token, body)
    # a header token: 200, the model's answer, and no login cookie signed for it
    answer = _post(s, route, s.token)
    assert answer[0] == 200 and _login_cookie(answer) is None
    # a token in the query (a browser link): the full path, 200 and the login cookie as Jupyter sets it
    by_query = _post(s, route, query=f"?token={s.token}")
    cookie = _login_cookie(by_query)
    assert by_query[0] == 200 and cookie is not None
    # that login cookie without XSRF: 403 (Jupyter's XSRF check on a POST); with the XSRF cookie and header: 200
    status, body = _post(s, route, Cookie=cookie)
    assert status == 403 and b"xsrf" in body.lower()
    assert _post(s, route, Cookie=f"{cookie}; _xsrf=abc123", **{"X-XSRFToken": "abc123"})[0] == 200
    # a header token with a login cookie: the full path, 200
    assert _post(s, route, s.token, Cookie=cookie)[0] == 200


def test_the_header_token_answer_equals_the_full_path_s(default_server):
    s = default_server
    fast = orjson.loads(_post(s, "predict", s.token)[1])
    full = orjson.loads(_post(s, "predict", query=f"?token={s.token}")[1])
    assert fast["output_data"] == full["output_data"] and fast["output_data"]["output_label"] == [0]
    assert np.array(orjson.loads(_post(s, "v2", s.token)[1])["outputs"][0]["data"]).tolist() == [0]


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_custom_identity_provider_is_never_bypassed(custom_server, route):
    s = custom_server
    # the server's token is no credential for this provider: a lean path that checked it itself would answer 200
    status, body = _post(s, route, s.token)
    assert status == 403, body
    assert _post(s, route)[0] == 403
    assert _post(s, route, **{**ALICE, "X-Test-User": "mallory"})[0] == 403
    assert _post(s, route, **ALICE)[0] == 200
    # allow_unauthenticated_access=False leaves the open health endpoints open, as before
    assert mf_http("GET", s.url + "modelforge/health/live")[0] == 200


def test_successes_are_not_logged_at_the_default_level_but_counted_and_failures_are_logged(default_server):
    s = default_server
    marker = f"/{time.monotonic_ns()}"
    for _ in range(3):
        assert _post(s, "predict", s.token)[0] == 200
    assert _post(s, "predict", "bad-token", query=f"?x={marker[1:]}")[0] == 403
    log = Path(s.log_path).read_text()
    assert not re.search(r"\b200 POST /mf-test/modelforge/predict\b", log)
    assert re.search(r"\b403 POST /mf-test/modelforge/predict\?x=" + marker[1:], log), log[-2000:]
    status, metrics = mf_http("GET", s.url + "metrics", token=s.token)
    assert status == 200
    counted = re.search(rb'http_request_duration_seconds_count\{handler="modelforge_jupyter\.server_extension\.'
                        rb'handlers\.PredictHandler",method="POST",status_code="200"\} (\d+)', metrics)
    assert counted and float(counted[1]) >= 3, metrics[:500]


def test_the_embedded_registry_of_the_servers_is_their_own(default_server):
    # the servers' registries are under their own roots: nothing here touched another test's
    assert (default_server.root / "modelforge").exists() and mf_embedded(default_server.root / "modelforge")


def test_debug_is_shown_only_when_a_handler_emits_it():
    import logging

    from modelforge_jupyter.server_extension.fastpath import debug_shown

    # Jupyter's logger: the logger at DEBUG (traitlets), its handler at --log-level (INFO by default)
    logger = logging.getLogger(f"mf-test-{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        assert logger.isEnabledFor(logging.DEBUG) and not debug_shown(logger)
        handler.setLevel(logging.DEBUG)  # --log-level=DEBUG
        assert debug_shown(logger)
        logger.setLevel(logging.INFO)
        assert not debug_shown(logger)
    finally:
        logger.removeHandler(handler)


def test_a_refusal_before_the_body_says_connection_close_and_the_client_carries_on(default_server):
    import socket

    import tritonclient.http as tc

    s = default_server
    host, port = s.url.split("//")[1].split("/")[0].split(":")
    # Given one keep-alive connection: a request refused before its body is read (no token) answers 403 with
    # "Connection: close" (Tornado drops such a connection; a client must know to open another)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST {s.url.split(port, 1)[1]}modelforge/predict HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: 0\r\n\r\n".encode())
        head = conn.recv(65536).split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 403") and b"\r\nconnection: close" in head, head
    # When tritonclient alternates refused and accepted calls on one client, Then every accepted call succeeds
    client = tc.InferenceServerClient(url=f"{host}:{port}{s.url.split(port, 1)[1]}modelforge")
    x = tc.InferInput("float_input", [1, 4], "FP32")
    x.set_data_from_numpy(np.float32(X))
    for _ in range(20):
        try:
            client.infer("iris", [x], headers={"Authorization": "token bad"})
        except Exception as err:  # noqa: BLE001 - the refusal itself
            assert "403" in str(getattr(err, "status", lambda: "")()) or "authentication" in str(err), err
        assert client.infer("iris", [x], headers={"Authorization": f"token {s.token}"}).as_numpy("output_label") == [0]
    client.close()
