"""The Jupyter server extension in-process (pytest-jupyter), on both backends, with real models.

Every server here runs with ``ServerApp.allow_unauthenticated_access=False`` and the base_url ``/a%40b/`` that
``jp_fetch`` prefixes; predictions are compared with raw onnxruntime.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from urllib.parse import parse_qsl

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from modelforge_jupyter.server_extension import app as app_module
from modelforge_jupyter.server_extension.app import ENV_VARS, SETTINGS_TRAITS, ModelForgeApp
from modelforge_jupyter.core.settings import Settings

from .mf_plugin import (
    MF_SECRET,
    POSTGRES_URL,
    SAMPLES,
    mf_bad_setting_values,
    mf_external_model,
    mf_identity_model,
    mf_proc_status,
    mf_raw_outputs,
    mf_raw_providers,
    mf_raw_run,
    mf_reset_peak_rss,
    mf_scale_model,
    mf_zipmap,
)

IRIS = SAMPLES / "iris.onnx"
IRIS_V2 = SAMPLES / "iris_v2.onnx"
TOKEN_MESSAGE = "authentication required: send the Jupyter server's token as the header 'Authorization: token <token>'"


@pytest.fixture
def mf_server_overrides() -> dict:
    """Extra ``ModelForgeApp`` config for one test (parametrize it to override)."""
    return {}


@pytest.fixture
def mf_serverapp_overrides() -> dict:
    """Extra ``ServerApp`` config for one test (parametrize it to override)."""
    return {}


@pytest.fixture
def mf_env() -> dict:
    """Environment variables set before the server starts (parametrize it to override)."""
    return {}


@pytest.fixture
def mf_config_py() -> str:
    """Text of a ``jupyter_server_config.py`` in the server's config dir (parametrize it to override)."""
    return ""


@pytest.fixture
def mf_environ():
    """Restore ``os.environ`` after the test: the app exports its settings into it for kernels."""
    saved = os.environ.copy()
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def jp_server_config(
    mf_environ, mf_settings, mf_server_overrides, mf_serverapp_overrides, mf_env, mf_config_py, jp_config_dir
):
    os.environ.update(mf_env)
    if mf_config_py:
        (jp_config_dir / "jupyter_server_config.py").write_text(mf_config_py)
    return {
        "ServerApp": {
            "jpserver_extensions": {"modelforge_jupyter": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
            **mf_serverapp_overrides,
        },
        # a setting the test gives in the environment is not also given as a trait (a trait wins over the environment)
        "ModelForgeApp": {**{k: v for k, v in mf_settings.items() if ENV_VARS.get(k) not in mf_env}, "max_workers": 2,
                          **mf_server_overrides},
    }


@pytest.fixture
def jp_serverapp(jp_serverapp, jp_asyncio_loop):
    """The server with ModelForge loaded; the extension stops before the backend fixtures drop their database."""
    yield jp_serverapp
    jp_asyncio_loop.run_until_complete(mf_app_of(jp_serverapp).stop_extension())


@pytest.fixture
def mf_app(jp_serverapp) -> ModelForgeApp:
    return mf_app_of(jp_serverapp)


def mf_app_of(serverapp) -> ModelForgeApp:
    return serverapp.extension_manager.extension_points["modelforge_jupyter"].app


async def mf_call(jp_fetch, method: str, *path: str, body=None, token: bool = True, **kwargs):
    """(status, decoded JSON body or None) of ``method <base_url>modelforge/<path>``; never raises on 4xx/5xx."""
    headers = kwargs.pop("headers", {})
    if not token:
        headers["Authorization"] = ""
    if isinstance(body, (dict, list)):
        body = orjson.dumps(body)
    r = await jp_fetch(
        "modelforge", *path, method=method, body=body, headers=headers, raise_error=False,
        allow_nonstandard_methods=True, **kwargs,
    )
    assert r.code == 204 or r.headers["Content-Type"] == "application/json", r.headers
    return r.code, (orjson.loads(r.body) if r.body else None)


async def mf_put(jp_fetch, name: str, path_or_bytes) -> tuple[int, dict]:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return await mf_call(
        jp_fetch, "PUT", "models", name, body=data, headers={"Content-Type": "application/octet-stream"}
    )


# -- health ---------------------------------------------------------------------------------------------------------
async def test_health_answers_without_token_with_the_documented_fields(jp_fetch, mf_backend):
    code, health = await mf_call(jp_fetch, "GET", "health", token=False)

    assert code == 200
    assert list(health) == ["status", "database", "redis", "celery", "version", "environment", "timestamp"]
    assert (health["status"], health["database"], health["celery"]) == ("healthy", "connected", "eager")
    assert health["redis"] == ("connected" if mf_backend == "services" else "not_configured")
    assert health["environment"] == "development" and health["timestamp"].endswith("Z")


@pytest.mark.parametrize("mf_backend", ["services"])
@pytest.mark.parametrize("mf_server_overrides", [{"redis_url": "redis://127.0.0.1:1/0"}])
async def test_health_is_degraded_200_when_redis_is_down_and_predictions_still_serve(jp_fetch, mf_forge):
    mf_forge.register("iris", IRIS)  # by another process of the same registry, whose Redis is up

    code, health = await mf_call(jp_fetch, "GET", "health", token=False)
    pcode, result = await mf_call(jp_fetch, "POST", "predict", body={"model_id": "iris", "input_data": [[5, 3, 1, 0]]})

    assert (code, health["status"], health["redis"]) == (200, "degraded", "disconnected")
    assert health["database"] == "connected"
    assert (pcode, result["output_data"]["output_label"], result["cached"]) == (200, [0], False)


@pytest.mark.parametrize("mf_backend", ["services"])
async def test_health_is_unhealthy_503_when_the_database_is_gone(jp_fetch, mf_settings):
    # Given a server on a PostgreSQL registry, When that database is dropped under it
    url = sa.engine.make_url(mf_settings["database_url"])
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{url.database}" WITH (FORCE)'))
    admin.dispose()

    code, health = await mf_call(jp_fetch, "GET", "health", token=False)
    mcode, body = await mf_call(jp_fetch, "GET", "models")
    rcode, ready = await mf_call(jp_fetch, "GET", "health", "ready", token=False)

    # Then health says so with 503, and the API answers 503 JSON; the server is live but not ready
    assert (code, health["status"], health["database"]) == (503, "unhealthy", "disconnected")
    assert mcode == 503 and body["message"].startswith("model registry database unavailable")
    assert rcode == 503 and ready["message"].startswith("model registry database unavailable")
    assert await mf_call(jp_fetch, "GET", "health", "live", token=False) == (200, {"status": "alive"})


@pytest.fixture
def mf_missing_database():
    """(URL, name) of a PostgreSQL database that does not exist yet; dropped after the test if the test created it."""
    url = sa.engine.make_url(POSTGRES_URL).set(database=MISSING_DB)
    yield url.render_as_string(hide_password=False), MISSING_DB
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{MISSING_DB}" WITH (FORCE)'))
    admin.dispose()


MISSING_DB = f"mf_test_missing_{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("mf_backend", ["services"])
@pytest.mark.parametrize(
    "mf_server_overrides",
    [{"database_url": sa.engine.make_url(POSTGRES_URL).set(database=MISSING_DB).render_as_string(False)}],
)
async def test_server_started_before_its_database_answers_503_then_heals(mf_missing_database, jp_fetch):
    # Given a server whose registry database did not exist when it started
    code, health = await mf_call(jp_fetch, "GET", "health", token=False)
    assert code == 503 and (health["status"], health["database"]) == ("unhealthy", "disconnected")
    assert set(health) == {"status", "database", "redis", "celery", "version", "environment", "timestamp"}
    code, err = await mf_call(jp_fetch, "GET", "models")
    assert code == 503 and err["message"].startswith("model registry database unavailable: ")
    code, err = await mf_call(jp_fetch, "GET", "health", "ready", token=False)
    assert code == 503 and err["message"].startswith("model registry database unavailable: ")

    # When the database appears
    url, name = mf_missing_database
    admin = sa.create_engine(sa.engine.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    await asyncio.sleep(app_module.RETRY_AFTER)  # the back-off after the failed attempt at start-up

    # Then the next requests build the ModelForge and are served
    code, health = await mf_call(jp_fetch, "GET", "health", token=False)
    assert (code, health["status"], health["database"]) == (200, "healthy", "connected")
    assert await mf_call(jp_fetch, "GET", "health", "ready", token=False) == (200, {"status": "ready"})
    assert (await mf_put(jp_fetch, "iris", IRIS))[0] == 201


@pytest.mark.parametrize("mf_backend", ["embedded"])
@pytest.mark.parametrize("mf_server_overrides", [{"model_instances": 0}, {"model_batching": {"iris": {"x": 1}}}])
async def test_a_setting_out_of_range_makes_every_endpoint_answer_503_naming_it(jp_fetch, mf_server_overrides):
    setting = "model_instances" if "model_instances" in mf_server_overrides else "model_batching['iris'].x"

    for method, path, body in [("GET", "health", None), ("GET", "models", None),
                               ("POST", "predict", {"model_id": "iris", "input_data": [[1, 2, 3, 4]]})]:
        code, err = await mf_call(jp_fetch, method, path, body=body)
        assert code == 503 and err["message"].startswith(f"ModelForge is misconfigured: {setting}"), err


# -- models ---------------------------------------------------------------------------------------------------------
async def test_put_creates_201_then_updates_200_and_equal_bytes_add_no_version(jp_fetch, jp_base_url):
    r = await jp_fetch("modelforge", "models", "iris", method="PUT", body=IRIS.read_bytes())
    created = orjson.loads(r.body)
    code2, updated = await mf_put(jp_fetch, "iris", IRIS_V2)
    code3, same = await mf_put(jp_fetch, "iris", IRIS_V2)

    assert r.code == 201 and r.headers["Location"] == f"{jp_base_url}modelforge/models/iris"
    assert (created["name"], created["version"], created["versions"]) == ("iris", 1, [1])
    assert created["inputs"] == [{"name": "float_input", "dtype": "float32", "shape": [None, 4], "optional": False}]
    assert [o["name"] for o in created["outputs"]] == ["output_label", "output_probability"]
    assert created["sha256"] == hashlib.sha256(IRIS.read_bytes()).hexdigest()
    assert (code2, updated["version"], updated["versions"], updated["id"]) == (200, 2, [1, 2], created["id"])
    assert (code3, same) == (200, updated)


async def test_get_list_and_versions_of_models(jp_fetch):
    await mf_put(jp_fetch, "iris", IRIS)
    await mf_put(jp_fetch, "iris", IRIS_V2)
    await mf_put(jp_fetch, "diabetes", SAMPLES / "diabetes.onnx")

    code, models = await mf_call(jp_fetch, "GET", "models")
    _, latest = await mf_call(jp_fetch, "GET", "models", "iris")
    _, v1 = await mf_call(jp_fetch, "GET", "models", "iris", params={"version": 1})
    _, by_id = await mf_call(jp_fetch, "GET", "models", latest["id"])

    assert code == 200 and [(m["name"], m["version"]) for m in models] == [("diabetes", 1), ("iris", 2)]
    assert set(latest) == {
        "id", "name", "version", "sha256", "inputs", "outputs", "created_at", "updated_at", "size_bytes", "versions",
        "conversion", "preparation",
    }
    assert latest["conversion"] is None  # registered as ONNX; a converted version's: tests/test_convert.py
    assert latest["preparation"] is None  # not prepared; a prepared version's: tests/test_prepare.py
    assert latest["version"] == 2 and latest["created_at"] <= latest["updated_at"]
    assert v1["version"] == 1 and v1["sha256"] == hashlib.sha256(IRIS.read_bytes()).hexdigest()
    assert by_id == latest


async def test_delete_one_version_then_the_model(jp_fetch):
    await mf_put(jp_fetch, "iris", IRIS)
    await mf_put(jp_fetch, "iris", IRIS_V2)

    assert await mf_call(jp_fetch, "DELETE", "models", "iris", params={"version": 1}) == (204, None)
    assert (await mf_call(jp_fetch, "GET", "models", "iris", params={"version": 1}))[0] == 404
    assert (await mf_call(jp_fetch, "GET", "models", "iris"))[1]["versions"] == [2]
    assert await mf_call(jp_fetch, "DELETE", "models", "iris") == (204, None)
    assert await mf_call(jp_fetch, "GET", "models", "iris") == (404, {"message": "model 'iris' is not registered"})
    assert await mf_call(jp_fetch, "GET", "models") == (200, [])
    assert (await mf_call(jp_fetch, "DELETE", "models", "iris"))[0] == 404


async def test_unload_drops_the_session_and_the_next_predict_reloads_it(jp_fetch, mf_app):
    _, rec = await mf_put(jp_fetch, "iris", IRIS)
    request = {"model_id": "iris", "input_data": [[5.1, 3.5, 1.4, 0.2]], "use_cache": False}

    assert rec["sha256"] in mf_app.forge.engine.loaded()
    assert await mf_call(jp_fetch, "POST", "models", "iris", "unload") == (200, {"name": "iris", "unloaded": True})
    assert rec["sha256"] not in mf_app.forge.engine.loaded()
    assert await mf_call(jp_fetch, "POST", "models", "iris", "unload") == (200, {"name": "iris", "unloaded": False})
    code, result = await mf_call(jp_fetch, "POST", "predict", body=request)
    assert (code, result["output_data"]["output_label"]) == (200, [0])
    assert rec["sha256"] in mf_app.forge.engine.loaded()
    assert (await mf_call(jp_fetch, "POST", "models", "nope", "unload"))[0] == 404


# -- predict --------------------------------------------------------------------------------------------------------
async def test_a_misspelt_predict_field_is_a_400_not_the_latest_version(jp_fetch):
    # Given iris at versions 1 and 2
    await mf_put(jp_fetch, "iris", SAMPLES / "iris.onnx")
    await mf_put(jp_fetch, "iris", SAMPLES / "iris_v2.onnx")

    # When a client misspells "version" (the old server ignored it and answered from v2)
    body = {"model_id": "iris", "input_data": [[5.1, 3.5, 1.4, 0.2]], "versoin": 1}
    code, answer = await mf_call(jp_fetch, "POST", "predict", body=body)

    # Then it is refused, naming the field and the fields there are
    assert (code, answer["message"]) == (
        400, "unknown field 'versoin' in the predict request; it takes model_id, input_data, use_cache, version")


@pytest.mark.parametrize("batch", [1, 1000])
async def test_predict_equals_raw_onnxruntime_at_batch(jp_fetch, batch):
    rng = np.random.default_rng(batch)
    for name, data in [("breast_cancer_rf", load_breast_cancer().data), ("diabetes", load_diabetes().data)]:
        path = SAMPLES / f"{name}.onnx"
        _, rec = await mf_put(jp_fetch, name, path)
        X = data[rng.integers(0, len(data), batch)].astype(np.float32)

        code, result = await mf_call(
            jp_fetch, "POST", "predict", body={"model_id": name, "input_data": {"float_input": X.tolist()}}
        )

        assert code == 200
        assert list(result) == [
            "prediction_id", "model_id", "model_version", "output_data", "inference_time_ms", "cached"
        ]
        assert (result["model_id"], result["model_version"], result["cached"]) == (rec["id"], 1, False)
        assert result["inference_time_ms"] > 0 and len(result["prediction_id"]) == 36
        raw = mf_raw_run(path, {"float_input": X})
        assert list(result["output_data"]) == [o["name"] for o in rec["outputs"]]
        for got, want in zip(result["output_data"].values(), raw):
            np.testing.assert_array_equal(np.asarray(got, dtype=want.dtype), want)
            assert len(got) == batch


async def test_second_post_is_a_cache_hit_and_use_cache_false_is_not(jp_fetch):
    _, rec = await mf_put(jp_fetch, "iris", IRIS)
    X = load_iris().data[:3].astype(np.float32)
    request = {"model_id": "iris", "input_data": X.tolist()}  # bare list: single-input model

    _, first = await mf_call(jp_fetch, "POST", "predict", body=request)
    _, second = await mf_call(jp_fetch, "POST", "predict", body=request)
    _, by_id = await mf_call(jp_fetch, "POST", "predict", body={**request, "model_id": rec["id"]})
    _, fresh = await mf_call(jp_fetch, "POST", "predict", body={**request, "use_cache": False})

    assert (first["cached"], second["cached"], by_id["cached"], fresh["cached"]) == (False, True, True, False)
    assert second["output_data"] == first["output_data"] == by_id["output_data"] == fresh["output_data"]
    assert second["prediction_id"] != first["prediction_id"]
    assert first["output_data"] == mf_raw_outputs(IRIS, {"float_input": X})


async def test_version_selects_the_model_version(jp_fetch):
    await mf_put(jp_fetch, "iris", IRIS)
    await mf_put(jp_fetch, "iris", IRIS_V2)
    X = load_iris().data[50:53].astype(np.float32)

    request = {"model_id": "iris", "input_data": X.tolist()}
    _, new = await mf_call(jp_fetch, "POST", "predict", body=request)
    _, old = await mf_call(jp_fetch, "POST", "predict", body={**request, "version": 1})

    assert (new["model_version"], old["model_version"]) == (2, 1)
    assert new["output_data"]["output_probability"] == mf_zipmap(mf_raw_run(IRIS_V2, {"float_input": X})[1])
    assert old["output_data"]["output_probability"] == mf_zipmap(mf_raw_run(IRIS, {"float_input": X})[1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
async def test_numbers_round_trip_exactly(jp_fetch, dtype):
    await mf_put(jp_fetch, "identity", mf_identity_model(dtype, [None, 3]).SerializeToString())
    extremes = {
        "float32": [3.4028235e38, 1.4e-45, 1.1754944e-38],  # max, smallest subnormal, smallest normal
        "float64": [1.7976931348623157e308, 5e-324, 2.2250738585072014e-308],
    }[dtype]
    values = np.array([[0.1, 1 / 3, -2.5e-7], extremes, [16777217.0, 0.3, -0.0]]).astype(dtype)

    _, result = await mf_call(jp_fetch, "POST", "predict", body={"model_id": "identity", "input_data": values.tolist()})

    got = np.asarray(result["output_data"]["y"], dtype=dtype)
    np.testing.assert_array_equal(got, values)
    assert got.tobytes() == values.tobytes()  # bit for bit, -0.0 and subnormals included


async def test_predict_is_logged_at_debug_with_batch_and_model_changes_at_info(jp_fetch, mf_app, caplog):
    assert logging.getLogger("modelforge_jupyter").getEffectiveLevel() == mf_app.serverapp.log_level
    mf_app.log.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger=mf_app.log.name)
    caplog.set_level(logging.DEBUG, logger="modelforge_jupyter")  # as --debug would
    try:
        await mf_put(jp_fetch, "iris", IRIS)
        await mf_call(jp_fetch, "POST", "predict", body={"model_id": "iris", "input_data": [[1, 2, 3, 4]] * 3})
    finally:
        mf_app.log.removeHandler(caplog.handler)

    changes = [r for r in caplog.records if r.name == "modelforge_jupyter.core.registry" and r.levelno == logging.INFO]
    predictions = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "batch" in r.getMessage()]
    assert any(r.getMessage().startswith("registered model 'iris' v1") for r in changes)
    assert len(predictions) == 1 and predictions[0].startswith("predict iris v1: batch 3, ")
    assert predictions[0].endswith("cached=False")


# -- errors: JSON, naming the problem ---------------------------------------------------------------------------------
async def test_bad_requests_are_400_json_naming_the_problem(jp_fetch):
    await mf_put(jp_fetch, "iris", IRIS)

    async def predict(body):
        return await mf_call(jp_fetch, "POST", "predict", body=body)

    code, err = await predict(b'{"model_id": "iris", ')
    assert code == 400 and err["message"].startswith("malformed JSON body: ")
    assert await predict(b"[1, 2]") == (400, {"message": "the body must be a JSON object, got a JSON array"})
    assert (await predict(b" "))[1] == {"message": "empty request body: send a JSON object"}
    assert (await predict({"input_data": [[1, 2, 3, 4]]}))[1]["message"].startswith("missing 'model_id'")
    assert (await predict({"model_id": "iris"}))[1]["message"].startswith("missing 'input_data'")
    assert (await predict({"model_id": "iris", "input_data": [[1, 2, 3, 4]], "use_cache": "no"}))[0] == 400
    assert (await predict({"model_id": "iris", "input_data": [[1, 2, 3, 4]], "version": "1"}))[0] == 400
    assert (await predict({"model_id": "iris", "input_data": [[1, 2, 3, 4]], "version": 0}))[0] == 400

    code, err = await predict({"model_id": "iris", "input_data": {"x": [[1, 2, 3, 4]]}})
    assert code == 400 and "float_input" in err["message"] and "'x'" in err["message"]
    code, err = await predict({"model_id": "iris", "input_data": [[1, 2, 3]]})
    assert code == 400
    assert err["message"] == "input 'float_input': expected float32 [?, 4], got shape [1, 3] (axis 1 must be 4)"
    code, err = await predict({"model_id": "iris", "input_data": [["a", "b", "c", "d"]]})
    assert code == 400 and err["message"].startswith("input 'float_input': expected float32 [?, 4], got ")
    assert await predict({"model_id": "nope", "input_data": [[1, 2, 3, 4]]}) == (
        404, {"message": "model 'nope' is not registered"}
    )
    code, err = await predict({"model_id": "iris", "input_data": [[1, 2, 3, 4]], "version": 9})
    assert code == 404 and "9" in err["message"]
    code, err = await mf_call(jp_fetch, "GET", "models", "iris", params={"version": "two"})
    assert (code, err) == (400, {"message": "version must be a whole number >= 1, got 'two'"})
    code, err = await mf_call(jp_fetch, "GET", "models", "iris", params={"version": ""})
    assert (code, err) == (400, {"message": "version must be a whole number >= 1, got ''"})


async def test_invalid_onnx_upload_is_400_and_leaves_the_registry_unchanged(jp_fetch):
    await mf_put(jp_fetch, "iris", IRIS)
    _, before = await mf_call(jp_fetch, "GET", "models")

    for bad in (b"not onnx at all", IRIS.read_bytes()[:300]):
        for name in ("iris", "broken"):
            code, err = await mf_put(jp_fetch, name, bad)
            assert code == 400 and err["message"].startswith("not a valid ONNX model")
    code, err = await mf_call(jp_fetch, "PUT", "models", "broken", body=b"")
    assert (code, err) == (400, {"message": "not a valid ONNX model: the file is empty"})

    assert await mf_call(jp_fetch, "GET", "models") == (200, before)


async def test_put_of_a_bad_name_is_400_and_changes_nothing(jp_fetch):
    _, iris = await mf_put(jp_fetch, "iris", IRIS)

    # jp_fetch escapes the path: "iris\n" is sent as PUT modelforge/models/iris%0A
    for name in ("iris\n", "iris\r\n", "\niris", iris["id"], str(uuid.uuid4()), iris["id"].upper()):
        code, err = await mf_put(jp_fetch, name, IRIS_V2)
        assert code == 400 and err["message"].startswith("invalid model name "), (name, code, err)

    assert await mf_call(jp_fetch, "GET", "models") == (200, [iris])


async def test_put_of_a_model_with_external_data_is_400_naming_no_path(jp_fetch, tmp_path, monkeypatch):
    # Given README.md in the server's working directory, which the model's initializer points at
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_bytes(MF_SECRET)

    code, err = await mf_put(jp_fetch, "ext", mf_external_model("initializer").SerializeToString())

    assert code == 400 and "external" in err["message"] and "save_as_external_data=False" in err["message"]
    assert str(tmp_path) not in err["message"] and "README" not in err["message"]
    assert await mf_call(jp_fetch, "GET", "models") == (200, [])
    code, _ = await mf_call(jp_fetch, "POST", "predict", body={"model_id": "ext", "input_data": {}})
    assert code == 404


async def test_an_optional_input_is_in_the_metadata_and_can_be_overridden(jp_fetch):
    _, rec = await mf_put(jp_fetch, "scaled", mf_scale_model().SerializeToString())
    body = {"model_id": "scaled", "input_data": {"x": [[1.5, -2.0]], "scale": 3}}
    code, result = await mf_call(jp_fetch, "POST", "predict", body=body)

    assert rec["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 2], "optional": False},
                             {"name": "scale", "dtype": "float32", "shape": [], "optional": True}]
    assert code == 200 and result["output_data"] == {"y": [[4.5, -6.0]]}


async def test_names_from_a_model_file_are_escaped_in_the_answer_and_the_log(jp_fetch, mf_app, caplog):
    name = "x\nWARNING forged"
    await mf_put(jp_fetch, "m", mf_identity_model("float32", [None, 3], name=name).SerializeToString())
    mf_app.log.addHandler(caplog.handler)
    try:
        code, err = await mf_call(jp_fetch, "POST", "predict", body={"model_id": "m", "input_data": [[1, 2]]})
    finally:
        mf_app.log.removeHandler(caplog.handler)

    assert code == 400 and repr(name) in err["message"]
    logged = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert logged and all("\n" not in line for line in logged)


async def test_wrong_method_is_405_json_and_unknown_path_404_json(jp_fetch):
    r = await jp_fetch("modelforge", "predict", method="GET", raise_error=False)
    assert (r.code, r.headers["Allow"]) == (405, "POST")
    assert orjson.loads(r.body) == {"message": "GET is not allowed here; allowed: POST"}
    assert await mf_call(jp_fetch, "PATCH", "models", "iris", body=b"{}") == (
        405, {"message": "PATCH is not allowed here; allowed: GET, HEAD, DELETE, PUT"}
    )
    assert (await mf_call(jp_fetch, "DELETE", "health"))[0] == 405
    code, err = await mf_call(jp_fetch, "GET", "nope")
    assert (code, err) == (404, {"message": "no ModelForge endpoint at /a%40b/modelforge/nope"})


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", ("predict",), {"model_id": "iris", "input_data": [[1, 2, 3, 4]]}),
        ("GET", ("models",), None),
        ("GET", ("models", "iris"), None),
        ("PUT", ("models", "iris"), IRIS_V2.read_bytes()),
        ("DELETE", ("models", "iris"), None),
        ("POST", ("models", "iris", "unload"), b""),
        ("GET", ("nope",), None),
    ],
)
async def test_no_token_is_403_json_asking_for_the_token_and_changes_nothing(jp_fetch, method, path, body, mf_app):
    await mf_put(jp_fetch, "iris", IRIS)

    assert await mf_call(jp_fetch, method, *path, body=body, token=False) == (403, {"message": TOKEN_MESSAGE})
    wrong = {"Authorization": "token not-the-token"}
    assert await mf_call(jp_fetch, method, *path, body=body, headers=wrong) == (403, {"message": TOKEN_MESSAGE})
    assert [(r.name, r.version) for r in mf_app.forge.models()] == [("iris", 1)]


async def test_body_over_the_limit_is_413_before_it_is_read(jp_fetch, mf_app):
    mf_app.max_body_size = 1024
    big = IRIS.read_bytes() + b"\0" * 1024

    code, err = await mf_put(jp_fetch, "iris", big)
    assert (code, err) == (413, {
        "message": f"request body too large: {len(big)} bytes; the limit is 1024 bytes (ModelForgeApp.max_body_size)"
    })

    async def chunks(write):  # no Content-Length: the limit is enforced while streaming
        for _ in range(4):
            await write(b"\0" * 512)

    r = await jp_fetch("modelforge", "models", "iris", method="PUT", body_producer=chunks, raise_error=False)
    message = orjson.loads(r.body)["message"]
    assert r.code == 413 and message.startswith("request body too large: at least ")
    assert message.endswith("; the limit is 1024 bytes (ModelForgeApp.max_body_size)")
    code, _ = await mf_call(jp_fetch, "POST", "predict", body={"model_id": "iris", "input_data": [[0.5] * 4] * 100})
    assert code == 413
    assert (await mf_put(jp_fetch, "iris", IRIS))[0] == 201  # 690 bytes: under the limit
    assert mf_app.forge.get("iris").version == 1


# -- the IOLoop stays free ------------------------------------------------------------------------------------------
def slow_model(matmuls: int = 120, n: int = 1024) -> bytes:
    """~1 s per run on one thread (2-core x86_64 with onnxruntime 1.32: 8.6 ms per MatMul): x [1, 1] broadcast to
    n x n, then ``matmuls`` n x n MatMuls, then the mean."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "w"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(matmuls)]
    nodes.append(helper.make_node("ReduceMean", [f"h{matmuls}"], ["y"], keepdims=1))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.fixture
def no_gc_pause():
    """The server runs in the test process, whose heap holds the whole session's objects: a full collection there
    can stop every thread, the IOLoop's included, for ~1 s (seen late in a CI run). Frozen, they are not scanned."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


async def test_slow_prediction_does_not_block_the_ioloop(jp_fetch, mf_app, no_gc_pause):
    # Given a model whose every run takes ~1 s on one ONNX Runtime thread
    model = slow_model()
    assert mf_app.forge.engine.intra_op_num_threads == 1  # a server's sessions: server_intra_op_num_threads
    await mf_put(jp_fetch, "slow", model)
    request = {"model_id": "slow", "input_data": [[0.5]], "use_cache": False}

    # When it runs, the server's own status and ModelForge's health are asked meanwhile
    start = time.perf_counter()
    slow = asyncio.ensure_future(mf_call(jp_fetch, "POST", "predict", body=request))
    await asyncio.sleep(0.2)
    latencies = {}
    for path in (("api", "status"), ("modelforge", "health")):
        t0 = time.perf_counter()
        r = await jp_fetch(*path)
        latencies[path[-1]] = time.perf_counter() - t0
        assert r.code == 200
    answered_while_running = not slow.done()
    code, result = await slow
    elapsed = time.perf_counter() - start

    # Then both answered quickly while the prediction was still running, and the prediction is right
    assert answered_while_running and elapsed > 0.7, (elapsed, latencies)
    assert max(latencies.values()) < 0.25, latencies
    assert code == 200
    np.testing.assert_array_equal(
        np.asarray(result["output_data"]["y"], np.float32), mf_raw_run(model, {"x": np.array([[0.5]], np.float32)})[0]
    )


@pytest.mark.parametrize("mf_backend", ["embedded"])
async def test_health_and_model_changes_never_wait_behind_slow_predictions(jp_fetch, mf_app, no_gc_pause):
    # Given four predictions of a slow model on the data plane's two threads (two rounds of runs)
    model = slow_model(matmuls=30)  # ~0.25 s a run on an idle 2-core machine
    await mf_put(jp_fetch, "slow", model)
    request = {"model_id": "slow", "input_data": [[0.5]], "use_cache": False}
    t0 = time.perf_counter()
    assert (await mf_call(jp_fetch, "POST", "predict", body=request))[0] == 200  # loaded: the runs below only run
    one_run = time.perf_counter() - t0
    predictions = [asyncio.ensure_future(mf_call(jp_fetch, "POST", "predict", body=request)) for _ in range(4)]
    await asyncio.sleep(0.1)

    # When health is polled, a model is uploaded and the models are listed meanwhile
    health = []
    for _ in range(5):
        t = time.perf_counter()
        code, body = await mf_call(jp_fetch, "GET", "health", token=False)
        health.append(time.perf_counter() - t)
        assert (code, body["status"]) == (200, "healthy")
    t = time.perf_counter()
    put_code, record = await mf_put(jp_fetch, "iris", IRIS)
    change = time.perf_counter() - t
    list_code, listed = await mf_call(jp_fetch, "GET", "models")
    still_running = sum(not p.done() for p in predictions)
    answers = await asyncio.gather(*predictions)

    # Then each answered at once (the old shared executor made them wait for two runs), while predictions still ran
    assert still_running >= 1, (one_run, health, change)
    assert max(health) < max(0.25, one_run / 2) and change < max(0.5, one_run), (one_run, health, change)
    assert (put_code, record["version"], list_code, [m["name"] for m in listed]) == (201, 1, 200, ["iris", "slow"])
    want = mf_raw_run(model, {"x": np.array([[0.5]], np.float32)})[0]
    for code, result in answers:
        assert code == 200
        np.testing.assert_array_equal(np.asarray(result["output_data"]["y"], np.float32), want)


@pytest.mark.parametrize("mf_backend", ["embedded"])
@pytest.mark.parametrize("mf_server_overrides", [{"shutdown_timeout": 0.5}])
async def test_stop_extension_does_not_wait_for_a_call_stuck_in_a_socket(mf_app, mf_silent_listener):
    # Given a ModelForge call blocked on a server that accepted its connection and never answers (no read deadline)
    conn = socket.create_connection(("127.0.0.1", mf_silent_listener))
    try:
        stuck = mf_app.executor.submit(conn.recv, 1)
        await asyncio.sleep(0.2)

        # When the server stops its extensions
        t0 = time.perf_counter()
        await asyncio.wait_for(mf_app.stop_extension(), 10)
        took = time.perf_counter() - t0

        # Then it waited shutdown_timeout, not for the stuck call, whose daemon thread cannot hold the process
        assert took < 3.0 and not stuck.done(), took
        alive = [t for t in threading.enumerate() if t.name.startswith("modelforge")]
        assert alive and all(t.daemon for t in alive), alive
        assert mf_app.forge is None
    finally:
        conn.shutdown(socket.SHUT_RDWR)  # the stuck call returns; nothing outlives the test
        conn.close()
    assert stuck.result(timeout=5) == b""


class TestServicesThatAcceptAndNeverAnswer:
    @pytest.fixture
    def mf_server_overrides(self, mf_silent_listener) -> dict:
        silent = f"127.0.0.1:{mf_silent_listener}"
        return {"database_url": f"postgresql+psycopg://postgres@{silent}/mf", "database_timeout": 2.0,
                "celery_broker_url": f"redis://{silent}/0", "broker_timeout": 0.5}

    @pytest.mark.parametrize("mf_backend", ["embedded"])
    async def test_health_and_requests_answer_within_their_deadlines(self, jp_fetch, mf_app):
        # Given a registry database and a broker that accept connections and never answer (the server started
        # anyway: its first connect timed out after database_timeout)
        async def timed(*args, **kwargs):
            t0 = time.perf_counter()
            answer = await asyncio.wait_for(mf_call(jp_fetch, *args, **kwargs), 30)
            return answer, time.perf_counter() - t0

        # When health and the model list are asked, several at once
        answers = await asyncio.gather(*[timed("GET", "health", token=False) for _ in range(4)],
                                       timed("GET", "models"))

        # Then each answers 503 naming the database within its deadline (the old server's health never answered)
        for (code, health), took in answers[:4]:
            assert (code, health["status"], health["database"], health["celery"]) == (
                503, "unhealthy", "disconnected", "disconnected")
            assert took < 8, took
        (code, error), took = answers[4]
        assert code == 503 and error["message"].startswith("model registry database unavailable") and took < 8


@pytest.mark.parametrize("mf_backend", ["embedded"])
async def test_health_checks_of_concurrent_pollers_share_one_check(jp_fetch, mf_app):
    calls = 0
    health = mf_app.forge.health

    def counted():
        nonlocal calls
        calls += 1
        time.sleep(0.3)  # a slow check (a database far away)
        return health()

    mf_app.forge.health = counted
    answers = await asyncio.gather(*(mf_call(jp_fetch, "GET", "health", token=False) for _ in range(8)))

    assert [a[0] for a in answers] == [200] * 8 and calls <= 2, calls


# -- app: settings, environment, lifecycle ---------------------------------------------------------------------------
def test_app_has_a_trait_for_every_core_setting_and_knows_its_environment_variable():
    app_traits, unconfigured = ModelForgeApp.class_traits(config=True), ModelForgeApp()

    for name, trait in Settings.class_traits(config=True).items():
        assert type(app_traits[name]) is type(trait) and app_traits[name].help.startswith(trait.help)
        assert getattr(unconfigured, name) is None  # unset: the environment's value
    assert set(SETTINGS_TRAITS) - set(ENV_VARS) == {"cache_retry_after"}  # the one setting without a variable
    assert {
        "database_url": "DATABASE_URL", "redis_url": "REDIS_URL", "celery_broker_url": "CELERY_BROKER_URL",
        "cache_ttl": "CACHE_TTL", "cache_prediction_ttl": "CACHE_PREDICTION_TTL",
        "cache_key_prefix": "CACHE_KEY_PREFIX",
        "cache_prediction_enabled": "CACHE_PREDICTION_ENABLED", "cache_dir": "MODELFORGE_CACHE_DIR",
        "environment": "ENVIRONMENT", "max_sessions": "MODELFORGE_MAX_SESSIONS",
    }.items() <= ENV_VARS.items()
    assert (app_traits["max_workers"].default_value, app_traits["max_body_size"].default_value) == (4, 64 * 2**20)
    assert (app_traits["control_workers"].default_value, app_traits["shutdown_timeout"].default_value) == (2, 3.0)
    assert all(app_traits[n].help for n in ("max_workers", "max_body_size", "control_workers", "shutdown_timeout"))
    assert {"database_timeout": "MODELFORGE_DATABASE_TIMEOUT", "broker_timeout": "MODELFORGE_BROKER_TIMEOUT",
            "celery_probe_ttl": "MODELFORGE_CELERY_PROBE_TTL"}.items() <= ENV_VARS.items()


@pytest.mark.parametrize("mf_backend", ["embedded"])
@pytest.mark.parametrize("mf_env", [{"CACHE_PREDICTION_TTL": "17", "ENVIRONMENT": "staging", "CACHE_KEY_PREFIX": "e"}])
@pytest.mark.parametrize("mf_config_py", ["c.ModelForgeApp.cache_ttl = 1234\n"])
@pytest.mark.parametrize("mf_server_overrides", [{"cache_key_prefix": "fromconfig", "cache_prediction_enabled": False}])
@pytest.mark.parametrize("jp_argv", [["--ModelForgeApp.max_sessions=3", "--ModelForgeApp.max_workers=3"]])
async def test_config_overrides_environment_and_is_exported_for_kernels(jp_fetch, mf_app, mf_settings):
    settings = mf_app.forge.settings

    assert (settings.max_sessions, mf_app.max_workers, mf_app.executor.max_workers) == (3, 3, 3)  # command line
    assert settings.cache_ttl == 1234  # jupyter_server_config.py
    assert (settings.cache_key_prefix, settings.cache_prediction_enabled) == ("fromconfig", False)  # config beats env
    assert (settings.cache_prediction_ttl, settings.environment) == (17, "staging")  # environment, not configured
    assert settings.database_url == mf_settings["database_url"]
    exported = {var: os.environ[var] for var in ENV_VARS.values()}
    assert (exported["DATABASE_URL"], exported["REDIS_URL"]) == (settings.database_url, "")
    assert exported["CACHE_TTL"] == "1234"
    assert (exported["CACHE_KEY_PREFIX"], exported["CACHE_PREDICTION_ENABLED"]) == ("fromconfig", "false")
    assert (exported["MODELFORGE_MAX_SESSIONS"], exported["ENVIRONMENT"]) == ("3", "staging")
    assert exported["MODELFORGE_CACHE_DIR"] == mf_settings["cache_dir"]
    # a kernel's ModelForge() reads back exactly the server's settings from the exported environment
    in_kernel = Settings()
    assert {n: getattr(in_kernel, n) for n in ENV_VARS} == {n: getattr(settings, n) for n in ENV_VARS}
    assert (await mf_call(jp_fetch, "GET", "health"))[1]["environment"] == "staging"


async def test_stop_extension_shuts_the_executor_and_closes_the_forge(mf_app):
    executor = mf_app.executor

    await mf_app.stop_extension()
    await mf_app.stop_extension()  # idempotent: the server's cleanup calls it again

    assert (mf_app.executor, mf_app.control_executor, mf_app.health_executor, mf_app.forge) == (None,) * 4
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(print)


# -- query parameters: a version given must be one; an unknown parameter is refused ----------------------------------
def mf_versions_in_db(database_url: str) -> list[int]:
    """Every stored version number, read from the registry's own table."""
    from modelforge_jupyter.core.schema import model_versions

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return sorted(conn.scalars(sa.select(model_versions.c.version)))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("version=", "version must be a whole number >= 1, got ''"),
        ("version=%20", "version must be a whole number >= 1, got ' '"),
        ("version=0", "version must be a whole number >= 1, got '0'"),
        ("version=-1", "version must be a whole number >= 1, got '-1'"),
        ("version=1.0", "version must be a whole number >= 1, got '1.0'"),
        ("version=%201", "version must be a whole number >= 1, got ' 1'"),
        ("versoin=1", "unknown query parameter 'versoin' for this endpoint; it takes version"),
        ("version=1&version=2", "query parameter 'version' given 2 times; give it once"),
    ],
)
async def test_delete_with_a_bad_version_parameter_is_400_and_deletes_nothing(jp_fetch, mf_settings, query, message):
    # Given a model with two versions
    await mf_put(jp_fetch, "iris", IRIS)
    await mf_put(jp_fetch, "iris", IRIS_V2)

    # When a DELETE carries an empty, blank, malformed, misspelt or repeated version parameter
    r = await jp_fetch("modelforge/models/iris", method="DELETE", params=parse_qsl(query, keep_blank_values=True),
                       raise_error=False)

    # Then it is refused naming the problem, and both versions remain in the database
    assert (r.code, orjson.loads(r.body)) == (400, {"message": message})
    assert mf_versions_in_db(mf_settings["database_url"]) == [1, 2]
    assert (await mf_call(jp_fetch, "GET", "models", "iris"))[1]["versions"] == [1, 2]


async def test_unknown_query_parameters_are_400_on_every_endpoint_and_jupyters_own_still_work(
    jp_fetch, jp_serverapp
):
    await mf_put(jp_fetch, "iris", IRIS)
    predict = orjson.dumps({"model_id": "iris", "input_data": [[1, 2, 3, 4]]})

    for method, path, body, param in [
        ("GET", "health", None, "verbose"), ("GET", "health/live", None, "x"), ("GET", "health/ready", None, "x"),
        ("POST", "predict", predict, "version"), ("GET", "models", None, "version"),
        ("GET", "models/iris", None, "v"), ("PUT", "models/iris", IRIS_V2.read_bytes(), "name"),
        ("POST", "models/iris/unload", b"", "versions"),
    ]:
        r = await jp_fetch(f"modelforge/{path}", method=method, body=body, params={param: "1"}, raise_error=False)
        assert r.code == 400, (method, path)
        assert orjson.loads(r.body)["message"].startswith(f"unknown query parameter {param!r} for this endpoint; ")
    assert mf_versions_in_db_or_none(jp_serverapp) == [1]  # the refused PUT added no version

    # Jupyter's own parameters: ?token= authenticates, _xsrf and no_track_activity are Jupyter's business
    token = jp_serverapp.identity_provider.token
    r = await jp_fetch("modelforge/models", params={"token": token, "no_track_activity": "1"},
                       headers={"Authorization": ""}, raise_error=False)
    assert r.code == 200 and [m["name"] for m in orjson.loads(r.body)] == ["iris"]
    r = await jp_fetch("modelforge/models/iris", params={"version": "1", "_xsrf": "x"}, raise_error=False)
    assert (r.code, orjson.loads(r.body)["version"]) == (200, 1)


def mf_versions_in_db_or_none(serverapp) -> list[int]:
    return [v for r in mf_app_of(serverapp).forge.models() for v in r.versions]


# -- HEAD: as GET without a body --------------------------------------------------------------------------------------
async def test_head_answers_as_get_without_a_body_and_health_needs_no_token(jp_fetch):
    await mf_put(jp_fetch, "iris", IRIS)

    for path, token, code in [
        ("health", False, 200), ("health/live", False, 200), ("health/ready", False, 200),
        ("models", True, 200), ("models/iris", True, 200), ("models/nope", True, 404), ("nope", True, 404),
        ("models", False, 403), ("models/iris", False, 403),
    ]:
        headers = {} if token else {"Authorization": ""}
        get = await jp_fetch("modelforge", *path.split("/"), headers=dict(headers), raise_error=False)
        head = await jp_fetch("modelforge", *path.split("/"), method="HEAD", headers=dict(headers), raise_error=False)
        assert (head.code, get.code, head.body) == (code, code, b""), path
        assert head.headers["Content-Type"] == "application/json"
        if code == 200 and path != "health":  # health's timestamp may tick between the two
            assert int(head.headers["Content-Length"]) == len(get.body), path
    r = await jp_fetch("modelforge", "predict", method="HEAD", raise_error=False)
    assert (r.code, r.headers["Allow"]) == (405, "POST")


# -- CORS: every answer carries the server's CORS headers ------------------------------------------------------------
ORIGIN = "https://notebooks.example.org"


@pytest.mark.parametrize("mf_backend", ["embedded"])
@pytest.mark.parametrize("mf_serverapp_overrides", [{"allow_origin": ORIGIN, "allow_credentials": True}])
async def test_error_answers_carry_the_same_cors_headers_as_jupyters_api(jp_fetch, mf_app):
    mf_app.max_body_size = 1024
    origin = {"Origin": ORIGIN}
    jupyter_404 = await jp_fetch("api", "contents", "nope", headers=dict(origin), raise_error=False)
    assert jupyter_404.code == 404 and jupyter_404.headers["Access-Control-Allow-Origin"] == ORIGIN

    for method, path, body, headers, code in [
        ("GET", "models", None, {}, 200),
        ("GET", "models/nope", None, {}, 404),
        ("DELETE", "models/nope", None, {"versoin": "1"}, 400),
        ("POST", "predict", b"{", {}, 400),
        ("PUT", "models/x", b"\0" * 2048, {}, 413),
        ("PUT", "models/x", b"x", {"Content-Encoding": "br"}, 415),
        ("PATCH", "models/x", b"{}", {}, 405),
        ("GET", "models", None, {"Authorization": ""}, 403),
        ("GET", "health", None, {"Authorization": ""}, 200),
    ]:
        params = headers.pop("versoin", None) and {"versoin": "1"}
        r = await jp_fetch(f"modelforge/{path}", method=method, body=body, headers={**origin, **headers},
                           params=params, raise_error=False, allow_nonstandard_methods=True)
        assert r.code == code, (method, path, r.body)
        assert r.headers.get("Access-Control-Allow-Origin") == ORIGIN, (method, path, code)
        assert r.headers.get("Access-Control-Allow-Credentials") == "true", (method, path, code)
        assert r.headers["Content-Type"] == "application/json"
    # a CORS preflight is answered whatever the query of the request it asks about
    r = await jp_fetch("modelforge/models/nope", method="OPTIONS", params={"versoin": "1"}, raise_error=False,
                       headers={**origin, "Access-Control-Request-Method": "DELETE", "Authorization": ""})
    assert (r.code, r.headers.get("Access-Control-Allow-Origin")) == (200, ORIGIN)


# -- compressed request bodies --------------------------------------------------------------------------------------
def compress(data: bytes, encoding: str) -> bytes:
    import gzip
    import zlib

    return gzip.compress(data) if encoding == "gzip" else zlib.compress(data)  # tritonclient's two encodings


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_gzip_and_deflate_bodies_are_decompressed(jp_fetch, encoding):
    X = np.tile(load_iris().data, (200, 1)).astype(np.float32)  # 30000 rows
    request = orjson.dumps({"model_id": "iris", "input_data": X.tolist(), "use_cache": False})
    assert len(request) > 1 << 20  # decompressed over several zlib calls (base.INFLATE_STEP)
    headers = {"Content-Encoding": encoding}

    r = await jp_fetch("modelforge", "models", "iris", method="PUT", body=compress(IRIS.read_bytes(), encoding),
                       headers=dict(headers), raise_error=False)
    record = orjson.loads(r.body)
    assert (r.code, record["sha256"]) == (201, hashlib.sha256(IRIS.read_bytes()).hexdigest())
    r = await jp_fetch("modelforge", "predict", method="POST", body=compress(request, encoding),
                       headers=dict(headers), raise_error=False)
    assert r.code == 200, r.body
    assert orjson.loads(r.body)["output_data"] == mf_raw_outputs(IRIS, {"float_input": X})


async def test_compressed_bodies_are_limited_decompressed_and_bad_ones_refused(jp_fetch, mf_app):
    # Given a 1 KiB body limit
    mf_app.max_body_size = 1024
    bomb = compress(b"\0" * (64 * 2**20), "gzip")  # 64 MiB of zeros in ~64 KB
    assert len(bomb) < 100_000

    async def put(body, encoding):
        r = await jp_fetch("modelforge", "models", "iris", method="PUT", body=body,
                           headers={"Content-Encoding": encoding}, raise_error=False)
        return r.code, orjson.loads(r.body).get("message", r.body)

    # When a small compressed body expands past the limit, Then 413 counting decompressed bytes: the first chunk
    # decompressed stops at limit + 1 bytes, however far the rest would have gone
    assert await put(bomb, "gzip") == (
        413, "request body too large: at least 1025 bytes decompressed; the limit is 1024 bytes "
        "(ModelForgeApp.max_body_size)"
    )
    # a body that is no such data, a truncated one, one with trailing bytes, an unknown encoding
    code, message = await put(b"not gzip at all", "gzip")
    assert code == 400 and message.startswith("request body is not valid gzip data: ")
    code, message = await put(compress(IRIS.read_bytes(), "gzip")[:-12], "gzip")
    assert (code, message) == (400, "request body is truncated gzip data: its stream does not end")
    code, message = await put(compress(IRIS.read_bytes(), "deflate") + b"junk", "deflate")
    assert (code, message) == (400, "request body has data after the end of its compressed stream")
    assert await put(IRIS.read_bytes(), "br") == (
        415, "Content-Encoding 'br' is not supported; send the body uncompressed, gzip or deflate"
    )
    # nothing was registered; a compressed model under the limit once decompressed is taken (690 bytes)
    assert (await mf_call(jp_fetch, "GET", "models"))[1] == []
    assert (await put(compress(IRIS.read_bytes(), "gzip"), "gzip"))[0] == 201
    assert (await put(IRIS.read_bytes(), "identity"))[0] == 200


# -- a misconfigured extension: loaded, live, not ready, every endpoint a 503 naming the setting ---------------------
@pytest.mark.parametrize("mf_backend", ["embedded"])
@pytest.mark.parametrize(
    ("mf_server_overrides", "setting"),
    [
        ({"database_url": "postgresql+psycopg2://modelforge:s3cret-pw@127.0.0.1:5432/mf"}, "DATABASE_URL "),
        ({"database_url": "modelforge:s3cret-pw@@127.0.0.1/mf"}, "DATABASE_URL "),
        ({"max_sessions": 0}, "max_sessions must be >= 1, got 0"),
        ({"execution_providers": "CPUExecutionProvider,NopeExecutionProvider"}, "execution_providers: "),
        # the app's own traits: a traitlets validator made Jupyter drop the whole ModelForgeApp config (the default
        # registry was served, max_output_bytes ignored), found by a fresh-clone tester
        ({"control_workers": 0, "max_output_bytes": 10}, "ModelForgeApp.control_workers must be >= 1, got 0"),
        ({"max_workers": 0}, "ModelForgeApp.max_workers must be >= 1, got 0"),
        ({"max_predict_body_size": -1}, "ModelForgeApp.max_predict_body_size must be >= 1, got -1"),
        ({"shutdown_timeout": float("nan")}, "ModelForgeApp.shutdown_timeout must be a number of seconds >= 0"),
        # storage it cannot create: the extension failed to load (every path Jupyter's HTML 404, health/live too)
        ({"cache_dir": "/proc/mf-no-such/cache"}, "MODELFORGE_CACHE_DIR (cache_dir): the disk cache's directory cannot"),
        ({"database_url": "sqlite:////proc/mf-no-such/r.db"}, "DATABASE_URL: the SQLite file's directory cannot"),
    ],
)
async def test_a_setting_modelforge_cannot_use_answers_503_naming_it_and_hides_passwords(jp_fetch, setting):
    for method, path, body in [("GET", "health", None), ("GET", "models", None), ("GET", "health/ready", None),
                               ("POST", "predict", {"model_id": "iris", "input_data": [[1, 2, 3, 4]]})]:
        code, err = await mf_call(jp_fetch, method, path, body=body)
        assert code == 503 and err["message"].startswith(f"ModelForge is misconfigured: {setting}"), err
        assert "s3cret" not in err["message"] and "/proc/" not in err["message"]
    assert await mf_call(jp_fetch, "GET", "health", "live", token=False) == (200, {"status": "alive"})
    assert (await mf_call(jp_fetch, "HEAD", "health", token=False))[0] == 503



def one_bad_value_per_environment_setting() -> list[tuple[str, str]]:
    """(env var, bad value): the first bad value of every environment setting (``mf_bad_setting_values``) but the
    URLs, which the fixtures set in the server's config (tests/test_server_e2e gives them in the environment)."""
    first: dict[str, str] = {}
    for name, var, value in mf_bad_setting_values():
        if not name.endswith("_url"):
            first.setdefault(var, value)
    return sorted(first.items())


@pytest.mark.parametrize("mf_backend", ["embedded"])
@pytest.mark.parametrize("mf_env", [dict([case]) for case in one_bad_value_per_environment_setting()],
                         ids=[case[0] for case in one_bad_value_per_environment_setting()])
async def test_every_bad_environment_setting_answers_503_naming_it_and_stays_live(jp_fetch, mf_env):
    # Given a server started with one environment variable ModelForge cannot read
    ((var, _value),) = mf_env.items()
    name = next(n for n, v in ENV_VARS.items() if v == var)

    # Then the extension is loaded (live 200) and every endpoint answers 503 naming the variable or the setting
    assert await mf_call(jp_fetch, "GET", "health", "live", token=False) == (200, {"status": "alive"})
    for method, path, token in [("GET", "health", False), ("GET", "health/ready", False), ("GET", "models", True)]:
        code, err = await mf_call(jp_fetch, method, *path.split("/"), token=token)
        assert code == 503, (path, err)
        assert err["message"].startswith(("ModelForge is misconfigured: " + var,
                                          "ModelForge is misconfigured: " + name)), err
        assert "SECRET" not in err["message"]


def test_settings_refuse_an_unavailable_execution_provider_naming_the_available_ones():
    with pytest.raises(ValueError) as err:
        Settings(execution_providers="NopeExecutionProvider")
    available = ", ".join(mf_raw_providers())
    assert str(err.value) == (
        f"execution_providers: NopeExecutionProvider not available in this onnxruntime; available: {available}"
    )
    with pytest.raises(ValueError, match="^execution_providers: none not available"):
        Settings(execution_providers=" , ")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql+psycopg://u:s3cret@db:5432/mf", "postgresql+psycopg://u:***@db:5432/mf"),
        ("redis://:s3cret@cache:6379/0 and amqp://guest:s3cret@mq//",
         "redis://:***@cache:6379/0 and amqp://guest:***@mq//"),
        ("'postgresql://u:pa@ss/w@db/mf'", "'postgresql://u:***@db/mf'"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_mask_url_hides_every_password_in_a_text(text, masked):
    from modelforge_jupyter.core.settings import mask_url

    assert mask_url(text) == masked


async def test_a_predict_body_decoding_to_gigabytes_is_413_before_it_is_read(jp_fetch, mf_app):
    import gzip

    # Given the default limits, and a 64 KB gzip body that decompresses to 9 MiB of nested empty lists: JSON that
    # orjson would turn into ~300 MB of list objects (2.2 GB at the 63 MiB the old server let through)
    await mf_put(jp_fetch, "iris", IRIS)
    nested = b'{"model_id": "iris", "input_data": [' + b"[[]]," * (9 * 2**20 // 5) + b"[]]}"
    before = mf_reset_peak_rss()  # the peak RSS starts again from the current RSS

    # When it is posted
    code, err = await mf_call(jp_fetch, "POST", "predict", body=gzip.compress(nested),
                              headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    # Then it is refused as too large for a predict body before it is decoded, and memory barely moved
    assert code == 413 and err["message"].endswith(
        f"the limit is {8 * 2**20} bytes (ModelForgeApp.max_predict_body_size)"), err
    assert mf_proc_status("VmHWM") - before < 64 * 2**20
    # and the limit is predict's alone: a model upload above it is still taken
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((1536, 1536), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1536])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1536])], [weights])
    big = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    assert len(big) > 8 * 2**20 and (await mf_put(jp_fetch, "big", big))[0] == 201


@pytest.mark.parametrize("mf_backend", ["services"])
async def test_a_proven_cache_hit_is_answered_on_the_loop_and_an_update_is_never_stale(jp_fetch, mf_app, mf_settings):
    # Given iris registered and one prediction made (a miss: the executor runs it and caches it)
    await mf_put(jp_fetch, "iris", IRIS.read_bytes())
    x = [[6.1, 2.8, 4.7, 1.2]]
    request = {"model_id": "iris", "input_data": x}
    miss = await mf_call(jp_fetch, "POST", "predict", body=request)
    hits = mf_app.loop_hits()
    answered = hits.answered
    # When the same input is predicted again: a hit, proven and answered on the event loop, equal to the miss
    hit = await mf_call(jp_fetch, "POST", "predict", body=request)
    assert hit[1]["cached"] and hit[1]["output_data"] == miss[1]["output_data"] and hits.answered == answered + 1
    # and a V2 request for the same tensors too (one cache entry, one round trip)
    v2 = await jp_fetch("modelforge", "v2", "models", "iris", "infer", method="POST", body=orjson.dumps(
        {"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4], "data": x[0]}]}))
    assert orjson.loads(v2.body)["parameters"] == {"cached": True} and hits.answered == answered + 2
    # When another process (another ModelForge on the same registry and cache) updates the model
    from modelforge_jupyter import ModelForge

    with ModelForge(**mf_settings) as other:
        other.update("iris", IRIS_V2)
        want = other.predict("iris", x, use_cache=False).output_data
    # Then the loop cannot prove the remembered record (the stamp moved): the executor answers the new version
    after = await mf_call(jp_fetch, "POST", "predict", body=request)
    assert after[1]["model_version"] == 2 and after[1]["output_data"] == want and hits.answered == answered + 2
    # and input the rules refuse is never answered on the loop: the executor's 400 names it, as always
    bad = await mf_call(jp_fetch, "POST", "predict", body={"model_id": "iris", "input_data": [[1, 2]]})
    assert bad[0] == 400 and "float_input" in bad[1]["message"] and hits.answered == answered + 2


@pytest.mark.parametrize("mf_backend", ["embedded"])
async def test_embedded_hits_stay_in_the_executor(jp_fetch, mf_app):
    # SQLite and the disk cache are blocking reads: no loop hits there
    await mf_put(jp_fetch, "iris", IRIS.read_bytes())
    for _ in range(2):
        status, answer = await mf_call(jp_fetch, "POST", "predict", body={"model_id": "iris", "input_data": [[1, 2, 3, 4]]})
        assert status == 200
    assert answer["cached"] and mf_app.loop_hits() is None
