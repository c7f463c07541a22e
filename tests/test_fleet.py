"""Many servers, one truth: two real ``jupyter server`` processes (two JupyterHub users) and two real Celery workers
(prefork) on one fresh PostgreSQL database, one Redis key prefix and one RabbitMQ queue, all started together on the
empty database (the servers race to create the schema: the migration lock lets one do it).

One module-scoped set of processes; each test its own model, PUT through the servers: a model PUT through server A
is answered through server B from A's cached prediction; an update through B is answered at once by A from the new
version, and the workers' invalidation task frees the old answer's key; a scoring job pinned to a model runs on the
workers when A deletes the model: its remaining chunks fail naming the deletion, its finished chunks are kept, and
both servers answer 404.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import numpy as np
import pytest

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.scoring import ScoringError

from .mf_plugin import (
    LiveServer,
    mf_http,
    mf_isolated_env,
    mf_launch,
    mf_raw_run,
    mf_spin_input,
    mf_spin_model,
    mf_start_server,
    mf_wait_until,
)
from .mf_plugin.services import (BROKERS, REDIS_URL, mf_celery_services, mf_delete_keys, mf_delete_queue,
                                 mf_drop_database)

X = mf_spin_input(3)  # [1, 256] float32: three MatMul + Tanh trips, well under 1 ms


def spin_v2() -> bytes:
    """``mf_spin_model`` with its weights halved: another version whose answers differ from the first's."""
    from onnx import numpy_helper

    model = mf_spin_model()
    body = next(a.g for a in model.graph.node[2].attribute if a.name == "body")
    w = numpy_helper.to_array(body.initializer[0])
    body.initializer[0].CopyFrom(numpy_helper.from_array(w / 2, "w"))
    return model.SerializeToString()


V1, V2 = mf_spin_model().SerializeToString(), spin_v2()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(settings for a ``ModelForge`` of this process, server A, server B): the servers and two ``celery worker
    --pool prefork -c 1`` on one new PostgreSQL database, Redis key prefix and RabbitMQ queue. Everything is stopped,
    the queue and keys deleted and the database dropped after."""
    broker = BROKERS["rabbitmq"]
    app, client, (name, database_url), prefix, queue = mf_celery_services("rabbitmq", "mffleet")
    shared = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "CACHE_KEY_PREFIX": prefix,
              "CELERY_BROKER_URL": broker, "MODELFORGE_CELERY_QUEUE": queue}
    settings = {"database_url": database_url, "redis_url": REDIS_URL, "cache_key_prefix": prefix,
                "celery_broker_url": broker, "celery_queue": queue, "intra_op_num_threads": 1}
    root = tmp_path_factory.mktemp("fleet")
    processes: list = []
    try:
        for worker in ("w1", "w2"):  # started first: their Python start-up overlaps the servers'
            cmd = [sys.executable, "-m", "celery", "-A", "modelforge_jupyter.tasks", "worker", "-Q", queue, "-n",
                   f"{worker}-{queue}@localhost", "--pool", "prefork", "-c", "1", "--without-gossip",
                   "--without-mingle", "--without-heartbeat", "-l", "info"]
            processes.append(mf_launch(cmd, root / f"{worker}.log", {**os.environ, **shared}))
        servers = [mf_start_server(root / door, mf_isolated_env(root / door, **shared), ready=None)
                   for door in ("a", "b")]
        processes += servers
        for server in servers:
            server.wait_answers()
        names = [f"{w}-{queue}@localhost" for w in ("w1", "w2")]
        for worker, worker_name in zip(processes[:2], names):
            worker.wait_ready(lambda n=worker_name: app.control.ping(destination=[n], timeout=0.5), 60,
                              "the Celery worker")
        yield settings, servers[0], servers[1]
    finally:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:  # at once: each takes its own shutdown time
            list(pool.map(lambda p: p.stop(30), processes))
        mf_delete_queue(app, queue)
        app.close()
        mf_drop_database(name)
        mf_delete_keys(client, prefix)
        client.close()


@pytest.fixture(scope="module")
def forge(fleet):
    with ModelForge(**fleet[0]) as mf:
        yield mf


def call(server: LiveServer, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    status, data = mf_http(method, server.url + path, body, server.token)
    return status, (json.loads(data) if data else {})


def put(server: LiveServer, model: str, onnx: bytes) -> dict:
    status, record = call(server, "PUT", f"modelforge/models/{model}", onnx)
    assert status in (200, 201), record
    return record


def predict(server: LiveServer, model: str, x: np.ndarray = X) -> tuple[int, dict]:
    body = json.dumps({"model_id": model, "input_data": x.tolist()}).encode()
    return call(server, "POST", "modelforge/predict", body)


def registry_rows(forge, model: str) -> list[tuple]:
    """[(last_version, versions kept)] of ``model``, read from PostgreSQL's tables."""
    import sqlalchemy as sa

    engine = sa.create_engine(forge.settings.database_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(
                "SELECT m.last_version, count(v.version) FROM mf_models m LEFT JOIN mf_model_versions v "
                "ON v.model_id = m.id WHERE m.name = :name GROUP BY m.last_version"), {"name": model})]
    finally:
        engine.dispose()


def test_a_model_put_through_one_server_is_a_cache_hit_through_the_other(fleet, forge):
    _, a, b = fleet
    status, record = call(a, "PUT", "modelforge/models/shared", V1)
    assert (status, record["version"]) == (201, 1)
    assert registry_rows(forge, "shared") == [(1, 1)]
    # A computes and caches the answer; B finds it in Redis under the same key
    status, first = predict(a, "shared")
    assert (status, first["cached"], first["model_version"]) == (200, False, 1)
    key = forge.cache_key("shared", X)
    assert forge.cache.client.exists(key) and key.startswith(f"{forge.settings.cache_key_prefix}:prediction:")
    status, second = predict(b, "shared")
    assert (status, second["cached"], second["model_version"]) == (200, True, 1)
    assert second["output_data"] == first["output_data"]
    (expected,) = mf_raw_run(V1, {"x": X})
    assert np.array_equal(np.float32(second["output_data"]["y"]), expected)


def test_an_update_through_one_server_is_answered_at_once_by_the_other(fleet, forge):
    _, a, b = fleet
    put(a, "updated", V1)
    assert predict(a, "updated")[1]["model_version"] == 1  # A holds v1's answer in the cache and its session loaded
    old_key = forge.cache_key("updated", X)
    assert forge.cache.client.exists(old_key)
    status, record = call(b, "PUT", "modelforge/models/updated", V2)
    assert (status, record["version"]) == (200, 2)
    status, answer = predict(a, "updated")  # the very next request, no wait
    assert (status, answer["model_version"], answer["cached"]) == (200, 2, False)
    (expected,) = mf_raw_run(V2, {"x": X})
    assert np.array_equal(np.float32(answer["output_data"]["y"]), expected)
    assert registry_rows(forge, "updated") == [(2, 2)]
    # the workers ran the invalidation task B sent: v1's answer is gone from Redis before its TTL (the task frees
    # every answer of the model, so A's fresh one may go too: a miss, never a stale answer)
    assert mf_wait_until(lambda: not forge.cache.client.exists(old_key), 20)
    status, again = predict(b, "updated")
    assert (status, again["model_version"], again["output_data"]) == (200, 2, answer["output_data"])
    assert forge.cache.client.exists(forge.cache_key("updated", X))


def test_a_deletion_during_a_scoring_job_fails_its_remaining_chunks_and_keeps_the_finished(fleet, forge):
    _, a, b = fleet
    # Given a model updated once through each server, and a job of 40 one-row chunks pinned to its version 2: the
    # first two chunks are quick, the next two keep both workers busy ~1 s, so the deletion lands while chunks are left
    put(a, "fleet", V1)
    put(b, "fleet", V2)
    x = np.repeat(X, 40, axis=0)
    x[:, 2] = np.arange(40) / 40  # rows differ, so the rows kept are checked by number
    x[2:4, 0] = 60_000
    job = forge.score("fleet", x, chunk_rows=1)
    assert job.version == 2
    assert mf_wait_until(lambda: job.progress().chunks_done >= 2, 30)
    # When A deletes the model
    assert call(a, "DELETE", "modelforge/models/fleet")[0] == 204
    # Then the chunks not started fail, naming the deletion; the finished ones are kept and reported
    assert job.wait(60)
    progress, errors = job.progress(), job.errors()
    assert progress.state == "failed" and progress.chunks_done + progress.chunks_failed == 40, progress
    assert progress.chunks_done >= 2 and len(errors) == progress.chunks_failed >= 20, progress
    assert {e.status for e in errors} == {404}
    assert all("model 'fleet' version 2 was deleted after the job was submitted" in e.message for e in errors)
    table = job.table()
    rows = table.column("row").to_numpy()
    assert len(rows) == progress.rows_done == progress.chunks_done and not set(rows) & {e.chunk for e in errors}
    # a run per chunk, as the workers ran them (the model's trips are its batch's max)
    expected = np.concatenate([mf_raw_run(V2, {"x": x[r:r + 1]})[0] for r in rows])
    scored = np.stack([table.column(f"y_{i}").to_numpy() for i in range(256)], axis=1)
    np.testing.assert_allclose(scored, expected, rtol=1e-6)
    with pytest.raises(ScoringError, match="was deleted after the job was submitted"):
        job.result()
    # and both servers answer 404 to new predictions; PostgreSQL holds no row of the model
    for server in (a, b):
        status, body = predict(server, "fleet")
        assert status == 404 and "fleet" in body["message"], body
    assert registry_rows(forge, "fleet") == []
