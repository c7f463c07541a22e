"""Metrics and statistics (issue 14): counted once in the core's data path, read as Triton's statistics JSON
(``ModelForge.statistics``, ``modelforge/models/{name}/stats``, V2's ``stats``) and as Prometheus metrics (Jupyter's own
``/metrics``; ``modelforge serve``'s in ``test_serve_metrics``), against known sequences of requests.

Counts are per process and every test here shares this one: each test uses model names of its own.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import tritonclient.http as tc
from sklearn.datasets import load_iris

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core import errors, metrics
from modelforge_jupyter.core.errors import InvalidInputError, ModelNotFoundError
from modelforge_jupyter.core.prometheus import exposition, parse
from modelforge_jupyter.core.samples import build_wide_mlp

from .mf_plugin import SAMPLES, mf_fresh_services, mf_http, mf_isolated_env, mf_start_server
from .test_batching import concurrently

IRIS, IRIS_V2 = SAMPLES / "iris.onnx", SAMPLES / "iris_v2.onnx"
X = load_iris().data[:3].astype(np.float32)


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def scrape(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` in a text exposition (0 when absent)."""
    return parse(text).get((name, tuple(sorted(labels.items()))), 0.0)


def counts(stats: dict) -> dict[str, int]:
    return {stage: value["count"] for stage, value in stats["inference_stats"].items()}


# -- the core, both backends -------------------------------------------------------------------------------------------
def test_statistics_and_metrics_count_a_known_sequence(mf_forge):
    name = unique()
    mf_forge.register(name, IRIS)
    before = time.time() * 1000

    # When: a miss (run, cached), a hit, a run with the cache off, a refused input, an unknown version
    mf_forge.predict(name, X)
    mf_forge.predict(name, X)
    mf_forge.predict(name, X, use_cache=False)
    with pytest.raises(InvalidInputError):
        mf_forge.predict(name, X[:, :3])
    unknown = scrape(exposition()[0].decode(), "modelforge_inference_request_failure_total", model="",
                     reason="not_found", version="")
    with pytest.raises(ModelNotFoundError):
        mf_forge.predict(name, X, version=9)

    # Then Triton's statistics count each request in its stages
    (s,) = mf_forge.statistics(name)["model_stats"]
    assert (s["name"], s["version"]) == (name, "1")
    assert counts(s) == {"success": 3, "fail": 1, "queue": 2, "compute_input": 2, "compute_infer": 2,
                         "compute_output": 2, "cache_hit": 1, "cache_miss": 1}
    assert (s["inference_count"], s["execution_count"]) == (6, 2)  # 3 rows a run, cache hits not run
    ns = {stage: value["ns"] for stage, value in s["inference_stats"].items()}
    assert all(v > 0 for v in ns.values()), ns
    assert ns["success"] > ns["compute_input"] + ns["queue"] + ns["compute_infer"] + ns["compute_output"]
    assert s["batch_stats"] == [{"batch_size": 3, "compute_infer": {"count": 2, "ns": ns["compute_infer"]}}]
    assert before <= s["last_inference"] <= time.time() * 1000

    # and Prometheus reads the same counts; the unknown version counts under model "" (no label value per typo)
    text = exposition()[0].decode()
    labels = {"model": name, "version": "1"}
    assert scrape(text, "modelforge_inference_request_success_total", **labels) == 3
    assert scrape(text, "modelforge_inference_request_failure_total", **labels, reason="invalid_input") == 1
    assert scrape(text, "modelforge_inference_request_failure_total", model="", reason="not_found",
                  version="") == unknown + 1
    assert scrape(text, "modelforge_cache_num_hits_per_model_total", **labels) == 1
    assert scrape(text, "modelforge_cache_num_misses_per_model_total", **labels) == 1
    assert scrape(text, "modelforge_inference_count_total", **labels) == 6
    assert scrape(text, "modelforge_inference_exec_count_total", **labels) == 2
    assert scrape(text, "modelforge_inference_request_duration_us_count", **labels) == 3
    assert scrape(text, "modelforge_inference_compute_infer_duration_us_sum", **labels) == pytest.approx(
        ns["compute_infer"] / 1000)
    assert scrape(text, "modelforge_inference_batch_size_bucket", **labels, le="4.0") == 2
    assert scrape(text, "modelforge_inference_batch_size_bucket", **labels, le="2.0") == 0
    assert scrape(text, "modelforge_inference_pending_request_count", **labels) == 0
    assert scrape(text, "modelforge_sessions_loaded") >= 1 and scrape(text, "modelforge_session_bytes") > 0


def test_statistics_per_version_and_for_a_model_never_run(mf_forge):
    name = unique()
    mf_forge.register(name, IRIS)
    assert mf_forge.statistics(name)["model_stats"] == [{  # registered, never run here: zeros, as Triton's
        "name": name, "version": "1", "last_inference": 0, "inference_count": 0, "execution_count": 0,
        "inference_stats": {stage: {"count": 0, "ns": 0} for stage in metrics.STAGES}, "batch_stats": []}]
    mf_forge.predict(name, X)
    mf_forge.update(name, IRIS_V2)
    mf_forge.predict(name, X[:1])
    mf_forge.predict(name, X[:1], version=1)

    both = mf_forge.statistics(name)["model_stats"]
    assert [(s["version"], s["inference_count"]) for s in both] == [("1", 4), ("2", 1)]
    assert [s["version"] for s in mf_forge.statistics(name, 2)["model_stats"]] == ["2"]
    assert {(s["name"], s["version"]) for s in mf_forge.statistics()["model_stats"]} >= {(name, "1"), (name, "2")}
    with pytest.raises(ModelNotFoundError):
        mf_forge.statistics(unique())
    with pytest.raises(ModelNotFoundError):
        mf_forge.statistics(name, 3)


def test_a_dynamic_batch_counts_one_execution_of_its_rows(mf_embedded_settings):
    settings = {**mf_embedded_settings, "dynamic_batching": True, "max_batch_size": 64, "max_queue_delay_us": 20000}
    name = unique("mlp")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 3, 256)).astype(np.float32) for i in range(48)]  # 96 rows
    with ModelForge(**settings) as forge:
        forge.register(name, build_wide_mlp(hidden=1024))
        concurrently(lambda x: forge.predict(name, x, use_cache=False), inputs)
        (batcher,) = forge.batchers
        (s,) = forge.statistics(name)["model_stats"]

    assert batcher.batches < 48
    assert (s["inference_count"], s["execution_count"]) == (96, batcher.batches)
    assert sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == batcher.batches
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in s["batch_stats"]) == 96
    assert counts(s)["success"] == counts(s)["compute_infer"] == counts(s)["queue"] == 48
    # each request counts its batch's run: more compute_infer time in all than the runs took
    assert s["inference_stats"]["compute_infer"]["ns"] > sum(b["compute_infer"]["ns"] for b in s["batch_stats"])


def test_folds_racing_predictions_from_threads_lose_nothing():
    # Given: a version's counts, threads switching every µs, each thread recording hits and executed requests of
    # its own known durations (past metrics.FOLD_AT, so the recording threads fold too) while a reader folds
    stats, threads, n = metrics.METRICS.of(unique(), 1), 4, metrics.FOLD_AT + 1500
    done, reads = threading.Event(), [0]

    def record(t: int) -> None:
        start = time.perf_counter_ns()
        for _ in range(n):
            stats.hit(start, start + 1000, start + 1000 + 11 * (t + 1))
            metrics.served_by((start + 5000, start + 5000 + 20_000 * (t + 1), t + 1))
            stats.executed(start, start + 1000, start + 1007, True)

    def read() -> None:
        while not done.is_set():
            stats.to_dict(0)
            reads[0] += 1

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        reader = threading.Thread(target=read)
        reader.start()
        concurrently(record, range(threads), workers=threads)
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(switch)

    # Then: every request counted once, in the buckets of its durations; each run once, by rows
    s = stats.to_dict(0)
    assert reads[0] > 1
    assert counts(s) == {"success": 2 * threads * n, "fail": 0, "queue": threads * n, "compute_input": threads * n,
                         "compute_infer": threads * n, "compute_output": threads * n, "cache_hit": threads * n,
                         "cache_miss": threads * n}
    assert s["inference_stats"]["cache_hit"]["ns"] == sum(11 * (t + 1) for t in range(threads)) * n
    assert s["inference_stats"]["cache_miss"]["ns"] == 7 * threads * n
    assert s["inference_stats"]["queue"]["ns"] == (5000 - 1007) * threads * n
    infer = [20_000 * (t + 1) for t in range(threads)]  # µs 20, 40, 60, 80: buckets "le" 20, 50, 75, 100
    assert s["inference_stats"]["compute_infer"]["ns"] == sum(infer) * n
    buckets = [0] * (len(metrics.DURATION_BOUNDS_US) + 1)
    for ns in infer:
        buckets[metrics.DURATION_BOUNDS_US.index({20: 20, 40: 50, 60: 75, 80: 100}[ns // 1000])] += n
    assert stats.stage("compute_infer").buckets == buckets
    assert (s["inference_count"], s["execution_count"]) == (sum(t + 1 for t in range(threads)) * n, threads * n)
    assert s["batch_stats"] == [{"batch_size": t + 1, "compute_infer": {"count": n, "ns": infer[t] * n}}
                                for t in range(threads)]


def test_recording_folds_past_its_bound_with_no_reader():
    stats, start = metrics.METRICS.of(unique(), 1), time.perf_counter_ns()
    for _ in range(metrics.FOLD_AT - 1):
        stats.hit(start, start, start)
    assert stats.last_ns == 0  # recorded, not folded: no reader yet
    stats.hit(start, start, start)
    assert stats.last_ns > start  # the FOLD_AT-th folded them all, with no reader
    assert stats.stage("cache_hit").count == metrics.FOLD_AT


@pytest.mark.parametrize(("error", "reason"), [
    (errors.InvalidInputError("x"), "invalid_input"), (errors.ModelForgeError("bad version"), "invalid_input"),
    (errors.ModelNotFoundError("x"), "not_found"), (errors.InferenceError("x"), "inference_error"),
    (errors.InferenceTimeoutError("x"), "timeout"), (errors.RequestCancelledError("x"), "cancelled"),
    (errors.ResourceLimitError("x"), "resource_limit"), (errors.ServiceUnavailableError("x"), "unavailable"),
    (RuntimeError("x"), "other"),
])
def test_failure_reasons(error, reason):
    assert metrics.reason_of(error) == reason


# -- the Jupyter server: its own /metrics, and the statistics endpoints ----------------------------------------------
@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """A jupyter server on PostgreSQL + Redis (cache hits answered on the event loop, ``loop_hits``) with
    ``ServerApp.authenticate_prometheus`` off."""
    root = tmp_path_factory.mktemp("metrics-open")
    with mf_fresh_services() as services:
        env = mf_isolated_env(root, DATABASE_URL=services["database_url"], REDIS_URL=services["redis_url"],
                              CACHE_KEY_PREFIX=services["cache_key_prefix"])
        server = mf_start_server(root, env, args=("--ServerApp.authenticate_prometheus=False",))
        yield server
        server.stop()


def send_known_requests(server, name: str) -> None:
    """PUT ``name`` (iris), then a miss, two hits, a refused input (400) and an unknown version (404)."""
    status, body = mf_http("PUT", server.url + f"modelforge/models/{name}", IRIS.read_bytes(), server.token)
    assert status == 201, body
    body = b'{"model_id": "%s", "input_data": %s}' % (name.encode(), str(X.tolist()).encode())
    for _ in range(3):
        assert mf_http("POST", server.url + "modelforge/predict", body, server.token)[0] == 200
    bad = b'{"model_id": "%s", "input_data": [[1, 2]]}' % name.encode()  # 2 features, not 4
    assert mf_http("POST", server.url + "modelforge/predict", bad, server.token)[0] == 400
    missing = b'{"model_id": "%s", "version": 7, "input_data": [[1, 2, 3, 4]]}' % name.encode()
    assert mf_http("POST", server.url + "modelforge/predict", missing, server.token)[0] == 404


def assert_scraped(text: str, name: str) -> None:
    labels = {"model": name, "version": "1"}
    assert scrape(text, "modelforge_inference_request_success_total", **labels) == 3
    assert scrape(text, "modelforge_cache_num_hits_per_model_total", **labels) == 2
    assert scrape(text, "modelforge_cache_num_misses_per_model_total", **labels) == 1
    assert scrape(text, "modelforge_inference_exec_count_total", **labels) == 1
    assert scrape(text, "modelforge_inference_request_failure_total", **labels, reason="invalid_input") == 1
    assert scrape(text, "modelforge_inference_request_duration_us_count", **labels) == 3
    assert scrape(text, "modelforge_cache_hit_duration_us_count", **labels) == 2


def test_jupyter_metrics_need_the_token_by_default(mf_live_server):
    server, name = mf_live_server, unique()
    send_known_requests(server, name)

    assert mf_http("GET", server.url + "metrics")[0] in (401, 403)
    status, body = mf_http("GET", server.url + "metrics", token=server.token)
    assert status == 200
    assert_scraped(body.decode(), name)
    assert b"http_request_duration_seconds" in body  # Jupyter's own metrics, in the same scrape


def test_jupyter_metrics_without_authentication_and_loop_hits(open_server):
    server, name = open_server, unique()
    send_known_requests(server, name)

    status, body = mf_http("GET", server.url + "metrics")  # no token: authenticate_prometheus is off
    assert status == 200
    assert_scraped(body.decode(), name)


def test_jupyter_statistics_endpoints(open_server):
    server, name = open_server, unique()
    send_known_requests(server, name)

    status, body = mf_http("GET", server.url + f"modelforge/models/{name}/stats", token=server.token)
    assert status == 200, body
    (s,) = json.loads(body)["model_stats"]
    assert counts(s) | {"inference_count": s["inference_count"]} == {
        "success": 3, "fail": 1, "queue": 1, "compute_input": 1, "compute_infer": 1, "compute_output": 1,
        "cache_hit": 2, "cache_miss": 1, "inference_count": 3}
    assert mf_http("GET", server.url + f"modelforge/models/{unique()}/stats", token=server.token)[0] == 404
    assert mf_http("GET", server.url + f"modelforge/models/{name}/stats?version=x", token=server.token)[0] == 400

    # V2's statistics extension over the same counts, read by Triton's own client
    client = tc.InferenceServerClient(url=server.url.removeprefix("http://") + "modelforge")
    try:
        headers = {"Authorization": f"token {server.token}"}
        assert "statistics" in client.get_server_metadata(headers=headers)["extensions"]
        assert client.get_inference_statistics(name, headers=headers) == {"model_stats": [s]}
        assert client.get_inference_statistics(name, "1", headers=headers)["model_stats"][0]["name"] == name
        every = client.get_inference_statistics(headers=headers)["model_stats"]
        assert name in {m["name"] for m in every}
        with pytest.raises(tc.InferenceServerException, match="no version 2"):
            client.get_inference_statistics(name, "2", headers=headers)
    finally:
        client.close()
