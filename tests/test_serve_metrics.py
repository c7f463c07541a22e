"""``modelforge serve``'s ``/metrics``: every worker's counts in one scrape (prometheus_client's multiprocess mode, in a
directory the server makes and removes), a dead worker's counts kept and its gauges dropped; its statistics routes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris

from modelforge_jupyter.core.prometheus import parse

from .mf_plugin import SAMPLES, mf_embedded, mf_wait_until
from .test_serve import http, start_serve

IRIS = SAMPLES / "iris.onnx"
LABELS = (("model", "iris"), ("version", "1"))


def scrape(url: str) -> dict:
    status, headers, body = http("GET", url)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    return parse(body.decode())


def multiproc_dir(pid: int) -> Path:
    """The ``PROMETHEUS_MULTIPROC_DIR`` a worker was started with (its supervisor set it after it started)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (entry,) = [e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(entry.split(b"=", 1)[1].decode())


def gauge(path: Path, name: str) -> float:
    """The value of gauge ``name`` in one process's multiprocess file."""
    from prometheus_client.mmap_dict import MmapedDict

    return sum(value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
               if json.loads(key)[1] == name)


def test_one_scrape_sums_every_worker_and_keeps_a_dead_ones_counts(tmp_path):
    server = start_serve(tmp_path, mf_embedded(tmp_path / "modelforge"), workers=2)
    try:
        metrics_url = server.url.removesuffix("modelforge/") + "metrics"
        assert http("GET", metrics_url, token=None)[0] == 403  # the token, as every other route
        status, _, body = http("PUT", server.url + "models/iris", IRIS.read_bytes())
        assert status == 201, body
        workers = server.workers()
        assert len(workers) == 2
        files = multiproc_dir(workers[0])

        # When 20 distinct predictions (misses) come, each on a new connection: both workers answer some
        rows = load_iris().data.astype(np.float32)
        for i in range(20):
            body = json.dumps({"model_id": "iris", "input_data": rows[i : i + 1].tolist()}).encode()
            assert http("POST", server.url + "predict", body)[0] == 200

        # Then one scrape counts all 20 (the other worker's within its write period, a second)
        def success() -> float:
            return scrape(metrics_url).get(("modelforge_inference_request_success_total", LABELS), 0)

        assert mf_wait_until(lambda: success() == 20, 10), success()
        values = scrape(metrics_url)
        assert values[("modelforge_inference_exec_count_total", LABELS)] == 20
        assert values[("modelforge_inference_request_duration_us_count", LABELS)] == 20
        written = {p.name for p in files.iterdir()}
        assert {f"counter_{pid}.db" for pid in workers} <= written, written
        loaded = values[("modelforge_sessions_loaded", ())]  # a session in each worker that ran one
        assert loaded == sum(gauge(files / f"gauge_livesum_{pid}.db", "modelforge_sessions_loaded") for pid in workers)
        killed = gauge(files / f"gauge_livesum_{workers[0]}.db", "modelforge_sessions_loaded")

        # When a worker is killed: its counts stay, its gauges go (uvicorn starts another worker)
        os.kill(workers[0], signal.SIGKILL)
        assert mf_wait_until(lambda: workers[0] not in server.workers(), 10)
        values = scrape(metrics_url)
        assert values[("modelforge_inference_request_success_total", LABELS)] == 20
        assert values[("modelforge_sessions_loaded", ())] == loaded - killed
        assert not (files / f"gauge_livesum_{workers[0]}.db").exists()

        # Triton's statistics of one worker's process; V2's, every model it counted
        status, _, body = http("GET", server.url + "models/iris/stats")
        (stats,) = json.loads(body)["model_stats"]
        assert status == 200 and stats["name"] == "iris" and stats["inference_stats"]["success"]["count"] <= 20
        assert http("GET", server.url + "models/nope/stats")[0] == 404
        status, _, body = http("GET", server.url + "v2/models/iris/versions/1/stats")
        assert status == 200 and json.loads(body)["model_stats"][0]["version"] == "1"
        status, _, body = http("GET", server.url + "v2/models/stats")
        assert status == 200 and isinstance(json.loads(body)["model_stats"], list)
        assert http("GET", server.url + "v2/models/iris/versions/2/stats")[0] == 404
    finally:
        server.stop()
    assert not files.exists()  # the server removed its metrics directory

