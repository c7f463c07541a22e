"""``%mf_stats`` and the readings under it (``core.live_stats``): a real Jupyter server's ``/metrics`` and this
process's own counts, read as the requests sent; the text lines and the live widget dashboard in IPython."""

from __future__ import annotations

import time
import uuid
from bisect import bisect_left

import numpy as np
import pytest

from modelforge_jupyter.core.client import ModelForgeClient
from modelforge_jupyter.core.live_stats import local_sample, parse_sample, quantile, reading
from modelforge_jupyter.core.metrics import DURATION_BOUNDS_US
from modelforge_jupyter.core.samples import sample_path
from tests.mf_plugin.jupyter import mf_http, mf_run_cell

IRIS = sample_path("iris.onnx")


def test_quantiles_fall_in_the_bucket_of_the_exact_percentile():
    rng = np.random.default_rng(0)
    durations_us = rng.lognormal(np.log(300), 1.0, 5000)
    buckets = [0] * (len(DURATION_BOUNDS_US) + 1)
    for d in durations_us:
        buckets[bisect_left(DURATION_BOUNDS_US, d)] += 1
    bounds = (0,) + DURATION_BOUNDS_US
    for q in (0.5, 0.9, 0.99):
        exact = float(np.percentile(durations_us, 100 * q))
        i = bisect_left(DURATION_BOUNDS_US, exact)
        assert bounds[i] <= quantile(q, buckets) <= DURATION_BOUNDS_US[i]
    assert quantile(0.5, [0] * len(buckets)) is None


def send(server, name: str) -> None:
    """3 distinct inputs, then each again (3 misses, 3 hits), and a refused input (400)."""
    for repeat in range(2):
        for i in range(3):
            body = b'{"model_id": "%s", "input_data": [[5.1, 3.5, 1.4, %d]]}' % (name.encode(), i)
            assert mf_http("POST", server.url + "modelforge/predict", body, server.token)[0] == 200
    bad = b'{"model_id": "%s", "input_data": [[1, 2]]}' % name.encode()
    assert mf_http("POST", server.url + "modelforge/predict", bad, server.token)[0] == 400


def test_a_servers_metrics_read_as_the_requests_sent(mf_live_server):
    server, name = mf_live_server, f"ls_{uuid.uuid4().hex[:8]}"
    assert mf_http("PUT", server.url + f"modelforge/models/{name}", IRIS.read_bytes(), server.token)[0] == 201
    with ModelForgeClient(server.url, server.token) as client:
        before = parse_sample(client.metrics_text(), name, at=0.0)
        send(server, name)
        after = parse_sample(client.metrics_text(), name, at=2.0)
        other = parse_sample(client.metrics_text(), "some_other_model", at=2.0)

    r = reading(before, after)
    assert r.requests_per_s == 3.5 and r.failures_per_s == 0.5  # 7 requests (one refused) in 2 s
    assert r.hit_ratio == 0.5 and r.sessions >= 1 and r.session_bytes > 0
    assert 0 < r.p50_ms["request"] <= r.p99_ms["request"] < 10_000
    assert r.p50_ms["compute"] is not None and r.p50_ms["cache"] is not None
    assert "inference_request_success" not in other.counters  # another model's counts are not this one's
    with ModelForgeClient(server.url, "wrong-token") as stranger, pytest.raises(Exception, match="HTTP 403"):
        stranger.metrics_text()


def test_this_process_reads_its_own_predictions(mf_forge):
    mf_forge.register("ls_local", IRIS)
    before = local_sample("ls_local")
    for i in range(4):
        mf_forge.predict("ls_local", [[5.0, 3.0, 1.0, float(i % 2)]])  # 2 misses, 2 hits
    after = local_sample("ls_local")
    after.at = before.at + 1.0
    r = reading(before, after)
    assert (r.requests_per_s, r.hit_ratio, r.failures_per_s) == (4.0, 0.5, 0.0)
    assert r.p50_ms["queue"] is not None and r.sessions >= 1


def test_mf_stats_text_shows_the_server_and_the_kernel(mf_live_server, mf_shell, tmp_path, capsys):
    server = mf_live_server
    ip = mf_shell(server_url=server.url, server_token=server.token, database_url=f"sqlite:///{tmp_path}/r.db",
                  cache_dir=str(tmp_path / "cache"))
    mf_run_cell(ip, f"%mf_register ls_text {IRIS}")
    capsys.readouterr()
    mf_run_cell(ip, "%mf_stats ls_text --text --seconds 0.6 --interval 0.3")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ModelForge live: ls_text"
    assert sum(line.startswith("server: ") and " req/s, p50 " in line for line in lines) == 2
    assert sum(line.startswith("kernel: ") and " req/s, p50 " in line for line in lines) == 2

    mf_run_cell(ip, "%mf_stats nope --text --seconds 0.1")
    assert "model 'nope' is not registered" in capsys.readouterr().err


def test_mf_stats_dashboard_refreshes_until_stopped(mf_ip, mf_live_server, capsys):
    mf_run_cell(mf_ip, "%config ModelForgeMagics.widgets = 'on'")
    mf_run_cell(mf_ip, f"%config ModelForgeMagics.server_url = '{mf_live_server.url}'")
    mf_run_cell(mf_ip, "%config ModelForgeMagics.server_token = 'wrong-token'")
    mf_run_cell(mf_ip, f"%mf_register ls_dash {IRIS}")
    board = mf_run_cell(mf_ip, "%mf_stats ls_dash --interval 0.2")
    for i in range(20):
        mf_run_cell(mf_ip, f"_ = %mf_predict ls_dash [[5.1, 3.5, 1.4, {i % 3}]]")
    kernel = board.sources[1]
    deadline = time.monotonic() + 15
    while sum(r.requests_per_s * r.seconds for r in kernel.readings) < 19.99 and time.monotonic() < deadline:
        time.sleep(0.1)  # the readings after the predictions: every 0.2 s, however loaded the machine
    assert board.running
    board.stop()
    assert not board.running and board.status == "stopped" and board.button.disabled
    assert board.plot.value[:8] == b"\x89PNG\r\n\x1a\n"
    text = board._repr_mimebundle_()["text/plain"]
    assert "server: not read (" in text and "HTTP 403" in text  # a source that cannot be read says why
    assert "kernel: " in text and " req/s" in text
    assert sum(r.requests_per_s * r.seconds for r in kernel.readings) == pytest.approx(20, abs=0.01)
    # stopped, a headline sums the whole run, however idle its last reading was
    whole = kernel.whole()
    assert whole.requests_per_s * whole.seconds == pytest.approx(20, abs=0.01) and whole.hit_ratio is not None
    (line,) = [t for t in text.splitlines() if t.startswith("kernel: ")]
    assert line.endswith(f", over {whole.seconds:,.1f} s") and f"{whole.requests_per_s:,.1f} req/s" in line, line
    for bad in ("--interval 0", "--interval nan", "--seconds inf", "--seconds -1", "--interval 1e9"):
        mf_run_cell(mf_ip, f"%mf_stats ls_dash {bad}")
        assert "UsageError: --interval and --seconds must be > 0" in capsys.readouterr().err, bad
