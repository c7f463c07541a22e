"""No process serves a stale prediction after an update or delete; the Celery task frees keys and sessions.

Real PostgreSQL, Redis, broker (RabbitMQ and Redis) and Celery worker processes. The guarantee is checked across
three processes (this one and two readers), with the worker running, stopped, and with the broker down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.errors import ModelNotFoundError
from modelforge_jupyter.core.outputs import json_data, unpack

from .mf_plugin import (
    SAMPLES,
    mf_cache_value,
    mf_cached_keys,
    mf_clear_registry,
    mf_delete_queue,
    mf_fresh_services,
    mf_isolated_env,
    mf_launch,
    mf_raw_run,
    mf_start_server,
    mf_wait_until,
    mf_zipmap,
)

IRIS = [SAMPLES / "iris.onnx", SAMPLES / "iris_v2.onnx"]
X = [[5.9, 3.0, 5.1, 1.8]]
XJ = json.dumps(X, separators=(",", ":"))  # one word on the reader's command line
EXPECTED = [mf_raw_run(p, {"float_input": np.array(X, np.float32)})[0].tolist() for p in IRIS]  # labels per file
PROBA = [mf_raw_run(p, {"float_input": np.array(X, np.float32)})[1][0] for p in IRIS]

READER = textwrap.dedent(
    """
    import json, sys
    from modelforge_jupyter import ModelForge
    from modelforge_jupyter.core.errors import ModelForgeError
    with ModelForge(**json.loads(sys.argv[1])) as mf:
        print("ready", flush=True)
        for line in sys.stdin:
            cmd = line.split()
            try:
                if cmd[0] == "predict":
                    r = mf.predict("iris", json.loads(cmd[1]))
                    out = {"version": r.model_version, "proba": r.output_data["output_probability"][0]}
                elif cmd[0] == "update":
                    out = {"version": mf.update("iris", cmd[1]).version}
                elif cmd[0] == "delete":
                    out = {"deleted": mf.delete("iris").name == "iris"}
                elif cmd[0] == "loaded":
                    out = {"loaded": mf.engine.loaded()}
            except ModelForgeError as err:
                out = {"error": err.status, "message": str(err)}
            print(json.dumps(out), flush=True)
    """
)


class Reader:
    """Another process using the Python API, driven line by line over stdin/stdout."""

    def __init__(self, settings: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def ask(self, *words: str) -> dict:
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=20)
        self.proc.stdout.close()


class Worker:
    """A real ``celery -A modelforge_jupyter.tasks worker`` process on its own queue."""

    def __init__(self, broker: str, queue: str, env: dict, log_path) -> None:
        self.broker, self.queue, self.env, self.log_path = broker, queue, env, log_path
        self.name = f"{queue}@localhost"
        self.process = None

    def start(self) -> None:
        from modelforge_jupyter.tasks import make_app

        cmd = [sys.executable, "-m", "celery", "-A", "modelforge_jupyter.tasks", "worker", "-Q", self.queue,
               "-n", self.name, "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-l", "info"]
        self.process = mf_launch(cmd, self.log_path, {**os.environ, **self.env})  # a restart appends to the log
        app = make_app(self.broker)
        try:
            self.process.wait_ready(lambda: app.control.ping(destination=[self.name], timeout=0.5), 60,
                                    "the Celery worker")
        finally:
            app.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(30)


class JupyterServer:
    """A real ``jupyter server`` (``mf_start_server``) sharing the test's registry, cache and broker, driven
    over one keep-alive connection."""

    def __init__(self, settings: dict, tmp_path) -> None:
        import http.client
        from urllib.parse import urlsplit

        root = tmp_path / "server"
        env = mf_isolated_env(root, DATABASE_URL=settings["database_url"], REDIS_URL=settings["redis_url"],
                           CACHE_KEY_PREFIX=settings["cache_key_prefix"],
                           CELERY_BROKER_URL=settings.get("celery_broker_url", ""),
                           MODELFORGE_CELERY_QUEUE=settings.get("celery_queue", "modelforge"))
        self.server = mf_start_server(root, env)
        url = urlsplit(self.server.url)
        self.base = url.path
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        self.conn.request(method, self.base + path, body=body, headers={"Authorization": f"token {self.server.token}"})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else {})

    def update(self, path) -> dict:
        status, body = self.request("PUT", "modelforge/models/iris", path.read_bytes())
        assert status in (200, 201), body
        return body

    def predict(self) -> dict:
        status, body = self.request("POST", "modelforge/predict", json.dumps({"model_id": "iris", "input_data": X}).encode())
        if status != 200:
            return {"error": status, "message": body.get("message")}
        return {"version": body["model_version"], "proba": body["output_data"]["output_probability"][0]}

    def close(self) -> None:
        self.conn.close()
        self.server.stop()


@pytest.fixture(scope="module")
def mf_module_stack(mf_module_broker, tmp_path_factory):
    """(settings for ModelForge, a running Worker, a JupyterServer) on a fresh database, key prefix and queue, started
    once per broker for this module's tests; the queue is deleted after."""
    from modelforge_jupyter.tasks import make_app

    root = tmp_path_factory.mktemp("invalidation")
    queue = f"mftest-{uuid.uuid4().hex[:10]}"
    with mf_fresh_services() as services:
        settings = {**services, "celery_broker_url": mf_module_broker, "celery_queue": queue,
                    "celery_probe_ttl": 1.0}
        worker = Worker(mf_module_broker, queue, {"CELERY_BROKER_URL": mf_module_broker,
                                                  "REDIS_URL": settings["redis_url"], "MODELFORGE_CELERY_QUEUE": queue,
                                                  "DATABASE_URL": settings["database_url"]},
                        root / "worker.log")
        server = None
        try:
            worker.start()
            server = JupyterServer(settings, root)
            yield settings, worker, server
        finally:
            if server is not None:
                server.close()
            worker.stop()
            app = make_app(mf_module_broker)
            mf_delete_queue(app, queue)
            app.close()


@pytest.fixture
def mf_stack(mf_module_stack):
    """``mf_module_stack`` with its worker running and an empty registry, no cached prediction left (the worker ran
    the cleanup of what an earlier test left)."""
    settings, worker, server = mf_module_stack
    if not worker.running:
        worker.start()
    with ModelForge(**settings) as forge:
        mf_clear_registry(forge)
        assert mf_wait_until(lambda: mf_cached_keys(forge) == [])
    return mf_module_stack


def predict_everywhere(server: JupyterServer, readers: list[Reader]) -> list[dict]:
    """The same input, at once, through the server and through each reader process."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1 + len(readers)) as pool:
        calls = [pool.submit(server.predict)] + [pool.submit(r.ask, "predict", XJ) for r in readers]
        return [c.result() for c in calls]


def run_cycles(server: JupyterServer, readers: list[Reader], cycles: int) -> list[str]:
    """Update through alternating doors (HTTP PUT, the Python API in another process), then predict at once
    through the server and two other processes; return every stale answer."""
    stale = []
    for i in range(cycles):
        path = IRIS[(i + 1) % 2]
        if i % 2:
            version = server.update(path)["version"]
        else:
            version = readers[0].ask("update", str(path))["version"]
        want = PROBA[(i + 1) % 2]
        for a in predict_everywhere(server, readers):
            got = [a["proba"][k] for k in ("0", "1", "2")] if "proba" in a else None
            if a.get("version") != version or not np.allclose(got, [want[k] for k in (0, 1, 2)], rtol=0, atol=1e-7):
                stale.append(f"cycle {i}: expected v{version}, got {a}")
    return stale


@pytest.mark.timeout(300)
def test_no_stale_answer_after_updates_with_worker_running_then_stopped(mf_stack):
    settings, worker, server = mf_stack
    with ModelForge(**settings) as forge:
        forge.register("iris", IRIS[0])
        readers = [Reader(settings), Reader(settings)]
        try:
            assert mf_wait_until(lambda: forge.health()["celery"] == "connected", 10)
            assert run_cycles(server, readers, 100) == []

            worker.stop()
            assert mf_wait_until(lambda: forge.health()["celery"] == "disconnected", 10)
            assert run_cycles(server, readers, 100) == []
            assert mf_cached_keys(forge), "with the worker stopped, old keys stay until it runs again"

            worker.start()
            assert mf_wait_until(lambda: mf_cached_keys(forge) == [])  # the queued tasks ran
            forge.predict("iris", X)  # one fresh key for the current version, then an update makes it old
            latest_is_v1_bytes = forge.get("iris").sha256 == forge.get("iris", 1).sha256
            assert forge.update("iris", IRIS[1] if latest_is_v1_bytes else IRIS[0]).version == 202  # 1 + 100 + 100 updates + this one
            assert mf_wait_until(lambda: mf_cached_keys(forge) == [])
        finally:
            for r in readers:
                r.close()


@pytest.mark.timeout(300)
def test_no_answer_after_deletes_through_either_door(mf_stack):
    settings, worker, server = mf_stack
    with ModelForge(**settings) as forge:
        readers = [Reader(settings), Reader(settings)]
        wrong = []
        try:
            for i in range(100):
                forge.register("iris", IRIS[i % 2])
                assert all("proba" in a for a in predict_everywhere(server, readers))
                if i % 2:
                    assert server.request("DELETE", "modelforge/models/iris")[0] == 204
                else:
                    assert readers[0].ask("delete")["deleted"] is True
                wrong += [f"cycle {i}: {a}" for a in predict_everywhere(server, readers) if a.get("error") != 404]
            assert wrong == []
        finally:
            for r in readers:
                r.close()


def test_delete_is_seen_everywhere_and_frees_sessions_via_event(mf_stack):
    settings, worker, _ = mf_stack
    with ModelForge(**settings) as forge:
        rec = forge.register("iris", IRIS[0])
        reader = Reader(settings)
        try:
            assert reader.ask("predict", XJ)["version"] == 1
            assert reader.ask("loaded")["loaded"] == [rec.sha256]

            forge.delete("iris")

            answer = reader.ask("predict", XJ)
            assert answer["error"] == 404 and "not registered" in answer["message"]
            with pytest.raises(ModelNotFoundError):
                forge.predict("iris", X)
            assert mf_wait_until(lambda: reader.ask("loaded")["loaded"] == [])
            assert mf_wait_until(lambda: mf_cached_keys(forge) == [])
        finally:
            reader.close()


def test_health_counts_only_a_worker_of_its_own_queue(mf_stack):
    # Given the stack's worker, consuming the stack's queue only
    settings, worker, _ = mf_stack
    other = {**settings, "celery_queue": f"mftest-nobody-{uuid.uuid4().hex[:8]}"}
    with ModelForge(**settings) as forge, ModelForge(**other) as elsewhere:
        # Then a ModelForge sending to that queue sees it connected, one sending to a queue nobody consumes does not
        assert mf_wait_until(lambda: forge.health()["celery"] == "connected", 10)
        assert mf_wait_until(lambda: elsewhere.health()["celery"] == "disconnected", 10)
        assert (elsewhere.health()["celery"], elsewhere.health()["status"]) == ("disconnected", "degraded")


def test_broker_down_update_succeeds_and_cleans_up_inline(mf_services_settings):
    settings = {**mf_services_settings, "celery_broker_url": "amqp://guest:guest@127.0.0.1:1//"}
    with ModelForge(**settings) as forge:
        forge.register("iris", IRIS[0])
        forge.predict("iris", X)
        assert len(mf_cached_keys(forge)) == 1

        rec = forge.update("iris", IRIS[1])

        assert rec.version == 2 and mf_cached_keys(forge) == []
        res = forge.predict("iris", X)
        assert (res.model_version, res.cached) == (2, False)
        assert forge.health()["status"] == "degraded"


def bounded(fn, seconds: float):
    """(fn(), seconds it took), failing the test when fn has not returned within ``seconds`` (a hang)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    try:
        t0 = time.perf_counter()
        result = pool.submit(fn).result(timeout=seconds)
        return result, time.perf_counter() - t0
    finally:
        pool.shutdown(wait=False)


@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_a_broker_that_never_answers_costs_health_and_model_changes_only_its_deadline(
    mf_services_settings, mf_silent_listener, scheme
):
    from modelforge_jupyter.tasks import celery_probe

    # Given a broker that accepts connections and never answers, a 0.5 s broker deadline and a 1 s probe TTL
    broker = f"{scheme}://guest:guest@127.0.0.1:{mf_silent_listener}//" if scheme == "amqp" else \
        f"redis://127.0.0.1:{mf_silent_listener}/0"
    settings = {**mf_services_settings, "celery_broker_url": broker, "broker_timeout": 0.5, "celery_probe_ttl": 1.0}
    with ModelForge(**settings) as forge:
        forge.register("iris", IRIS[0])

        # When health is asked ten times: the first waits for the process's first probe (the broker deadline)
        first, first_s = bounded(forge.health, 10)
        later = [bounded(forge.health, 10) for _ in range(10)]

        # Then it answers degraded at once from the background probe, which ran once or twice, not per call
        assert (first["status"], first["celery"], first["database"]) == ("degraded", "disconnected", "connected")
        assert first_s < 2.5 and max(s for _, s in later) < 0.2, (first_s, [s for _, s in later])
        assert {h["celery"] for h, _ in later} == {"disconnected"}
        assert celery_probe(broker, 1.0, 0.5).probes <= 3

        # When the model changes three times
        changes = []
        for path in (IRIS[1], IRIS[0], IRIS[1]):
            forge.predict("iris", X)
            assert len(mf_cached_keys(forge)) == 1
            changes.append(bounded(lambda p=path: forge.update("iris", p), 10)[1])
            # Then the cleanup ran inline: the old answers are gone now, not at their TTL
            assert mf_cached_keys(forge) == []

        # and only the first change paid the broker's deadline: the breaker skips it for cache_retry_after s
        assert changes[0] < 2.5 and max(changes[1:]) < 0.3, changes
        assert forge.predict("iris", X).model_version == 4

    # A Redis that never answers costs a cache call its redis_timeout (0.25 s), as it costs the broker's its own
    from modelforge_jupyter.core.cache import RedisCache

    silent_cache = RedisCache(f"redis://127.0.0.1:{mf_silent_listener}/0", timeout=0.25)
    try:
        value, took = bounded(lambda: silent_cache.get("k"), 5)
        pong, ping_took = bounded(silent_cache.ping, 5)
        assert value is None and pong is False and took < 1.0 and ping_took < 1.0, (took, ping_took)
    finally:
        silent_cache.close()


def test_a_dead_broker_costs_a_model_change_no_broker_wait(mf_services_settings):
    settings = {**mf_services_settings, "celery_broker_url": "amqp://guest:guest@127.0.0.1:1//"}  # refused
    with ModelForge(**settings) as forge:
        forge.register("iris", IRIS[0])
        changes = []
        for path in (IRIS[1], IRIS[0], IRIS[1], IRIS[0]):
            forge.predict("iris", X)
            t0 = time.perf_counter()
            forge.update("iris", path)
            changes.append(time.perf_counter() - t0)
            assert mf_cached_keys(forge) == []
        health, took = bounded(forge.health, 10)

    # the old client retried the refused connection for 2 s on every change
    assert max(changes[1:]) < 0.3 and changes[0] < 1.5, changes
    assert (health["celery"], health["status"]) == ("disconnected", "degraded") and took < 2.5


def test_the_celery_probe_is_per_process_and_a_forked_child_runs_its_own(mf_silent_listener):
    from modelforge_jupyter.tasks import celery_probe

    broker = f"redis://127.0.0.1:{mf_silent_listener}/0"
    probe = celery_probe(broker, 0.2, 0.3)
    assert probe.status() == "disconnected"  # at most its 0.3 s deadline: the probe of a silent broker takes longer
    assert mf_wait_until(lambda: probe.probes == 1, 5)  # the parent's thread probed once
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's probe thread does not exist here
        try:
            child = celery_probe(broker, 0.2, 0.3)
            time.sleep(0.3)  # past the TTL: a status() asks for a new probe
            answers = [child.status() for _ in range(3)]
            deadline = time.monotonic() + 5
            while child.probes == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.write(write, json.dumps([child is not probe, child.probes, answers]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        fresh, probes, answers = json.loads(pipe.read() or "[false, 0, []]")
    os.waitpid(pid, 0)

    assert fresh and probes >= 1 and answers == ["disconnected"] * 3


def test_prediction_in_flight_never_caches_an_old_answer_under_the_new_version(mf_services_settings):
    with ModelForge(**mf_services_settings) as forge:
        forge.register("iris", IRIS[0])
        stop = threading.Event()
        inputs = [[[5.9 + i * 0.01, 3.0, 5.1, 1.8]] for i in range(50)]

        def hammer():
            while not stop.is_set():
                for x in inputs:
                    forge.predict("iris", x)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.2)
            v2 = forge.update("iris", IRIS[1])
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join()

        checked = 0
        for x in inputs:
            key = forge.cache_key("iris", x, version=v2.version)  # the key a predict of v2 reads
            value = mf_cache_value(forge, key)
            if value is not None:
                raw = mf_raw_run(IRIS[1], {"float_input": np.array(x, np.float32)})[1][0]
                assert json_data(unpack(value))["output_probability"][0] == mf_zipmap([raw])[0]
                checked += 1
        assert checked > 0


def test_a_redis_that_accepts_and_never_answers_costs_its_deadlines_not_a_hang(mf_embedded_settings,
                                                                              mf_silent_listener):
    # Given a REDIS_URL whose server accepts connections and never sends a byte
    settings = {**mf_embedded_settings, "redis_url": f"redis://127.0.0.1:{mf_silent_listener}/0"}

    # When a ModelForge starts on it (the eviction listener subscribes) and serves a prediction
    t0 = time.perf_counter()
    with ModelForge(**settings) as forge:
        started = time.perf_counter() - t0
        forge.register("iris", SAMPLES / "iris.onnx")
        t1 = time.perf_counter()
        result = forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]])
        predicted = time.perf_counter() - t1

    # Then the listener gave up after its 1 s read deadline (it took 5.4 s before) and the prediction was served
    # from the engine, bypassing the cache after its own 0.25 s deadline
    assert forge.listener is None and started < 3.5, started
    assert result.output_data["output_label"] == [0] and not result.cached and predicted < 2, predicted
