"""The ModelForge Python API on both backends, with real sample models compared to raw onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from modelforge_jupyter.core.errors import InvalidModelError, ModelExistsError, ModelForgeError, ModelNotFoundError
from modelforge_jupyter.core.outputs import json_data, unpack
from modelforge_jupyter.core.records import TensorSpec

from .mf_plugin import (
    MF_SECRET,
    SAMPLES,
    mf_cache_ttl,
    mf_cache_value,
    mf_cached_keys,
    mf_external_model,
    mf_raw_run,
    mf_zipmap,
)

IRIS = SAMPLES / "iris.onnx"
IRIS_V2 = SAMPLES / "iris_v2.onnx"


def test_register_returns_declared_specs_and_stores_rows(mf_forge):
    rec = mf_forge.register("iris", IRIS)

    assert rec.name == "iris" and rec.version == 1 and len(rec.id) == 36
    assert rec.inputs == [TensorSpec(name="float_input", dtype="float32", shape=[None, 4])]
    assert [o.name for o in rec.outputs] == ["output_label", "output_probability"]
    assert rec.sha256 == __import__("hashlib").sha256(IRIS.read_bytes()).hexdigest()
    with mf_forge.registry.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT name, last_version FROM mf_models WHERE id = :i"), {"i": rec.id}).one()
        blob = conn.execute(sa.text("SELECT data FROM mf_blobs WHERE sha256 = :s"), {"s": rec.sha256}).scalar()
    assert tuple(row) == ("iris", 1)
    assert bytes(blob) == IRIS.read_bytes()


def test_iris_zipmap_prediction_equals_raw_onnxruntime(mf_forge):
    mf_forge.register("iris", IRIS)
    X = load_iris().data[:5].astype(np.float32)

    res = mf_forge.predict("iris", {"float_input": X.tolist()}, use_cache=False)

    label, proba = mf_raw_run(IRIS, {"float_input": X})
    assert res.output_data["output_label"] == label.tolist()
    assert res.output_data["output_probability"] == mf_zipmap(proba)
    assert res.cached is False and res.model_version == 1 and res.inference_time_ms > 0


@pytest.mark.parametrize("batch", [1, 1000])
def test_forest_and_regressor_equal_raw_onnxruntime_at_batch(mf_forge, batch):
    rng = np.random.default_rng(batch)
    for name, data in [("breast_cancer_rf", load_breast_cancer().data), ("diabetes", load_diabetes().data)]:
        path = SAMPLES / f"{name}.onnx"
        mf_forge.register(name, path)
        X = data[rng.integers(0, len(data), batch)].astype(np.float32)

        res = mf_forge.predict(name, X)

        raw = mf_raw_run(path, {"float_input": X})
        assert list(res.output_data) == [o.name for o in mf_forge.get(name).outputs]
        for got, want in zip(res.output_data.values(), raw):
            np.testing.assert_array_equal(np.asarray(got, dtype=want.dtype), want)
            assert len(got) == batch


def test_silero_vad_three_inputs_with_rank0_sr(mf_forge, mf_silero_path):
    # batch 1 of a generated input is one audio sample with sr 0: the model needs real values to warm up on
    warmup = {"input": np.zeros((1, 512), np.float32), "state": np.zeros((2, 1, 128), np.float32), "sr": 16000}
    rec = mf_forge.register("silero", mf_silero_path, sample=warmup)
    assert {s.name: (s.dtype, s.shape) for s in rec.inputs} == {
        "input": ("float32", [None, None]),
        "state": ("float32", [2, None, 128]),
        "sr": ("int64", []),
    }
    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.5, 0.5, (1, 512)).astype(np.float32)
    state = np.zeros((2, 1, 128), np.float32)

    res = mf_forge.predict("silero", {"input": audio.tolist(), "state": state.tolist(), "sr": 16000})

    out, state_n = mf_raw_run(mf_silero_path, {"input": audio, "state": state, "sr": np.array(16000, np.int64)})
    np.testing.assert_array_equal(np.asarray(res.output_data["output"], np.float32), out)
    np.testing.assert_array_equal(np.asarray(res.output_data["stateN"], np.float32), state_n)


def test_second_call_is_a_cache_hit_with_same_output(mf_forge, mf_settings):
    rec = mf_forge.register("iris", IRIS)
    X = [[5.1, 3.5, 1.4, 0.2]]

    first = mf_forge.predict("iris", X)
    second = mf_forge.predict("iris", X)

    assert (first.cached, second.cached) == (False, True)
    assert second.output_data == first.output_data
    assert second.prediction_id != first.prediction_id and second.model_id == rec.id
    keys = mf_cached_keys(mf_forge)
    assert len(keys) == 1
    prefix = mf_settings.get("cache_key_prefix", "modelforge")
    assert keys[0].startswith(f"{prefix}:prediction:{rec.id}:") and len(keys[0].rsplit(":", 1)[1]) == 64
    assert 0 < mf_cache_ttl(mf_forge, keys[0]) <= 60
    assert json_data(unpack(mf_cache_value(mf_forge, keys[0]))) == first.output_data


def test_equal_values_hit_one_key_and_other_shapes_or_versions_do_not(mf_forge):
    mf_forge.register("iris", IRIS)
    mf_forge.predict("iris", {"float_input": [[5, 3, 1, 0]]})

    assert mf_forge.predict("iris", np.array([[5.0, 3.0, 1.0, 0.0]])).cached is True  # ints vs float64 array
    assert mf_forge.predict("iris", [[5, 3, 1, 0], [5, 3, 1, 0]]).cached is False  # another shape
    assert len(mf_cached_keys(mf_forge)) == 2
    mf_forge.update("iris", IRIS_V2)
    assert mf_cached_keys(mf_forge) == []  # update invalidates the model's cached predictions
    assert mf_forge.predict("iris", [[5, 3, 1, 0]]).cached is False  # the new version
    assert mf_forge.predict("iris", [[5, 3, 1, 0]], version=1).cached is False  # v1 hashes to another key
    assert mf_forge.predict("iris", [[5, 3, 1, 0]], version=1).cached is True
    assert len(mf_cached_keys(mf_forge)) == 2


def test_use_cache_false_and_disabled_cache_write_nothing(mf_settings):
    from modelforge_jupyter import ModelForge

    with ModelForge(**mf_settings) as forge:
        forge.register("iris", IRIS)
        assert [forge.predict("iris", [[1, 2, 3, 4]], use_cache=False).cached for _ in range(2)] == [False, False]
        assert mf_cached_keys(forge) == []
    with ModelForge(**mf_settings, cache_prediction_enabled=False) as forge:
        assert [forge.predict("iris", [[1, 2, 3, 4]]).cached for _ in range(2)] == [False, False]
        assert mf_cached_keys(forge) == []


def test_update_versions_and_delete(mf_forge):
    v1 = mf_forge.register("iris", IRIS)
    X = load_iris().data[:3].astype(np.float32)

    v2 = mf_forge.update("iris", IRIS_V2)
    same = mf_forge.update("iris", IRIS_V2)

    assert (v2.version, same.version, v2.id) == (2, 2, v1.id)
    assert v2.versions == [1, 2]
    new = mf_forge.predict("iris", X)
    old = mf_forge.predict("iris", X, version=1)
    assert (new.model_version, old.model_version) == (2, 1)
    assert new.output_data["output_probability"] == mf_zipmap(mf_raw_run(IRIS_V2, {"float_input": X})[1])
    assert old.output_data["output_probability"] == mf_zipmap(mf_raw_run(IRIS, {"float_input": X})[1])

    mf_forge.delete("iris", version=1)
    with pytest.raises(ModelNotFoundError, match="no version 1"):
        mf_forge.predict("iris", X, version=1)
    assert mf_forge.predict("iris", X).model_version == 2
    assert mf_forge.update("iris", IRIS).version == 3  # numbers are never reused

    mf_forge.delete("iris")
    with pytest.raises(ModelNotFoundError, match="'iris' is not registered"):
        mf_forge.predict("iris", X)
    assert mf_forge.models() == []
    with mf_forge.registry.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM mf_blobs")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM mf_model_versions")).scalar() == 0


def test_model_addressed_by_id_and_listed(mf_forge):
    rec = mf_forge.register("iris", IRIS)
    mf_forge.register("diabetes", SAMPLES / "diabetes.onnx")

    assert mf_forge.predict(rec.id, [[1, 2, 3, 4]]).model_id == rec.id
    assert mf_forge.get(rec.id).name == "iris"
    assert [m.name for m in mf_forge.models()] == ["diabetes", "iris"]


def test_register_twice_or_invalid_bytes_leaves_registry_unchanged(mf_forge, tmp_path):
    mf_forge.register("iris", IRIS)
    before = mf_forge.models()

    with pytest.raises(ModelExistsError, match="use update"):
        mf_forge.register("iris", IRIS_V2)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(IRIS.read_bytes()[:300])
    for bad in (b"not onnx at all", truncated, b""):
        with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
            mf_forge.register("broken", bad)
        with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
            mf_forge.update("iris", bad)

    assert mf_forge.models() == before
    assert mf_forge.predict("iris", [[1, 2, 3, 4]], use_cache=False).model_version == 1


def test_redis_going_away_still_serves_refuses_updates_and_degrades_health(mf_settings, mf_backend, mf_redis_server):
    from modelforge_jupyter import ModelForge
    from modelforge_jupyter.core.errors import ServiceUnavailableError

    url, redis_server = mf_redis_server
    with ModelForge(**{**mf_settings, "redis_url": url}) as forge:
        forge.register("iris", IRIS)
        assert [forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]]).cached for _ in range(2)] == [False, True]

        redis_server.proc.kill()
        redis_server.proc.wait()
        results = [forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]]) for _ in range(3)]
        health = forge.health()

        assert [r.cached for r in results] == [False, False, False]
        assert results[0].output_data["output_label"] == [0]
        assert (health["status"], health["redis"], health["database"]) == ("degraded", "disconnected", "connected")
        if mf_backend == "services":  # PostgreSQL + Redis: the stamp cannot be told, so the change is refused
            with pytest.raises(ServiceUnavailableError, match="the model was not changed"):
                forge.update("iris", IRIS_V2)
            assert forge.get("iris").version == 1
        else:  # SQLite checks freshness itself; Redis is only the cache
            assert forge.update("iris", IRIS_V2).version == 2


def test_health_fields(mf_forge, mf_backend):
    health = mf_forge.health()

    assert set(health) == {"status", "database", "redis", "celery", "version", "environment", "timestamp"}
    assert health["status"] == "healthy" and health["database"] == "connected"
    assert health["redis"] == ("connected" if mf_backend == "services" else "not_configured")
    assert health["celery"] == "eager" and health["environment"] == "development"
    assert health["timestamp"].endswith("Z")


def test_resolved_metadata_lives_at_most_cache_ttl(mf_settings):
    from modelforge_jupyter import ModelForge

    for ttl, expected_lookups in ((3600, 1), (0, 3)):
        with ModelForge(**mf_settings, cache_ttl=ttl) as forge:
            if not forge.models():
                forge.register("iris", IRIS)
            lookups = []
            resolve = forge.registry.resolve
            forge.registry.resolve = lambda *a: lookups.append(a) or resolve(*a)  # a spy: the real lookup still runs

            for _ in range(3):
                forge.predict("iris", [[1, 2, 3, 4]], use_cache=False)

            assert len(lookups) == expected_lookups


def test_starts_while_the_database_is_missing_and_heals_when_it_appears(mf_postgres_url, tmp_path):
    from modelforge_jupyter import ModelForge
    from modelforge_jupyter.core.errors import ServiceUnavailableError

    url = sa.engine.make_url(mf_postgres_url)
    missing = url.set(database=url.database + "_late")
    settings = {"database_url": missing.render_as_string(hide_password=False), "redis_url": "",
                "cache_dir": str(tmp_path / "cache")}
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with ModelForge(**settings) as forge:
            assert (forge.health()["status"], forge.health()["database"]) == ("unhealthy", "disconnected")
            with pytest.raises(ServiceUnavailableError, match="model registry database unavailable") as err:
                forge.predict("iris", [[1, 2, 3, 4]])
            assert err.value.status == 503

            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{missing.database}"'))

            forge.register("iris", IRIS)
            assert forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]]).output_data["output_label"] == [0]
            assert forge.health()["status"] == "healthy"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{missing.database}" WITH (FORCE)'))
        admin.dispose()


def test_update_of_an_unknown_model_is_404_and_registers_nothing(mf_forge):
    with pytest.raises(ModelNotFoundError, match="'nope' is not registered; register it first"):
        mf_forge.update("nope", IRIS)
    assert mf_forge.models() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": "1"}, "version must be a whole number >= 1, got '1'"),
        ({"version": True}, "version must be a whole number >= 1, got True"),
        ({"version": 0}, "version must be a whole number >= 1, got 0"),
        ({"use_cache": "no"}, "use_cache must be true or false, got 'no'"),
    ],
)
def test_bad_predict_arguments_are_400(mf_forge, kwargs, message):
    mf_forge.register("iris", IRIS)

    with pytest.raises(ModelForgeError) as err:
        mf_forge.predict("iris", [[1, 2, 3, 4]], **kwargs)

    assert str(err.value) == message and err.value.status == 400


def test_a_name_with_a_nul_byte_is_simply_not_found(mf_forge):
    mf_forge.register("iris", IRIS)

    for call in (lambda: mf_forge.get("iris\x00"), lambda: mf_forge.predict("iris\x00", [[1, 2, 3, 4]]),
                 lambda: mf_forge.delete("iris\x00")):
        with pytest.raises(ModelNotFoundError):
            call()
    assert mf_forge.get("iris").version == 1


def test_concurrent_saves_of_a_new_name_all_succeed(mf_forge):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(6)

    def save(i):
        barrier.wait()
        return mf_forge.save("race", IRIS if i % 2 else IRIS_V2)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(save, range(6)))

    record = mf_forge.get("race")
    assert [changed for _, changed in results].count(True) == len(record.versions)
    assert record.versions == list(range(1, len(record.versions) + 1)) and len(record.versions) >= 1
    assert {r.id for r, _ in results} == {record.id}


@pytest.mark.parametrize("version", ["", " ", "1", 0, -1, 1.0, True])
def test_delete_with_a_version_that_is_not_one_is_400_and_deletes_nothing(mf_forge, version):
    mf_forge.register("iris", IRIS)
    mf_forge.update("iris", IRIS_V2)

    with pytest.raises(ModelForgeError, match="^version must be a whole number >= 1, got ") as err:
        mf_forge.delete("iris", version)

    assert err.value.status == 400
    with mf_forge.registry.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM mf_model_versions ORDER BY version")).scalars().all() == [1, 2]


@pytest.mark.parametrize("raw", ["", " ", " 1", "1 ", "+1", "-1", "0", "00", "1.0", "1e3", "١", "1_0", "0x1"])
def test_version_from_text_takes_only_ascii_digits_of_a_number_from_one(raw):
    from modelforge_jupyter.core.api import version_from_text

    with pytest.raises(ModelForgeError) as err:
        version_from_text(raw)
    assert (err.value.status, str(err.value)) == (400, f"version must be a whole number >= 1, got {raw!r}")
    assert (version_from_text("1"), version_from_text("007"), version_from_text("12")) == (1, 7, 12)


def test_each_status_a_server_answers_maps_back_to_its_error_class():
    from modelforge_jupyter.core import errors
    from modelforge_jupyter.kernel import client  # noqa: F401  (its own 503 errors must not make 503 ambiguous)

    # Given every status the error family answers with, When a client maps it back, Then it gets the one class
    expected = {404: errors.ModelNotFoundError, 409: errors.ModelExistsError, 413: errors.ResourceLimitError,
                422: errors.InferenceError, 503: errors.ServiceUnavailableError, 504: errors.InferenceTimeoutError}
    assert {status: errors.error_for_status(status) for status in expected} == expected
    assert errors.error_for_status(400) is errors.ModelForgeError  # shared by invalid model / input / request
    assert errors.error_for_status(500) is errors.ModelForgeError


# -- names and ids never confused -------------------------------------------------------------------------------------
def test_a_name_shaped_like_an_id_is_refused_and_an_id_resolves_only_as_an_id(mf_forge):
    rec = mf_forge.register("iris", IRIS)

    for name in (rec.id, rec.id.upper(), str(__import__("uuid").uuid4())):
        for call in (lambda: mf_forge.register(name, IRIS_V2), lambda: mf_forge.save(name, IRIS_V2)):
            with pytest.raises(ModelForgeError, match="has the form of a model id") as err:
                call()
            assert err.value.status == 400

    assert [(m.name, m.id, m.version) for m in mf_forge.models()] == [("iris", rec.id, 1)]
    assert mf_forge.get(rec.id.upper()).id == rec.id  # an id in any case is the id
    assert mf_forge.delete(rec.id).name == "iris" and mf_forge.models() == []


def test_a_uuid_shaped_name_already_stored_is_reached_by_its_id_only(mf_forge):
    # Given a registry written before names were checked: model "legacy" renamed to the id of model "iris"
    iris = mf_forge.register("iris", IRIS)
    legacy = mf_forge.register("legacy", IRIS_V2)
    with mf_forge.registry.engine.begin() as conn:
        conn.execute(sa.text("UPDATE mf_models SET name = :n WHERE id = :i"), {"n": iris.id, "i": legacy.id})

    # Then every model is listed once, and the id-shaped string means the model with that id, never the name
    listed = mf_forge.models()
    assert sorted((m.id, m.sha256) for m in listed) == sorted([(iris.id, iris.sha256), (legacy.id, legacy.sha256)])
    assert mf_forge.get(iris.id).sha256 == iris.sha256
    assert mf_forge.get(legacy.id).sha256 == legacy.sha256
    assert mf_forge.predict(iris.id, [[5.1, 3.5, 1.4, 0.2]], use_cache=False).model_id == iris.id
    assert mf_forge.delete(iris.id).id == iris.id
    assert [m.id for m in mf_forge.models()] == [legacy.id]


@pytest.mark.parametrize("name", ["iris\n", "iris\r\n", "\niris", "ir is", "iris/1", "", "x" * 129])
def test_names_are_validated_as_a_whole_string(mf_forge, name):
    for call in (lambda: mf_forge.register(name, IRIS), lambda: mf_forge.save(name, IRIS)):
        with pytest.raises(ModelForgeError, match="invalid model name") as err:
            call()
        assert err.value.status == 400

    assert mf_forge.models() == []
    with mf_forge.registry.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM mf_blobs")).scalar() == 0


# -- external data: the registry keeps self-contained bytes -----------------------------------------------------------
@pytest.mark.parametrize("where", ["initializer", "subgraph", "constant", "sparse"])
def test_external_data_in_bytes_is_refused_with_how_to_save_inline(mf_forge, tmp_path, monkeypatch, where):
    # Given a working directory whose README.md is what the model points at
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_bytes(MF_SECRET)
    model = mf_external_model(where)
    mf_forge.register("iris", IRIS)
    before = mf_forge.models()

    for call in (lambda: mf_forge.register("ext", model.SerializeToString()), lambda: mf_forge.register("ext", model),
                 lambda: mf_forge.save("iris", model.SerializeToString())):
        with pytest.raises(InvalidModelError) as err:
            call()
        message = str(err.value)
        assert "external" in message and "save_as_external_data=False" in message and err.value.status == 400
        assert str(tmp_path) not in message and "README" not in message

    assert mf_forge.models() == before


def test_a_model_file_with_external_data_is_stored_with_it_packed_in(mf_forge, tmp_path, monkeypatch):
    import onnx

    from modelforge_jupyter.core.modelfile import external_tensors

    # Given a model file whose initializer lives in weights.bin beside it, and another weights.bin in the cwd
    folder = tmp_path / "model"
    folder.mkdir()
    weights = bytes(range(10, 18))
    (folder / "weights.bin").write_bytes(weights)
    onnx.save_model(mf_external_model("initializer", location="weights.bin"), folder / "model.onnx")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "weights.bin").write_bytes(MF_SECRET[:8])
    monkeypatch.chdir(cwd)

    rec = mf_forge.register("packed", folder / "model.onnx")
    assert mf_forge.predict("packed", {}, use_cache=False).output_data == {"y": list(weights)}

    # Then the stored bytes are self-contained: the sidecar gone, a cold load answers the same
    stored = onnx.load_model_from_string(mf_forge.registry.blob(rec.sha256))
    assert external_tensors(stored) == []
    (folder / "weights.bin").unlink()
    mf_forge.unload("packed")
    assert mf_forge.predict("packed", {}, use_cache=False).output_data == {"y": list(weights)}


@pytest.mark.parametrize("location", ["../outside.bin", "missing.bin", "link.bin"])
def test_a_model_file_whose_external_data_is_outside_its_folder_or_missing_is_refused(mf_forge, tmp_path, location):
    import onnx

    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(MF_SECRET)
    (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    onnx.save_model(mf_external_model("initializer", location=location), folder / "model.onnx")

    with pytest.raises(InvalidModelError) as err:
        mf_forge.register("ext", folder / "model.onnx")

    assert "save_as_external_data=False" in str(err.value) and str(tmp_path) not in str(err.value)
    assert mf_forge.models() == []


def test_stored_bytes_with_external_data_never_read_a_file(mf_forge, tmp_path, monkeypatch):
    from modelforge_jupyter.core.records import TensorSpec as Spec

    # Given bytes with external data stored by an older version (which did not check), and README.md in the cwd
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_bytes(MF_SECRET)
    data = mf_external_model("initializer").SerializeToString()
    sha = __import__("hashlib").sha256(data).hexdigest()
    mf_forge.registry.register("old", data, sha, [], [Spec("y", "uint8", [8])])

    # Then a prediction fails without reading the file, naming no path
    with pytest.raises(InvalidModelError) as err:
        mf_forge.predict("old", {}, use_cache=False)
    assert str(tmp_path) not in str(err.value) and "/" not in str(err.value).replace("<path>", "")


def test_cache_key_names_the_key_a_predict_writes_and_clear_cache_removes_every_prediction(mf_forge):
    # Given two models with a cached prediction each, and another model's key prefix left alone
    mf_forge.register("iris", SAMPLES / "iris.onnx")
    mf_forge.register("diabetes", SAMPLES / "diabetes.onnx")
    x_iris = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    x_diab = load_diabetes().data[:3].astype(np.float32)
    mf_forge.predict("iris", x_iris)
    mf_forge.predict("diabetes", x_diab)
    key = mf_forge.cache_key("iris", x_iris)
    # Then the key is the documented one and holds the prediction's bytes
    record = mf_forge.get("iris")
    assert key.startswith(f"{mf_forge.settings.cache_key_prefix}:prediction:{record.id}:")
    assert key in mf_cached_keys(mf_forge)
    assert json_data(unpack(mf_cache_value(mf_forge, key))) == mf_forge.predict("iris", x_iris).output_data
    # When the cache is cleared, both predictions go and the next predict is a miss
    assert mf_forge.clear_cache() == 2
    assert mf_cached_keys(mf_forge) == []
    assert mf_forge.predict("iris", x_iris).cached is False


def test_model_bytes_and_raw_session_give_the_registered_model(mf_forge):
    mf_forge.register("diabetes", SAMPLES / "diabetes.onnx")
    data = mf_forge.model_bytes("diabetes")
    assert data == (SAMPLES / "diabetes.onnx").read_bytes()
    x = load_diabetes().data[:5].astype(np.float32)
    expected = mf_raw_run(SAMPLES / "diabetes.onnx", {"float_input": x})
    for session in (mf_forge.raw_session("diabetes"), mf_forge.raw_session(data, engine_options=False)):
        got = session.run(None, {"float_input": x})
        assert [np.asarray(g).tolist() for g in got] == [np.asarray(e).tolist() for e in expected]
    assert mf_forge.backend in ("registry sqlite, cache disk", "registry postgresql, cache redis")
    with pytest.raises(ModelNotFoundError):
        mf_forge.model_bytes("diabetes", version=2)


def test_a_prefix_with_glob_characters_clears_and_invalidates_only_its_own_keys(mf_redis, mf_redis_url):
    from modelforge_jupyter.core.cache import RedisCache, prediction_key

    client, base = mf_redis
    own, neighbour = f"{base}?", f"{base}X"  # `?` matches any one character in a Redis glob
    cache = RedisCache(mf_redis_url)
    try:
        cache.set(prediction_key(own, "m1", "h1"), b"1", 60, "m1")
        cache.set(prediction_key(own, "m1", "h2"), b"2", 60, "m1")
        client.set(prediction_key(neighbour, "m1", "h1"), b"theirs")
        client.set(prediction_key(neighbour, "m1", "h3"), b"theirs")

        assert cache.invalidate(own, "m1") == 2
        assert cache.clear(own) == 0
        assert client.get(prediction_key(neighbour, "m1", "h1")) == b"theirs"
        assert client.get(prediction_key(neighbour, "m1", "h3")) == b"theirs"
    finally:
        client.delete(prediction_key(neighbour, "m1", "h1"), prediction_key(neighbour, "m1", "h3"))
        cache.close()
