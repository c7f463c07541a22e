"""Work that never stops: the inference timeout and cancellation really stop ONNX Runtime's run (``deadline``).

The model is a Loop whose trip count is read from its input (the max of ``x``), its body a 256x256 MatMul + Tanh:
``x[0, 0] = 3`` runs 3 iterations, ``1e9`` would run for hours. Whether the run stopped is read from CPU time, not
from the exception alone: a run that raised but kept spinning would still burn a core.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
import urllib.parse
import warnings

import numpy as np
import orjson
import pytest

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.deadline import Cancellation, watchdog
from modelforge_jupyter.core.errors import InferenceTimeoutError, ModelForgeError, RequestCancelledError
from modelforge_jupyter.kernel.client import ModelForgeClient
from modelforge_jupyter.core.settings import Settings

from .mf_plugin import FOREVER, mf_http, mf_isolated_env, mf_raw_run, mf_spin_input, mf_spin_model, mf_start_server

def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_over(seconds: float) -> float:
    """Process CPU seconds spent while sleeping ``seconds``: ~0 when nothing runs, ~seconds per spinning run."""
    before = cpu_seconds()
    time.sleep(seconds)
    return cpu_seconds() - before


def test_timeout_stops_the_run_and_the_next_predict_works(mf_settings):
    with ModelForge(**mf_settings, inference_timeout=0.5) as forge:
        forge.register("spin", mf_spin_model())
        forge.predict("spin", mf_spin_input(3), use_cache=False)  # warm: the session is loaded

        # When a run would take hours
        start = time.monotonic()
        with pytest.raises(InferenceTimeoutError) as raised:
            forge.predict("spin", mf_spin_input(FOREVER))
        elapsed = time.monotonic() - start

        # Then it is stopped at the limit: 504, naming the model, the limit and the setting; no core keeps spinning
        assert 0.45 < elapsed < 3.0, elapsed
        assert raised.value.status == 504
        assert "'spin'" in str(raised.value) and "500 ms" in str(raised.value)
        assert "inference_timeout" in str(raised.value) and "MODELFORGE_INFERENCE_TIMEOUT" in str(raised.value)
        assert cpu_over(0.5) < 0.2

        # and nothing was cached: the same request runs (and is stopped) again, here at predict's own timeout=
        with pytest.raises(InferenceTimeoutError, match="'spin' did not finish within 200 ms"):
            forge.predict("spin", mf_spin_input(FOREVER), timeout=0.2)

        # and the next predict works and equals raw ONNX Runtime
        x = mf_spin_input(3, rows=2)
        result = forge.predict("spin", x)
        (want,) = mf_raw_run(mf_spin_model().SerializeToString(), {"x": x})
        np.testing.assert_array_equal(np.asarray(result.output_data["y"], np.float32), want)


def test_timeout_zero_means_no_limit(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings, inference_timeout=0.05) as forge:
        forge.register("spin", mf_spin_model())
        forge.predict("spin", mf_spin_input(3))
        trips = 20000  # ~0.2 s: over the setting's 50 ms

        with pytest.raises(InferenceTimeoutError, match="within 50 ms"):
            forge.predict("spin", mf_spin_input(trips), use_cache=False)
        result = forge.predict("spin", mf_spin_input(trips), use_cache=False, timeout=0)

        assert len(result.output_data["y"]) == 1


def test_a_cancelled_run_stops_and_a_cancelled_request_never_starts(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings, inference_timeout=60) as forge:
        forge.register("spin", mf_spin_model())
        forge.predict("spin", mf_spin_input(3))
        cancel = Cancellation()
        errors: list[BaseException] = []

        def predict() -> None:
            try:
                forge.predict("spin", mf_spin_input(FOREVER), cancel=cancel)
            except BaseException as err:
                errors.append(err)

        # Given a run that would take hours, in another thread
        worker = threading.Thread(target=predict, daemon=True)
        worker.start()
        time.sleep(0.3)

        # When its caller cancels it
        cancel.cancel()
        worker.join(5)

        # Then the run stops (499, naming the model and why) and burns no more CPU
        assert not worker.is_alive()
        (err,) = errors
        assert isinstance(err, RequestCancelledError) and err.status == 499
        assert str(err) == "prediction of model 'spin' cancelled: the client closed the connection"
        assert cpu_over(0.5) < 0.2

        # and a request cancelled before it starts does not run at all, not even for a cache lookup
        start = time.monotonic()
        with pytest.raises(RequestCancelledError):
            forge.predict("spin", mf_spin_input(FOREVER), cancel=cancel)
        assert time.monotonic() - start < 0.1


def test_a_batched_run_is_bounded_and_every_request_of_the_batch_gets_the_error(mf_embedded_settings):
    settings = {**mf_embedded_settings, "dynamic_batching": True, "max_queue_delay_us": 0, "model_instances": 1,
                "inference_timeout": 0.5}
    with ModelForge(**settings) as forge:
        forge.register("spin", mf_spin_model())
        forge.predict("spin", mf_spin_input(3))
        runs: list[int] = []  # rows of each session run (run and run_raw both run through run_outputs)
        engine_run_outputs = forge.engine.run_outputs
        forge.engine.run_outputs = lambda *a: runs.append(len(a[2]["x"])) or engine_run_outputs(*a)
        outcomes: dict[str, BaseException | None] = {}

        def predict(name: str, x: np.ndarray) -> None:
            try:
                forge.predict("spin", x, use_cache=False)
                outcomes[name] = None
            except BaseException as err:
                outcomes[name] = err

        # Given a first request running alone (the instance is busy), and two that queue behind it as one batch
        first = threading.Thread(target=predict, args=("first", mf_spin_input(FOREVER)))
        first.start()
        time.sleep(0.15)
        queued = [threading.Thread(target=predict, args=(n, mf_spin_input(FOREVER))) for n in ("b", "c")]
        start = time.monotonic()
        for t in queued:
            t.start()
        for t in [first, *queued]:
            t.join(10)

        # Then the batch's run was stopped at the limit too, once: its requests all got the 504 (not run again alone)
        assert time.monotonic() - start < 4.0
        assert runs == [1, 2], runs
        assert all(isinstance(outcomes[n], InferenceTimeoutError) for n in ("first", "b", "c")), outcomes
        assert "within 500 ms" in str(outcomes["b"]) and outcomes["b"] is outcomes["c"]
        assert cpu_over(0.5) < 0.2


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1", True])
def test_bad_timeouts_are_refused_naming_the_setting(mf_embedded_settings, monkeypatch, bad):
    with ModelForge(**mf_embedded_settings) as forge:
        forge.register("spin", mf_spin_model())
        refused = r"^timeout must be a number of seconds >= 0 \(0 = no limit\), got"
        with pytest.raises(ModelForgeError, match=refused) as e:
            forge.predict("spin", mf_spin_input(3), timeout=bad)
        assert e.value.status == 400
    if not isinstance(bad, (str, bool)):  # traitlets' Float takes True as 1.0, as it takes 1
        with pytest.raises(ValueError, match="inference_timeout must be a number of seconds >= 0"):
            Settings(inference_timeout=bad)
    monkeypatch.setenv("MODELFORGE_INFERENCE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MODELFORGE_INFERENCE_TIMEOUT='soon' is not a number"):
        Settings()


def test_the_default_timeout_is_30_s_from_the_environment(monkeypatch):
    monkeypatch.delenv("MODELFORGE_INFERENCE_TIMEOUT", raising=False)
    assert Settings().inference_timeout == 30.0
    monkeypatch.setenv("MODELFORGE_INFERENCE_TIMEOUT", "2.5")
    assert Settings().inference_timeout == 2.5


# -- over HTTP: a real jupyter server ------------------------------------------------------------------------------
def server_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_over(pid: int, seconds: float) -> float:
    before = server_cpu_seconds(pid)
    time.sleep(seconds)
    return server_cpu_seconds(pid) - before


def predict_body(trips: float) -> bytes:
    return orjson.dumps({"model_id": "spin", "input_data": {"x": mf_spin_input(trips).tolist()}, "use_cache": False})


def live_server(tmp_path_factory, name: str, **env: str):
    root = tmp_path_factory.mktemp(name)
    server = mf_start_server(root, mf_isolated_env(root, MODELFORGE_DATA_DIR=str(root / "modelforge"), **env))
    try:
        status, body = mf_http("PUT", server.url + "modelforge/models/spin", mf_spin_model().SerializeToString(),
                            server.token)
        assert status == 201, body
        assert mf_http("POST", server.url + "modelforge/predict", predict_body(3), server.token)[0] == 200  # warm
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory):
    """A server whose runs may take 0.5 s (``MODELFORGE_INFERENCE_TIMEOUT``)."""
    server = live_server(tmp_path_factory, "timeout-server", MODELFORGE_INFERENCE_TIMEOUT="0.5")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory):
    """A server whose runs may take 10 minutes: only a disconnect can stop them. 4 executor threads."""
    server = live_server(tmp_path_factory, "patient-server", MODELFORGE_INFERENCE_TIMEOUT="600")
    yield server
    server.stop()


def test_http_run_past_the_timeout_answers_504_naming_model_and_limit(timeout_server):
    url, token = timeout_server.url, timeout_server.token

    start = time.monotonic()
    status, body = mf_http("POST", url + "modelforge/predict", predict_body(FOREVER), token)

    assert time.monotonic() - start < 5.0
    assert status == 504
    message = orjson.loads(body)["message"]
    assert message.startswith("model 'spin' did not finish within 500 ms and was stopped"), message
    assert "inference_timeout" in message
    assert server_cpu_over(timeout_server.pid, 1.0) < 0.3  # the run stopped; it did not merely answer
    with ModelForgeClient(timeout_server.url, timeout_server.token) as client:  # a kernel's client: the same error
        with pytest.raises(InferenceTimeoutError, match="'spin' did not finish within 500 ms"):
            client.predict("spin", {"x": mf_spin_input(FOREVER)}, use_cache=False)
    status, body = mf_http("POST", url + "modelforge/predict", predict_body(3), token)
    assert status == 200 and orjson.loads(body)["output_data"]["y"]


def abandon(server, body: bytes) -> socket.socket:
    """Send a predict request on a raw socket and return it unread (the caller closes it: a client giving up)."""
    parts = urllib.parse.urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = (f"POST {parts.path}modelforge/predict HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: token {server.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


def idle_limit(busy: float) -> float:
    """CPU seconds per second under which a server that used ``busy`` CPU s in 0.5 s of spinning counts as idle:
    a third of that rate, between 0.05 (an idle server uses ~0.002) and 0.3 (the box is shared: a spinning run may
    get well under a core)."""
    return max(0.05, min(0.3, busy / 0.5 / 3))


def wait_until_idle(pid: int, limit: float, within: float = 6.0) -> float:
    """Wait until the server spends < ``limit`` CPU seconds in a 1 s window; the last window's CPU seconds."""
    deadline = time.monotonic() + within
    while True:
        used = server_cpu_over(pid, 1.0)
        if used < limit or time.monotonic() > deadline:
            return used


def test_http_client_that_gives_up_stops_its_run(patient_server):
    pid = patient_server.pid

    # Given a client whose request would run for hours, and which gives up after 0.5 s
    sock = abandon(patient_server, predict_body(FOREVER))
    busy = server_cpu_over(pid, 0.5)
    sock.close()

    # Then the server stops computing for it (and logs the cancellation as 499)
    assert busy > 0.05, "the run did not even start"
    assert wait_until_idle(pid, idle_limit(busy)) < idle_limit(busy)
    assert "499 POST" in patient_server.log and "prediction of model 'spin' cancelled" in patient_server.log


def test_http_abandoned_requests_do_not_block_the_pool(patient_server):
    pid = patient_server.pid

    cancelled = patient_server.log.count("cancelled: the client closed the connection")

    # Given abandoned endless requests: as many as the server has executor threads (max_workers = 4), and 2 more
    # waiting for a thread
    socks = [abandon(patient_server, predict_body(FOREVER)) for _ in range(6)]
    busy = server_cpu_over(pid, 0.5)
    for sock in socks:
        sock.close()

    # Then the server goes idle: the 4 runs stopped, the 2 waiting never started (all 6 logged as cancelled)
    assert busy > 0.05
    assert wait_until_idle(pid, idle_limit(busy)) < idle_limit(busy)
    assert patient_server.log.count("cancelled: the client closed the connection") - cancelled == 6

    # and a normal predict is answered at once
    start = time.monotonic()
    status, body = mf_http("POST", patient_server.url + "modelforge/predict", predict_body(3), patient_server.token)
    assert status == 200 and time.monotonic() - start < 5.0
    (want,) = mf_raw_run(mf_spin_model().SerializeToString(), {"x": mf_spin_input(3)})
    np.testing.assert_array_equal(np.asarray(orjson.loads(body)["output_data"]["y"], np.float32), want)


def test_the_watchdog_is_not_woken_per_run_and_works_in_a_forked_child(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings, inference_timeout=30) as forge:
        sha256 = forge.register("spin", mf_spin_model()).sha256
        forge.predict("spin", mf_spin_input(3), use_cache=False)
        dog = watchdog()
        wakeups = dog.wakeups

        # Given a steady stream of runs with one timeout, spaced as a client's requests: they need no wake-up of the
        # watchdog thread (a wake-up is a thread switch: about as costly as the run of a small model)
        for _ in range(200):
            forge.predict("spin", mf_spin_input(1), use_cache=False)
            time.sleep(0.001)
        assert dog.wakeups - wakeups <= 2, dog.wakeups - wakeups

        # When the process forks (the child has no watchdog thread), a run in the child is still stopped in time
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only runs ORT
            pid = os.fork()
        if pid == 0:  # the child: exit code 0 only if the run was stopped by its own watchdog
            code = 1
            try:  # the engine alone: the child leaves the parent's database and cache connections alone
                forge.engine.run(sha256, mf_spin_model().SerializeToString, {"x": mf_spin_input(FOREVER)}, "spin", 0.3)
            except InferenceTimeoutError:
                code = 0 if watchdog() is not dog else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if status[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's run was never stopped")
        assert os.waitstatus_to_exitcode(status[1]) == 0


def test_a_huge_timeout_means_practically_no_limit_and_later_timeouts_still_stop_runs(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings, inference_timeout=1e10) as forge:
        forge.register("spin", mf_spin_model())

        # When runs are given deadlines past what a thread can wait for (threading.TIMEOUT_MAX ~ 9.2e9 s)
        for timeout in (None, 1e10, 10**30, 1e300):  # None: the setting's 1e10
            result = forge.predict("spin", mf_spin_input(3), use_cache=False, timeout=timeout)
            assert len(result.output_data["y"]) == 1
        time.sleep(0.2)  # the watchdog has looked at them (it would have died here: OverflowError)

        # Then the watchdog is alive, and a later timeout still stops a run that would take hours
        assert watchdog()._thread.is_alive()
        start = time.monotonic()
        with pytest.raises(InferenceTimeoutError, match="within 300 ms"):
            forge.predict("spin", mf_spin_input(FOREVER), timeout=0.3)
        assert time.monotonic() - start < 3.0
