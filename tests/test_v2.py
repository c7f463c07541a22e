"""The Open Inference Protocol (KServe V2) with Triton's binary tensor extension: ``tritonclient.http``, unchanged,
against a real ``jupyter server`` (token, non-default base_url), on both backends (embedded; PostgreSQL + Redis).

One server per backend for the module (``v2``); each test registers nothing new but reads the models registered
once, so the registry stays as the fixture left it. Answers are compared with raw onnxruntime's (``mf_raw_run``).
"""

from __future__ import annotations

import contextlib
import json
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

from modelforge_jupyter._version import __version__

from .mf_plugin import SAMPLES, LiveServer, mf_embedded, mf_http, mf_identity_model, mf_isolated_env, mf_raw_run
from .mf_plugin import FOREVER, mf_cached_keys, mf_fresh_services, mf_spin_input, mf_spin_model, mf_start_server
from .mf_plugin import mf_unshaped_model, mf_wait_until

BASE_URL = "/user/v2-test/"
DTYPES = {  # ModelForge dtype -> V2 datatype
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
    "bool": "BOOL", "string": "BYTES",
}
IRIS = SAMPLES / "iris.onnx"
FOREST = SAMPLES / "breast_cancer_rf.onnx"


def pair_model():
    """Two inputs, two outputs: ``s = a + float(b)``, ``d = a - float(b)`` (a float32 [N, 2], b int64 [N, 2])."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), helper.make_node("Add", ["a", "bf"], ["s"]),
         helper.make_node("Sub", ["a", "bf"], ["d"])],
        "pair",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info("b", TensorProto.INT64, [None, 2])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info("d", TensorProto.FLOAT, [None, 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


MODELS = {  # name -> ONNX bytes, registered once per server
    **{f"id_{dtype}": mf_identity_model(dtype, [None, 3]).SerializeToString() for dtype in DTYPES},
    "scalar": mf_identity_model("float32", []).SerializeToString(),
    "unshaped": mf_unshaped_model().SerializeToString(),  # its input declares no shape: any shape
    "pair": pair_model().SerializeToString(),
    "iris": IRIS.read_bytes(),
    "forest": FOREST.read_bytes(),
    "spin": mf_spin_model().SerializeToString(),  # runs as long as its input says
}


@dataclass
class V2:
    """A server with the models registered, a tritonclient on it, and a ModelForge on the same registry and cache
    (the test's view of what is stored)."""

    server: LiveServer
    client: tc.InferenceServerClient
    forge: object

    @property
    def url(self) -> str:
        return self.server.url + "modelforge/"

    def headers(self) -> dict[str, str]:
        """A new dict per call: tritonclient writes Inference-Header-Content-Length into the dict it is given."""
        return {"Authorization": f"token {self.server.token}"}

    def infer(self, model: str, arrays: dict[str, np.ndarray], binary: bool = True, outputs=None, **kwargs):
        inputs = []
        for name, array in arrays.items():
            item = tc.InferInput(name, list(array.shape), tc.np_to_triton_dtype(array.dtype))
            inputs.append(item.set_data_from_numpy(array, binary_data=binary))
        if outputs is None and not binary:  # JSON outputs too (no filter asks for binary ones)
            outputs = [tc.InferRequestedOutput(o.name, binary_data=False) for o in self.forge.get(model).outputs]
        return self.client.infer(model, inputs, outputs=outputs, headers=self.headers(), **kwargs)

    def post(self, path: str, body: bytes, token: bool = True, **headers: str):
        return mf_http("POST", self.url + path, body, self.server.token if token else None, **headers)

    def stored(self) -> tuple:
        """What a refused request must not change: the cached keys, and every model with its versions."""
        return mf_cached_keys(self.forge), [(r.name, r.version, r.sha256) for r in self.forge.models()]


def start(root: Path, env: dict[str, str], settings: dict) -> V2:
    from modelforge_jupyter import ModelForge

    server = mf_start_server(root, env, base_url=BASE_URL)
    for name, data in MODELS.items():
        status, body = mf_http("PUT", server.url + f"modelforge/models/{name}", data, server.token)
        assert status == 201, body
    client = tc.InferenceServerClient(url=server.url.removeprefix("http://") + "modelforge")
    return V2(server, client, ModelForge(**settings))


@pytest.fixture(scope="module", params=["embedded", "services"])
def v2(request, tmp_path_factory):
    """One server per backend for this module (``V2``)."""
    root = tmp_path_factory.mktemp(f"v2-{request.param}")
    with contextlib.ExitStack() as services:
        if request.param == "embedded":
            settings = mf_embedded(root / "modelforge")
            env = mf_isolated_env(root, MODELFORGE_DATA_DIR=str(root / "modelforge"))
        else:
            settings = services.enter_context(mf_fresh_services())
            env = mf_isolated_env(root, DATABASE_URL=settings["database_url"], REDIS_URL=settings["redis_url"],
                                  CACHE_KEY_PREFIX=settings["cache_key_prefix"])
        served = start(root, env, settings)
        yield served
        served.client.close()
        served.forge.close()
        served.server.stop()


def sample(dtype: str, shape: tuple, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "string":
        return np.array([f"s{v}-é" for v in rng.integers(0, 1000, int(np.prod(shape)))], dtype=object).reshape(shape)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


# -- health, metadata ---------------------------------------------------------------------------------------------
def test_health_and_server_metadata(v2):
    c = v2.client
    assert c.is_server_live() and c.is_server_ready()  # no token needed
    assert c.get_server_metadata(headers=v2.headers()) == {
        "name": "modelforge", "version": __version__,
        "extensions": ["binary_tensor_data", "statistics", "model_repository"],
    }
    assert mf_http("GET", v2.url + "v2/health/ready", None)[:2] == (200, b'{"ready":true}')


def test_model_metadata_and_ready(v2):
    c, h = v2.client, v2.headers
    assert c.get_model_metadata("iris", headers=h()) == {
        "name": "iris", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output_label", "datatype": "INT64", "shape": [-1]},
                    {"name": "output_probability", "datatype": "FP32", "shape": [-1, 3]}],  # ZipMap: 3 labels
    }
    pair = c.get_model_metadata("pair", model_version="1", headers=h())
    assert [(t["name"], t["datatype"], t["shape"]) for t in pair["inputs"] + pair["outputs"]] == [
        ("a", "FP32", [-1, 2]), ("b", "INT64", [-1, 2]), ("s", "FP32", [-1, 2]), ("d", "FP32", [-1, 2])]
    assert c.get_model_metadata("scalar", headers=h())["inputs"] == [{"name": "x", "datatype": "FP32", "shape": []}]
    assert c.get_model_metadata("id_string", headers=h())["outputs"][0]["datatype"] == "BYTES"
    assert c.is_model_ready("forest", headers=h()) and c.is_model_ready("forest", "1", headers=h())
    assert not c.is_model_ready("nope", headers=h()) and not c.is_model_ready("forest", "2", headers=h())
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata("nope", headers=h())
    assert (err.value.status(), err.value.message()) == ("404", "model 'nope' is not registered")
    with pytest.raises(InferenceServerException) as err:
        c.get_model_config("iris", headers=h())  # Triton's model_configuration extension: not served
    assert err.value.status() == "404" and "no Open Inference Protocol endpoint at" in err.value.message()
    status, body = mf_http("GET", v2.url + "v2/models/iris/versions/one", None, v2.server.token)
    assert (status, json.loads(body)) == (400, {"error": "version must be a whole number >= 1, got 'one'"})
    status, body = mf_http("GET", v2.url + "v2/models/iris/versions//ready", None, v2.server.token)
    assert status == 404  # an empty version is no V2 path, on both doors (test_serve_v2)


def test_model_repository_index_load_and_unload(v2):
    c, h = v2.client, v2.headers
    assert c.get_model_repository_index(headers=h()) == [
        {"name": name, "version": "1", "state": "READY"} for name in sorted(MODELS)]
    # the forced reload: this server's session rebuilt and warmed; with Redis, another process that has the model
    # loaded (the test's ModelForge) reloads it on the change event
    iris = v2.forge.get("iris")
    v2.forge.predict("iris", np.ones((1, 4), np.float32), use_cache=False)
    background = v2.forge.lifecycle.background_loads
    c.load_model("iris", headers=h())
    status, body = mf_http("POST", v2.url + "models/iris/load", b"", v2.server.token)
    assert (status, json.loads(body)) == (200, {"name": "iris", "version": 1, "loaded": True})
    if v2.forge.listener is not None:
        assert mf_wait_until(lambda: v2.forge.lifecycle.background_loads == background + 2, 10)
    assert iris.sha256 in v2.forge.engine.loaded()
    c.unload_model("iris", headers=h())
    assert c.is_model_ready("iris", headers=h())  # unloaded here: the next request loads it again
    np.testing.assert_array_equal(v2.infer("iris", {"float_input": np.ones((1, 4), np.float32)}).as_numpy(
        "output_label"), mf_raw_run(IRIS, {"float_input": np.ones((1, 4), np.float32)})[0])
    for call, status, message in (
        (lambda: c.load_model("nope", headers=h()), "404", "model 'nope' is not registered"),
        (lambda: c.load_model("iris", config="{}", headers=h()), "400", "load takes no parameters here"),
        (lambda: c.unload_model("nope", headers=h()), "404", "model 'nope' is not registered"),
    ):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == status and err.value.message().startswith(message), err.value.message()
    status, body = v2.post("v2/repository/index", b'{"ready": "yes"}')
    assert (status, json.loads(body)) == (400, {"error": "'ready' must be true or false, got 'yes'"})
    assert mf_http("POST", v2.url + "models/nope/load", b"", v2.server.token)[0] == 404


# POST modelforge/models/{name}/load's body, as V2's repository load treats its own: empty or a JSON object of known
# fields; (body, query, status, answer). iris has version 1 only: a body naming version 2 that were ignored would load
# version 1 (200).
LOAD_BODIES = [
    (b"", "", 200, {"name": "iris", "version": 1, "loaded": True}),
    (b"{}", "", 200, {"name": "iris", "version": 1, "loaded": True}),
    (b'{"version": 1}', "?version=1", 200, {"name": "iris", "version": 1, "loaded": True}),
    (b'{"version": 2}', "", 404, {"message": "model 'iris' has no version 2; versions: 1"}),
    (b'{"version": 2}', "?version=1", 400, {"message": "version 2 in the body but 1 in the query: give it once"}),
    (b'{"version": "1"}', "", 400, {"message": "version must be a whole number >= 1, got '1'"}),
    (b'{"versoin": 1}', "", 400, {"message": "unknown field 'versoin' in the load request; it takes version"}),
    (b"[1]", "", 400, {"message": "the body must be a JSON object, got a JSON array"}),
]


@pytest.mark.parametrize(("body", "query", "status", "answer"), LOAD_BODIES)
def test_the_load_route_takes_an_optional_version_body(v2, body, query, status, answer):
    got, text = mf_http("POST", v2.url + "models/iris/load" + query, body, v2.server.token)
    assert (got, json.loads(text)) == (status, answer)


def test_token_needed_except_for_live_and_ready(v2):
    for path in ("v2", "v2/models/iris", "v2/models/iris/ready", "v2/models/iris/versions/1"):
        status, body = mf_http("GET", v2.url + path, None)
        assert status == 403 and "token" in json.loads(body)["error"], path
    request = orjson.dumps({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4],
                                        "data": [1, 2, 3, 4]}]})
    status, body = v2.post("v2/models/iris/infer", request, token=False)
    assert status == 403 and b"outputs" not in body
    for path in ("v2/repository/index", "v2/repository/models/iris/load", "v2/repository/models/iris/unload"):
        assert v2.post(path, b"", token=False)[0] == 403, path
    assert mf_http("GET", v2.url + "v2/health/live", None)[0] == 200
    assert mf_http("GET", v2.url + "v2/health/ready", None)[0] == 200


# -- infer -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_infer_every_datatype_equals_raw_onnxruntime(v2, dtype, binary):
    x = sample(dtype, (4, 3), seed=2 * list(DTYPES).index(dtype) + binary)
    result = v2.infer(f"id_{dtype}", {"x": x}, binary=binary, request_id="req-7")

    answer = result.get_response()
    (want,) = mf_raw_run(MODELS[f"id_{dtype}"], {"x": x})
    got = result.as_numpy("y")
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (f"id_{dtype}", "1", "req-7")
    assert answer["outputs"][0]["datatype"] == DTYPES[dtype] and answer["outputs"][0]["shape"] == [4, 3]
    assert ("binary_data_size" in answer["outputs"][0].get("parameters", {})) is binary
    if dtype == "string":  # BYTES come back as bytes from binary data, as str from JSON
        assert [v.decode() if binary else v for v in got.ravel()] == list(want.ravel())
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_two_inputs_and_the_outputs_filter(v2):
    a, b = sample("float32", (5, 2), 1), sample("int64", (5, 2), 2) % 100
    s, d = mf_raw_run(MODELS["pair"], {"a": a, "b": b})

    both = v2.infer("pair", {"a": a, "b": b})
    only_d = v2.infer("pair", {"a": a, "b": b}, outputs=[tc.InferRequestedOutput("d", binary_data=False)])
    d_then_s = v2.infer("pair", {"a": a, "b": b}, binary=False,
                        outputs=[tc.InferRequestedOutput("d", binary_data=False),
                                 tc.InferRequestedOutput("s", binary_data=True)])

    np.testing.assert_array_equal(both.as_numpy("s"), s)
    np.testing.assert_array_equal(both.as_numpy("d"), d)
    assert [o["name"] for o in only_d.get_response()["outputs"]] == ["d"] and only_d.as_numpy("s") is None
    np.testing.assert_array_equal(only_d.as_numpy("d"), d)
    outs = d_then_s.get_response()["outputs"]
    assert [(o["name"], "data" in o) for o in outs] == [("d", True), ("s", False)]  # order and encoding as asked
    # "outputs": [] names no output: all of them, as Triton answers a request without requested outputs
    head = {"inputs": [{"name": n, "datatype": t, "shape": [5, 2], "data": v.ravel().tolist()}
                       for n, t, v in (("a", "FP32", a), ("b", "INT64", b))], "outputs": []}
    status, body = v2.post("v2/models/pair/infer", orjson.dumps(head))
    assert status == 200 and [o["name"] for o in json.loads(body)["outputs"]] == ["s", "d"]
    np.testing.assert_array_equal(d_then_s.as_numpy("s"), s)


def test_a_rank0_input(v2):
    for binary in (True, False):
        result = v2.infer("scalar", {"x": np.array(2.5, np.float32)}, binary=binary, parameters={"use_cache": False})
        assert result.get_response()["outputs"][0]["shape"] == []
        assert result.as_numpy("y").shape == () and result.as_numpy("y") == np.float32(2.5)


def test_an_input_with_no_declared_shape_takes_any_shape(v2):
    meta = v2.client.get_model_metadata("unshaped", headers=v2.headers())
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1]}]  # V2 cannot say "any rank"
    x = np.array([[1.5, -2.0, 3.0], [-0.5, 4.0, 0.0]], np.float32)
    for binary in (True, False):
        for value in (x, x.reshape(3, 2, 1), x.ravel()):
            got = v2.infer("unshaped", {"x": value}, binary=binary, parameters={"use_cache": False}).as_numpy("y")
            (want,) = mf_raw_run(MODELS["unshaped"], {"x": value})
            assert got.shape == value.shape
            np.testing.assert_array_equal(got, want)


def test_a_rank0_output_keeps_its_shape_on_a_cache_hit(v2):
    x = np.array(uuid.uuid4().int % 1000, np.float32)
    first, hit = (v2.infer("scalar", {"x": x}) for _ in range(2))
    assert first.get_response()["parameters"] == {"cached": False}
    assert hit.get_response()["parameters"] == {"cached": True}
    assert hit.get_response()["outputs"][0]["shape"] == [] and hit.as_numpy("y") == x


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_iris_zipmap_as_an_fp32_tensor_with_its_labels(v2, binary):
    from sklearn.datasets import load_iris

    x = load_iris().data[::10].astype(np.float32)
    labels, maps = mf_raw_run(IRIS, {"float_input": x})
    result = v2.infer("iris", {"float_input": x}, binary=binary, parameters={"use_cache": False})

    np.testing.assert_array_equal(result.as_numpy("output_label"), labels)
    proba = result.get_output("output_probability")
    keys = json.loads(proba["parameters"]["zipmap_labels"])
    assert (proba["datatype"], proba["shape"], keys) == ("FP32", [len(x), 3], [0, 1, 2])
    np.testing.assert_array_equal(result.as_numpy("output_probability"),
                                  np.array([[m[k] for k in keys] for m in maps], np.float32))


def test_forest_batch_1000_binary_and_json(v2):
    from sklearn.datasets import load_breast_cancer

    x = np.resize(load_breast_cancer().data.astype(np.float32), (1000, 30))
    want = mf_raw_run(FOREST, {"float_input": x})
    for binary in (True, False):
        result = v2.infer("forest", {"float_input": x}, binary=binary)
        for name, value in zip(("label", "probabilities"), want):
            np.testing.assert_array_equal(result.as_numpy(name), value)


def test_flat_and_nested_json_data_are_the_same_request(v2):
    x = sample("float32", (3, 4), 5)

    def request(data):
        return orjson.dumps({"id": "n", "inputs": [{"name": "float_input", "datatype": "FP32", "shape": [3, 4],
                                                    "data": data}], "parameters": {"use_cache": False}})

    flat = v2.post("v2/models/iris/infer", request(x.ravel().tolist()))
    nested = v2.post("v2/models/iris/infer", request(x.tolist()))

    assert flat[0] == nested[0] == 200 and flat.headers["Content-Type"] == "application/json"
    assert json.loads(flat[1]) == json.loads(nested[1])
    labels, _ = mf_raw_run(IRIS, {"float_input": x})
    assert json.loads(flat[1])["outputs"][0]["data"] == labels.tolist()


def test_binary_answer_headers(v2):
    x = sample("float32", (2, 4), 6)
    head = orjson.dumps({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [2, 4],
                                     "parameters": {"binary_data_size": 32}}],
                         "parameters": {"binary_data_output": True}})
    status, body = answer = v2.post("v2/models/iris/infer", head + x.tobytes(),
                                    **{"Inference-Header-Content-Length": str(len(head))})
    assert status == 200 and answer.headers["Content-Type"] == "application/octet-stream"
    size = int(answer.headers["Inference-Header-Content-Length"])
    outputs = json.loads(body[:size])["outputs"]
    labels, _ = mf_raw_run(IRIS, {"float_input": x})
    assert np.frombuffer(body[size:size + 16], np.int64).tolist() == labels.tolist()
    assert size + sum(o["parameters"]["binary_data_size"] for o in outputs) == len(body)

    # an output's own binary_data wins over the request's binary_data_output
    head = orjson.dumps({**json.loads(head), "outputs": [{"name": "output_probability"},
                                                         {"name": "output_label", "parameters": {"binary_data": False}}]})
    status, body = answer = v2.post("v2/models/iris/infer", head + x.tobytes(),
                                    **{"Inference-Header-Content-Length": str(len(head))})
    size = int(answer.headers["Inference-Header-Content-Length"])
    proba, label = json.loads(body[:size])["outputs"]
    assert proba["parameters"]["binary_data_size"] == len(body) - size == 24 and label["data"] == labels.tolist()


def test_a_v2_request_and_a_modelforge_json_request_share_one_cache_entry(v2):
    from sklearn.datasets import load_breast_cancer

    x, y = (load_breast_cancer().data[i:i + 7].astype(np.float32) + np.float32(uuid.uuid4().int % 97)
            for i in (0, 100))
    keys = set(mf_cached_keys(v2.forge))

    first = v2.infer("forest", {"float_input": x})  # V2 first, then ModelForge's JSON
    status, body = v2.post("predict", orjson.dumps({"model_id": "forest", "input_data": x.tolist()}))
    assert first.get_response()["parameters"] == {"cached": False}
    assert status == 200 and json.loads(body)["cached"] is True
    added = set(mf_cached_keys(v2.forge)) - keys
    assert added == {v2.forge.cache_key("forest", x)}

    status, body = v2.post("predict", orjson.dumps({"model_id": "forest", "input_data": y.tolist()}))  # and back
    second = v2.infer("forest", {"float_input": y}, binary=False)
    assert json.loads(body)["cached"] is False and second.get_response()["parameters"] == {"cached": True}
    np.testing.assert_array_equal(second.as_numpy("probabilities"), mf_raw_run(FOREST, {"float_input": y})[1])
    assert set(mf_cached_keys(v2.forge)) - keys == {v2.forge.cache_key("forest", x), v2.forge.cache_key("forest", y)}


def test_use_cache_false_stores_nothing(v2):
    x = sample("float32", (2, 4), uuid.uuid4().int % 1000)
    before = v2.stored()
    result = v2.infer("iris", {"float_input": x}, parameters={"use_cache": False})
    assert result.get_response()["parameters"] == {"cached": False} and v2.stored() == before


# -- refusals ----------------------------------------------------------------------------------------------------
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def tc_case(model, arrays, outputs=None):
    return lambda v2: v2.infer(model, arrays, outputs=outputs)


def raw_case(head: dict, tail: bytes = b"", header_length: int | None = None, model: str = "iris"):
    def run(v2):
        body = orjson.dumps(head)
        headers = {}
        if tail or header_length is not None:
            headers["Inference-Header-Content-Length"] = str(len(body) if header_length is None else header_length)
        status, answer = v2.post(f"v2/models/{model}/infer", body + tail, **headers)
        raise InferenceServerException(json.loads(answer)["error"], str(status))
    return run


def binary_input(size: int, shape=(2, 4), datatype="FP32") -> dict:
    return {"inputs": [{"name": "float_input", "datatype": datatype, "shape": list(shape),
                        "parameters": {"binary_data_size": size}}]}


REFUSALS = {
    "unknown model": (tc_case("nope", {"float_input": X}), "404", "model 'nope' is not registered"),
    "wrong datatype": (tc_case("iris", {"float_input": X.astype(np.float64)}), "400",
                       "inference input data-type is 'FP64', model expects 'FP32' for input 'float_input' of model "
                       "'iris'"),
    "wrong shape": (tc_case("iris", {"float_input": np.zeros((2, 3), np.float32)}), "400",
                    "unexpected shape for input 'float_input' for model 'iris'. Expected [-1,4], got [2,3]"),
    "wrong rank": (tc_case("iris", {"float_input": X.ravel()}), "400",
                   "unexpected shape for input 'float_input' for model 'iris'. Expected [-1,4], got [8]"),
    "missing input": (tc_case("pair", {"a": X[:, :2]}), "400",
                      "expected 2 inputs but got 1 inputs for model 'pair': missing required input(s) 'b'"),
    "unknown input": (tc_case("iris", {"float_input": X, "extra": X}), "400",
                      "unexpected inference input 'extra' for model 'iris'"),
    "unknown output": (tc_case("iris", {"float_input": X}, [tc.InferRequestedOutput("proba")]), "400",
                       "unexpected inference output 'proba' for model 'iris'"),
    "data length": (raw_case({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [2, 4],
                                          "data": [1.0] * 7}]}), "400",
                    "input 'float_input': 'data' has 7 elements, but shape [2,4] holds 8"),
    "unknown datatype": (raw_case({"inputs": [{"name": "float_input", "datatype": "FLOAT", "shape": [1, 4],
                                               "data": [1, 2, 3, 4]}]}), "400",
                         "input 'float_input': unknown datatype 'FLOAT'"),
    "binary size vs shape": (raw_case(binary_input(28), X.tobytes()[:28]), "400",
                             "input 'float_input': binary_data_size is 28 bytes, but shape [2,4] of FP32 needs 32"),
    "truncated binary body": (raw_case(binary_input(32), X.tobytes()[:20]), "400",
                              "input 'float_input' declares binary_data_size 32 at byte 0 of the binary data, but "
                              "only 20 bytes are left: the request is truncated"),
    "header past the body": (raw_case(binary_input(32), X.tobytes(), header_length=10_000), "400",
                             "Inference-Header-Content-Length is 10000 but the body has only"),
    "bytes left over": (raw_case(binary_input(32), X.tobytes() + b"\0" * 4), "400",
                        "4 bytes of binary data follow the last input's"),
    "inputs not an array": (raw_case({"inputs": {"name": "float_input"}}), "400",
                            "'inputs' must be a non-empty array of {name, datatype, shape, data} objects, got a "
                            "JSON object"),
    "no inputs": (raw_case({"inputs": []}), "400", "objects, got an empty array"),
    "an empty object": (raw_case({}), "400", "objects, got no 'inputs'"),
    "an input that is not an object": (raw_case({"inputs": [None]}), "400",
                                       "input 0 must be an object with a string 'name', got a JSON null"),
    "an input named by a number": (raw_case({"inputs": [{"name": 1}]}), "400",
                                   "input 0 must be an object with a string 'name', got a JSON number 'name'"),
    "outputs not an array": (raw_case({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4],
                                                   "data": [1, 2, 3, 4]}], "outputs": "proba"}), "400",
                             "'outputs' must be an array of {name, parameters?} objects, got a JSON string"),
    "an output with no name": (raw_case({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4],
                                                     "data": [1, 2, 3, 4]}], "outputs": [{}]}), "400",
                               "output 0 of 'outputs' must be an object with a string 'name', got an object with "
                               "no 'name'"),
    "an input given twice": (raw_case({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4],
                                                   "data": [1, 2, 3, 4]}] * 2}), "400",
                             "input 'float_input' is given twice for model 'iris'"),
    "an output asked for twice": (raw_case({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4],
                                                        "data": [1, 2, 3, 4]}],
                                            "outputs": [{"name": "output_label"},
                                                        {"name": "output_label", "parameters": {"binary_data": True}}]}),
                                  "400", "output 'output_label' is asked for twice in 'outputs'"),
    "header length past the JSON": (raw_case(binary_input(32), X.tobytes(), header_length=len(orjson.dumps(
        binary_input(32))) + 5), "400", "bytes (Inference-Header-Content-Length) are not the JSON header: malformed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_the_problem_store_nothing_and_the_server_answers_after(v2, case):
    run, status, message = REFUSALS[case]
    before = v2.stored()

    with pytest.raises(InferenceServerException) as err:
        run(v2)

    assert err.value.status() == status
    assert message in err.value.message()
    assert v2.stored() == before
    assert v2.client.is_server_live()
    (want, _) = mf_raw_run(IRIS, {"float_input": X})
    np.testing.assert_array_equal(v2.infer("iris", {"float_input": X}).as_numpy("output_label"), want)


def test_bytes_elements_that_disagree_with_the_shape(v2):
    data = struct.pack("<I", 1) + b"a"  # one element where the shape says three
    head = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 3], "parameters": {"binary_data_size": 5}}]}
    with pytest.raises(InferenceServerException) as err:
        raw_case(head, data, model="id_string")(v2)
    assert err.value.status() == "400" and "element 1 of 3 has no 4-byte length" in err.value.message()


def test_a_client_that_closes_its_connection_cancels_its_run(v2):
    import socket
    import time
    import urllib.parse

    x = mf_spin_input(FOREVER)
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]})
    body = head + x.tobytes()
    parts = urllib.parse.urlsplit(v2.url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall((f"POST {parts.path}v2/models/spin/infer HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                  f"Authorization: token {v2.server.token}\r\nInference-Header-Content-Length: {len(head)}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    time.sleep(0.5)  # running
    sock.close()

    deadline = time.monotonic() + 10
    while "prediction of model 'spin' cancelled" not in v2.server.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "499 POST" in v2.server.log and "prediction of model 'spin' cancelled" in v2.server.log
    assert v2.client.is_server_live()
