"""The Open Inference Protocol (KServe V2) on ``modelforge serve``: ``tritonclient.http``, unchanged, against real
worker processes (``test_serve.start_serve``) on both backends, answers compared with raw onnxruntime's. The protocol's
every corner is ``test_v2.py`` (the Jupyter door); this checks the standalone door serves the same routes with the
same core, its token, its error bodies and its binary answers."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import tritonclient.http as tc
from sklearn.datasets import load_breast_cancer, load_iris
from tritonclient.utils import InferenceServerException

from modelforge_jupyter._version import __version__

from .mf_plugin import mf_cached_keys, mf_http, mf_raw_run, mf_wait_until, mf_zipmap
from .test_serve import FOREST, IRIS, TOKEN, TOKEN_NEEDED, http, start_serve
from .test_v2 import LOAD_BODIES

AUTH = {"Authorization": f"token {TOKEN}"}


@pytest.fixture(scope="module")
def served(mf_module_settings, mf_module_forge, tmp_path_factory):
    """``modelforge serve --workers 2`` with iris and the forest registered, and a tritonclient on it: started once per
    backend for this module's tests, which change no model."""
    mf_module_forge.register("iris", IRIS)
    mf_module_forge.register("forest", FOREST)
    server = start_serve(tmp_path_factory.mktemp("serve-v2"), mf_module_settings)
    client = tc.InferenceServerClient(url=server.url.removeprefix("http://").rstrip("/"))
    yield server, client
    client.close()
    server.stop()


@pytest.fixture
def mf_forge(mf_module_forge):
    """This module's ``ModelForge``: the one on ``served``'s registry and cache."""
    return mf_module_forge


def infer(client, model: str, x: np.ndarray, binary: bool, **kwargs):
    item = tc.InferInput("float_input", list(x.shape), tc.np_to_triton_dtype(x.dtype))
    item.set_data_from_numpy(x, binary_data=binary)
    return client.infer(model, [item], headers=dict(AUTH), **kwargs)


def test_tritonclient_against_modelforge_serve_equals_raw_onnxruntime(served, mf_forge):
    server, client = served
    # health without a token; metadata with it
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata(headers=dict(AUTH)) == {
        "name": "modelforge", "version": __version__,
        "extensions": ["binary_tensor_data", "statistics", "model_repository"]}
    meta = client.get_model_metadata("iris", headers=dict(AUTH))
    assert (meta["platform"], meta["inputs"]) == (
        "onnxruntime_onnx", [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}])
    assert client.is_model_ready("forest", "1", headers=dict(AUTH))
    assert not client.is_model_ready("forest", "2", headers=dict(AUTH))

    # the forest at batch 300, binary in and out then JSON in and out: raw onnxruntime's answer, on both workers
    x = np.resize(load_breast_cancer().data.astype(np.float32), (300, 30))
    label, proba = mf_raw_run(FOREST, {"float_input": x})
    for binary in (True, False, True, False):
        outputs = None if binary else [tc.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")]
        result = infer(client, "forest", x, binary, outputs=outputs, parameters={"use_cache": False})
        np.testing.assert_array_equal(result.as_numpy("label"), label)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), proba)
        assert result.get_response()["parameters"] == {"cached": False}

    # iris's ZipMap as FP32 [N, 3] with its labels; the cache entry is the one POST modelforge/predict reads
    xi = load_iris().data[::15].astype(np.float32)
    labels, maps = mf_raw_run(IRIS, {"float_input": xi})
    result = infer(client, "iris", xi, True, model_version="1")
    np.testing.assert_array_equal(result.as_numpy("output_label"), labels)
    np.testing.assert_array_equal(result.as_numpy("output_probability"),
                                  np.array([[m[k] for k in (0, 1, 2)] for m in maps], np.float32))
    assert mf_forge.predict("iris", xi).cached
    status, _, body = http("POST", server.url + "predict",
                           orjson.dumps({"model_id": "iris", "input_data": xi.tolist()}))
    assert status == 200 and json.loads(body)["cached"] is True
    assert json.loads(body)["output_data"]["output_probability"] == mf_zipmap(maps)


def test_binary_answer_headers_and_v2_error_bodies(served, mf_forge):
    server, client = served
    url = server.url + "v2/models/iris/infer"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    head = orjson.dumps({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [2, 4],
                                     "parameters": {"binary_data_size": 32}}],
                         "parameters": {"binary_data_output": True}})
    answer = mf_http("POST", url, head + x.tobytes(), TOKEN, **{"Inference-Header-Content-Length": str(len(head))})
    assert answer[0] == 200 and answer.headers["Content-Type"] == "application/octet-stream"
    size = int(answer.headers["Inference-Header-Content-Length"])
    outputs = json.loads(answer[1][:size])["outputs"]
    assert [o["name"] for o in outputs] == ["output_label", "output_probability"]
    assert np.frombuffer(answer[1][size:size + 16], np.int64).tolist() == mf_raw_run(IRIS, {"float_input": x})[0].tolist()
    assert size + sum(o["parameters"]["binary_data_size"] for o in outputs) == len(answer[1])
    # a JSON answer is JSON
    plain = orjson.dumps({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4],
                                      "data": [1, 2, 3, 4]}]})
    answer = mf_http("POST", url, plain, TOKEN)
    assert answer[0] == 200 and answer.headers["Content-Type"] == "application/json"
    assert "Inference-Header-Content-Length" not in answer.headers

    # Triton's status and wording, V2's {"error"} body; nothing stored by a refusal. The server writes a miss to the
    # disk cache behind its answer (``cache_writes``): the plain request's entry first lands, milliseconds later
    plain_key = mf_forge.cache_key("iris", np.array([[1, 2, 3, 4]], np.float32))
    assert mf_wait_until(lambda: plain_key in mf_cached_keys(mf_forge), 10.0)
    keys_before = mf_cached_keys(mf_forge)
    with pytest.raises(InferenceServerException) as err:
        infer(client, "iris", np.zeros((2, 3), np.float32), True)
    assert (err.value.status(), err.value.message()) == (
        "400", "unexpected shape for input 'float_input' for model 'iris'. Expected [-1,4], got [2,3]")
    with pytest.raises(InferenceServerException) as err:
        infer(client, "iris", x.astype(np.float64), False)
    assert err.value.status() == "400" and "model expects 'FP32'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        infer(client, "nope", x, True)
    assert (err.value.status(), err.value.message()) == ("404", "model 'nope' is not registered")
    status, _, body = http("POST", url, head + x.tobytes()[:20], **{"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "the request is truncated" in json.loads(body)["error"]
    status, _, body = http("GET", server.url + "v2/models/iris/versions/one")
    assert (status, json.loads(body)) == (400, {"error": "version must be a whole number >= 1, got 'one'"})
    status, _, body = http("GET", server.url + "v2/models/iris/versions//ready")
    assert (status, json.loads(body)) == (404, {"error": "no V2 endpoint at /modelforge/v2/models/iris/versions//ready"})
    status, _, body = http("GET", server.url + "v2/models/iris/nowhere")
    assert (status, json.loads(body)) == (404, {"error": "no V2 endpoint at /modelforge/v2/models/iris/nowhere"})
    status, _, body = http("GET", server.url + "v2/health/live", token=None)
    assert (status, json.loads(body)) == (200, {"live": True})
    assert mf_cached_keys(mf_forge) == keys_before
    # the server still answers
    np.testing.assert_array_equal(infer(client, "iris", x, True).as_numpy("output_label"),
                                  mf_raw_run(IRIS, {"float_input": x})[0])


@pytest.mark.parametrize(("body", "query", "status", "answer"), LOAD_BODIES)
def test_the_load_route_takes_an_optional_version_body(served, body, query, status, answer):
    server, _ = served
    got, _, text = http("POST", server.url + "models/iris/load" + query, body)
    assert (got, json.loads(text)) == (status, answer)


def test_the_token_is_required_but_for_live_and_ready(served):
    server, client = served
    body = orjson.dumps({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4],
                                     "data": [1, 2, 3, 4]}]})
    for method, path, data in (("GET", "v2", None), ("GET", "v2/models/iris", None),
                               ("GET", "v2/models/iris/ready", None), ("GET", "v2/models/iris/versions/1", None),
                               ("POST", "v2/models/iris/infer", body), ("POST", "v2/health/live", None),
                               ("POST", "v2/repository/index", None), ("POST", "v2/repository/models/iris/load", None),
                               ("POST", "v2/repository/models/iris/unload", None)):
        for token in (None, "wrong-token"):
            status, _, answer = http(method, server.url + path, data, token=token)
            assert (status, json.loads(answer)) == (403, {"error": TOKEN_NEEDED}), (method, path, token)
    with pytest.raises(InferenceServerException) as err:
        client.infer("iris", [tc.InferInput("float_input", [1, 4], "FP32").set_data_from_numpy(
            np.ones((1, 4), np.float32))])
    assert err.value.status() == "403" and "token" in err.value.message()
    assert http("GET", server.url + "v2/health/live", token=None)[0] == 200
    assert http("GET", server.url + "v2/health/ready", token=None)[:3:2] == (200, b'{"ready":true}')


def test_model_repository_and_the_forced_reload_reach_every_process(served, mf_forge):
    server, client = served
    assert client.get_model_repository_index(headers=dict(AUTH)) == [
        {"name": "forest", "version": "1", "state": "READY"}, {"name": "iris", "version": "1", "state": "READY"}]
    # Given the test's ModelForge (another process) serving iris: a load through a worker reloads it there too
    iris = mf_forge.get("iris")
    mf_forge.predict("iris", np.ones((1, 4), np.float32), use_cache=False)
    background = mf_forge.lifecycle.background_loads
    client.load_model("iris", headers=dict(AUTH))
    status, _, body = http("POST", server.url + "models/iris/load", b"")
    assert (status, json.loads(body)) == (200, {"name": "iris", "version": 1, "loaded": True})
    if mf_forge.listener is not None:  # PostgreSQL + Redis: the change event
        assert mf_wait_until(lambda: mf_forge.lifecycle.background_loads == background + 2, 10)
    assert iris.sha256 in mf_forge.engine.loaded()
    client.unload_model("iris", headers=dict(AUTH))
    assert client.is_model_ready("iris", headers=dict(AUTH))
    with pytest.raises(InferenceServerException) as err:
        client.load_model("nope", headers=dict(AUTH))
    assert (err.value.status(), err.value.message()) == ("404", "model 'nope' is not registered")
    status, _, body = http("POST", server.url + "v2/repository/index", b"[1]")
    assert (status, json.loads(body)) == (400, {"error": "the body must be a JSON object, got a JSON array"})
    assert http("POST", server.url + "models/nope/load", b"")[0] == 404
