"""Batch scoring on real Celery workers (prefork pool, 2 processes), on RabbitMQ and on Redis as brokers, with a
PostgreSQL registry and Redis for the job's state, chunks and results. Results equal raw onnxruntime row for row, in
order; another process attaches by id; Parquet read and written by the workers; cancel; the version pinned across
an update; a worker process SIGKILLed mid-job loses no chunk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.errors import ModelForgeError
from modelforge_jupyter.core.scoring import ScoringError

from .mf_plugin import SAMPLES, mf_launch, mf_raw_run, mf_spin_input, mf_spin_model
from .mf_plugin.services import (BROKERS, REDIS_URL, mf_celery_services, mf_delete_keys, mf_delete_queue,
                                 mf_drop_database)

RF = SAMPLES / "breast_cancer_rf.onnx"
IRIS, IRIS_V2 = SAMPLES / "iris.onnx", SAMPLES / "iris_v2.onnx"
X = np.random.default_rng(0).normal(size=(2_300, 30)).astype(np.float32) * 3 + 10
IRIS_X = np.random.default_rng(1).uniform(0.1, 8, size=(600, 4)).astype(np.float32)


@pytest.fixture(scope="module", params=list(BROKERS))
def celery_scoring(request, tmp_path_factory):
    """``ModelForge(**settings)`` keyword arguments sharing a PostgreSQL registry, a Redis key prefix, a broker and
    a queue with one real ``celery worker --pool prefork -c 2`` (started once per broker for the module)."""
    broker = BROKERS[request.param]
    app, client, (name, database_url), prefix, queue = mf_celery_services(request.param, "mfscore")
    settings = {"database_url": database_url, "redis_url": REDIS_URL, "cache_key_prefix": prefix,
                "celery_broker_url": broker, "celery_queue": queue, "intra_op_num_threads": 1}
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "CACHE_KEY_PREFIX": prefix,
           "CELERY_BROKER_URL": broker, "MODELFORGE_CELERY_QUEUE": queue}
    worker_name = f"{queue}@localhost"
    cmd = [sys.executable, "-m", "celery", "-A", "modelforge_jupyter.tasks", "worker", "-Q", queue, "-n",
           worker_name, "--pool", "prefork", "-c", "2", "--without-gossip", "--without-mingle",
           "--without-heartbeat", "-l", "info"]
    worker = mf_launch(cmd, tmp_path_factory.mktemp("worker") / "celery.log", env)
    try:
        worker.wait_ready(lambda: app.control.ping(destination=[worker_name], timeout=0.5), 60, "the Celery worker")
        yield settings, worker
    finally:
        worker.stop(30)
        mf_delete_queue(app, queue)
        app.close()
        mf_drop_database(name)
        mf_delete_keys(client, prefix)
        client.close()


@pytest.fixture
def forge(celery_scoring):
    with ModelForge(**celery_scoring[0]) as mf:
        yield mf
        for record in mf.models():
            mf.delete(record.name)


def test_results_equal_raw_onnxruntime_in_order_and_another_process_attaches(forge):
    forge.register("rf", RF)
    job = forge.score("rf", X, chunk_rows=500)
    outputs = job.result(timeout=60)
    label, proba = mf_raw_run(RF, {"float_input": X})
    assert np.array_equal(outputs["label"], label) and np.array_equal(outputs["probabilities"], proba)
    # The job lives in Redis: another process attaches by id and reads its progress and outputs
    script = ("import json, sys; from modelforge_jupyter import ModelForge\n"
              "with ModelForge(**json.loads(sys.argv[1])) as mf:\n"
              "    job = mf.score_job(sys.argv[2]); p = job.progress()\n"
              "    print(json.dumps([p.state, p.rows_done, job.result()['probabilities'][:, 1].tolist()]))")
    seen = subprocess.run([sys.executable, "-c", script, json.dumps(_same_settings(forge)), job.id],
                          capture_output=True, text=True, timeout=60, check=True)
    state, rows_done, proba_1 = json.loads(seen.stdout)
    assert (state, rows_done) == ("done", 2_300) and np.array_equal(np.float32(proba_1), proba[:, 1])
    client = forge.cache.client
    assert client.exists(f"{forge.settings.cache_key_prefix}:score:{job.id}:spec")
    assert 0 < client.ttl(f"{forge.settings.cache_key_prefix}:score:{job.id}:spec") <= 24 * 3600
    assert not client.exists(f"{forge.settings.cache_key_prefix}:score:{job.id}:chunk:0")  # inputs freed
    # forget() deletes every key of the job (its results first of all); its last progress reading stays
    base = f"{forge.settings.cache_key_prefix}:score:{job.id}:"
    assert client.exists(base + "result:0") and len(list(client.scan_iter(base + "*"))) >= 5 + 5
    assert job.forget() >= 10 and list(client.scan_iter(base + "*")) == []
    assert job.progress().rows_done == 2_300
    with pytest.raises(ModelForgeError, match=f"score job {job.id} was forgotten"):
        job.result()


def _same_settings(forge) -> dict:
    return {name: getattr(forge.settings, name) for name in ("database_url", "redis_url", "cache_key_prefix",
                                                             "celery_broker_url", "celery_queue")}


def test_dataframe_through_redis_and_parquet_by_path_with_parts_and_manifest(forge, tmp_path):
    forge.register("iris", IRIS)
    frame = pd.DataFrame(IRIS_X, columns=list("abcd"))
    (label,) = mf_raw_run(IRIS, {"float_input": IRIS_X})[:1]
    assert np.array_equal(forge.score("iris", frame, chunk_rows=128).result(timeout=60)["output_label"], label)
    # Parquet read by the workers from its path; parts and the manifest written by them
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "rows.parquet", row_group_size=100)
    job = forge.score("iris", tmp_path / "rows.parquet", chunk_rows=200, output=tmp_path / "out")
    manifest = job.result(timeout=60)
    assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [(p["start"], p["rows"], p["file"]) for p in manifest["parts"]] == [
        (0, 200, "part-00000.parquet"), (200, 200, "part-00001.parquet"), (400, 200, "part-00002.parquet")]
    table = job.table()
    assert table.column("row").to_pylist() == list(range(600))
    assert np.array_equal(table.column("output_label").to_numpy(), label)


def test_bad_rows_named_on_the_workers(forge):
    forge.register("iris", IRIS)
    bad = IRIS_X.astype(np.float64)  # two rows beyond float32's range: refused by validation, on the workers
    bad[3, 0], bad[404, 2] = 1e300, -1e300
    job = forge.score("iris", bad, chunk_rows=100)
    assert job.wait(60)
    assert [(e.chunk, [r for r, _ in e.rows]) for e in job.errors()] == [(0, [3]), (4, [404])]
    assert "outside float32's range" in job.errors()[0].rows[0][1]
    assert job.table().num_rows == 598


def test_a_dataframe_that_cannot_travel_is_refused_and_leaves_no_key(forge):
    import redis

    # Given a DataFrame whose column mixes numbers and text (Arrow cannot carry it to the workers)
    forge.register("iris", IRIS)
    bad = pd.DataFrame(IRIS_X.astype(object))
    bad.iloc[42, 3] = "n/a"
    client = redis.Redis.from_url(forge.settings.redis_url)
    try:
        before = set(client.scan_iter(f"{forge.settings.cache_key_prefix}:score:*"))
        # When it is scored on Celery, Then it is refused at submit, naming why, and no key of the job stays
        with pytest.raises(ModelForgeError, match="cannot travel to the workers as Arrow"):
            forge.score("iris", bad, chunk_rows=50)
        assert set(client.scan_iter(f"{forge.settings.cache_key_prefix}:score:*")) == before
    finally:
        client.close()


def test_version_pinned_across_an_update(forge):
    forge.register("iris", IRIS)
    job = forge.score("iris", IRIS_X, chunk_rows=10)  # 60 tasks
    forge.update("iris", IRIS_V2)
    v1, v2 = (mf_raw_run(p, {"float_input": IRIS_X})[0] for p in (IRIS, IRIS_V2))
    assert not np.array_equal(v1, v2)
    assert np.array_equal(job.result(timeout=60)["output_label"], v1)


def test_cancel_stops_the_remaining_chunks(forge):
    # Given 60 one-row chunks, the first two taking ~0.4 s each (the two pool processes are busy with them)
    forge.register("spin", mf_spin_model().SerializeToString())
    x = np.repeat(mf_spin_input(300), 60, axis=0)
    x[:2, 0] = 30_000
    job = forge.score("spin", x, chunk_rows=1)
    job.cancel()
    assert job.wait(60)
    progress = job.progress()
    assert progress.state == "cancelled" and progress.chunks_cancelled >= 40, progress
    with pytest.raises(ScoringError, match="cancelled"):
        job.result()


def test_a_deletion_fails_the_remaining_chunks_naming_it(forge):
    forge.register("spin", mf_spin_model().SerializeToString())
    x = np.repeat(mf_spin_input(300), 30, axis=0)
    x[:2, 0] = 30_000  # the first two chunks keep both pool processes busy ~0.4 s
    job = forge.score("spin", x, chunk_rows=1)
    forge.delete("spin")
    assert job.wait(60)
    errors = job.errors()
    assert len(errors) >= 20 and {e.status for e in errors} == {404}
    assert "model 'spin' version 1 was deleted after the job was submitted" in errors[-1].message


def test_worker_processes_killed_mid_job_lose_no_chunk(forge, celery_scoring):
    # Given a job of 24 chunks of ~0.1 s each on the 2 prefork processes
    forge.register("spin", mf_spin_model().SerializeToString())
    x = np.repeat(mf_spin_input(8_000, rows=1), 24, axis=0)
    x[:, 2] = np.arange(24) / 24  # rows differ, so the order is checked too
    job = forge.score("spin", x, chunk_rows=1)
    # When both pool processes are SIGKILLed while the job runs (one at least in the middle of a chunk)
    from .mf_plugin import mf_wait_until

    assert mf_wait_until(lambda: job.progress().chunks_done >= 2, 30)
    children = Path(f"/proc/{celery_scoring[1].pid}/task/{celery_scoring[1].pid}/children").read_text().split()
    for child in children:
        os.kill(int(child), signal.SIGKILL)
    # Then the chunks they ran are redelivered, and every row is scored, in order
    outputs = job.result(timeout=90)
    assert "WorkerLostError" in celery_scoring[1].log  # the kill did hit a running chunk
    (expected,) = mf_raw_run(mf_spin_model().SerializeToString(), {"x": x})
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-6)
    assert job.errors() == []


def test_without_redis_parquet_and_an_output_directory_keep_the_state_in_files(forge, tmp_path):
    # Given a submitter with the broker and the registry but no Redis
    forge.register("iris", IRIS)
    settings = {**_same_settings(forge), "redis_url": "", "cache_dir": str(tmp_path / "cache")}
    pq.write_table(pa.table({f"f{i}": IRIS_X[:, i] for i in range(4)}), tmp_path / "rows.parquet")
    with ModelForge(**settings) as mf:
        # An array (it would travel through Redis) is refused at once, naming what is needed
        with pytest.raises(ModelForgeError, match="needs REDIS_URL .* or Parquet rows and an output= directory"):
            mf.score("iris", IRIS_X, output=tmp_path / "refused")
        assert not (tmp_path / "refused").exists()  # a refused job leaves nothing behind
        # Parquet rows and an output directory: the workers keep the job's state beside the parts
        job = mf.score("iris", tmp_path / "rows.parquet", chunk_rows=250, output=tmp_path / "out")
        manifest = job.result(timeout=60)
    assert [(p["start"], p["rows"]) for p in manifest["parts"]] == [(0, 250), (250, 250), (500, 100)]
    assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(p.name for p in (tmp_path / "out" / f".job-{job.id}").iterdir()) == [
        "part-0.json", "part-1.json", "part-2.json", "spec.json"]
    label = pa.concat_tables([pq.read_table(tmp_path / "out" / p["file"]) for p in manifest["parts"]])["output_label"]
    assert np.array_equal(label.to_numpy(), mf_raw_run(IRIS, {"float_input": IRIS_X})[0])
