"""The ModelForge Python API on both backends, with real sample models compared to raw onnxruntime."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from modelforge_jupyter.errors import InvalidModelError, ModelExistsError, ModelForgeError, ModelNotFoundError
from modelforge_jupyter.records import TensorSpec

from .mf_plugin import SAMPLES, mf_raw_run

IRIS = SAMPLES / "iris.onnx"
IRIS_V2 = SAMPLES / "iris_v2.onnx"


def zipmap(raw_seq) -> list[dict]:
    """skl2onnx's ZipMap output as ModelForge returns it: keys as strings."""
    return [{str(k): v for k, v in m.items()} for m in raw_seq]


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
    assert res.output_data["output_probability"] == zipmap(proba)
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
    rec = mf_forge.register("silero", mf_silero_path)
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
    keys = cache_keys(mf_forge)
    assert len(keys) == 1
    prefix = mf_settings.get("cache_key_prefix", "modelforge")
    assert keys[0].startswith(f"{prefix}:prediction:{rec.id}:") and len(keys[0].rsplit(":", 1)[1]) == 64
    assert 0 < cache_ttl(mf_forge, keys[0]) <= 60
    assert orjson.loads(cache_value(mf_forge, keys[0])) == first.output_data


def test_equal_values_hit_one_key_and_other_shapes_or_versions_do_not(mf_forge):
    mf_forge.register("iris", IRIS)
    mf_forge.predict("iris", {"float_input": [[5, 3, 1, 0]]})

    assert mf_forge.predict("iris", np.array([[5.0, 3.0, 1.0, 0.0]])).cached is True  # ints vs float64 array
    assert mf_forge.predict("iris", [[5, 3, 1, 0], [5, 3, 1, 0]]).cached is False  # another shape
    assert len(cache_keys(mf_forge)) == 2
    mf_forge.update("iris", IRIS_V2)
    assert cache_keys(mf_forge) == []  # update invalidates the model's cached predictions
    assert mf_forge.predict("iris", [[5, 3, 1, 0]]).cached is False  # the new version
    assert mf_forge.predict("iris", [[5, 3, 1, 0]], version=1).cached is False  # v1 hashes to another key
    assert mf_forge.predict("iris", [[5, 3, 1, 0]], version=1).cached is True
    assert len(cache_keys(mf_forge)) == 2


def test_use_cache_false_and_disabled_cache_write_nothing(mf_settings):
    from modelforge_jupyter import ModelForge

    with ModelForge(**mf_settings) as forge:
        forge.register("iris", IRIS)
        assert [forge.predict("iris", [[1, 2, 3, 4]], use_cache=False).cached for _ in range(2)] == [False, False]
        assert cache_keys(forge) == []
    with ModelForge(**mf_settings, cache_prediction_enabled=False) as forge:
        assert [forge.predict("iris", [[1, 2, 3, 4]]).cached for _ in range(2)] == [False, False]
        assert cache_keys(forge) == []


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
    assert new.output_data["output_probability"] == zipmap(mf_raw_run(IRIS_V2, {"float_input": X})[1])
    assert old.output_data["output_probability"] == zipmap(mf_raw_run(IRIS, {"float_input": X})[1])

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


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own on a free port, so the test can stop it: (url, process)."""
    import shutil
    import socket
    import subprocess
    import time

    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    yield url, proc
    proc.kill()
    proc.wait()


def test_redis_going_away_still_serves_refuses_updates_and_degrades_health(mf_settings, mf_backend, own_redis):
    from modelforge_jupyter import ModelForge
    from modelforge_jupyter.errors import ServiceUnavailableError

    url, redis_proc = own_redis
    with ModelForge(**{**mf_settings, "redis_url": url}) as forge:
        forge.register("iris", IRIS)
        assert [forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]]).cached for _ in range(2)] == [False, True]

        redis_proc.kill()
        redis_proc.wait()
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


# -- helpers reading the cache directly (the test's own view of Redis / the disk cache) ----------------------------
def cache_keys(forge) -> list[str]:
    if forge.cache.backend == "redis":
        pattern = f"{forge.settings.cache_key_prefix}:prediction:*"
        return sorted(k.decode() for k in forge.cache.client.scan_iter(match=pattern))
    return sorted(forge.cache.cache.iterkeys())


def cache_ttl(forge, key: str) -> float:
    if forge.cache.backend == "redis":
        return forge.cache.client.ttl(key)
    return forge.cache.ttl(key)


def cache_value(forge, key: str) -> bytes:
    if forge.cache.backend == "redis":
        return forge.cache.client.get(key)
    return forge.cache.cache.get(key)


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
    from modelforge_jupyter.errors import ServiceUnavailableError

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
    from modelforge_jupyter.api import version_from_text

    with pytest.raises(ModelForgeError) as err:
        version_from_text(raw)
    assert (err.value.status, str(err.value)) == (400, f"version must be a whole number >= 1, got {raw!r}")
    assert (version_from_text("1"), version_from_text("007"), version_from_text("12")) == (1, 7, 12)


def test_each_status_a_server_answers_maps_back_to_its_error_class():
    from modelforge_jupyter import errors
    from modelforge_jupyter.kernel import client  # noqa: F401  (its own 503 errors must not make 503 ambiguous)

    # Given every status the error family answers with, When a client maps it back, Then it gets the one class
    expected = {404: errors.ModelNotFoundError, 409: errors.ModelExistsError, 413: errors.ResourceLimitError,
                422: errors.InferenceError, 503: errors.ServiceUnavailableError, 504: errors.InferenceTimeoutError}
    assert {status: errors.error_for_status(status) for status in expected} == expected
    assert errors.error_for_status(400) is errors.ModelForgeError  # shared by invalid model / input / request
    assert errors.error_for_status(500) is errors.ModelForgeError
