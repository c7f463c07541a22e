"""Fork safety: a ``ModelForge`` used before ``os.fork()`` keeps working in both processes (Celery's prefork workers,
a notebook's ``multiprocessing`` fork Pool), on SQLite, PostgreSQL (disk cache) and PostgreSQL + Redis.

Every child runs under a deadline and is killed when it outlives it, so a hang fails the test instead of CI; children
always leave through ``os._exit`` (never back into pytest) and report through a pipe.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_iris

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.batching import DynamicBatcher
from modelforge_jupyter.core.engine import Engine
from modelforge_jupyter.core.outputs import json_data

from .mf_plugin import FOREVER, SAMPLES, mf_raw_outputs, mf_raw_run, mf_spin_input, mf_spin_model

IRIS = SAMPLES / "iris.onnx"
IRIS_V2 = SAMPLES / "iris_v2.onnx"
ROWS = [row.tolist() for row in load_iris().data[::5].astype(np.float32)]  # 30 distinct inputs
OTHER_ROWS = [row.tolist() for row in load_iris().data[2::5].astype(np.float32)]  # 30 others (for the child)
CHILD_DEADLINE_S = 30.0


def expected_outputs(path, rows: list = ROWS) -> list[dict]:
    """Raw onnxruntime's answer to each of ``rows``, as ModelForge returns it (ZipMap keys as strings)."""
    return [mf_raw_outputs(path, {"float_input": np.array([row], np.float32)}) for row in rows]


@pytest.fixture(scope="module")
def iris_expected() -> list[dict]:
    return expected_outputs(IRIS)


@pytest.fixture(params=["sqlite", "postgres", "postgres+redis"])
def forge(request, mf_embedded_settings) -> Iterator[ModelForge]:
    """A ModelForge on the backend, with the iris sample registered and one prediction made (connections open)."""
    settings: dict[str, Any] = dict(mf_embedded_settings)  # sqlite: SQLite registry, disk cache
    if request.param == "postgres":  # PostgreSQL registry, disk cache
        settings["database_url"] = request.getfixturevalue("mf_postgres_url")
    elif request.param == "postgres+redis":
        settings = request.getfixturevalue("mf_services_settings")
    forge = ModelForge(**settings)
    forge.register("iris", IRIS)
    forge.predict("iris", {"float_input": [ROWS[0]]})
    yield forge
    forge.close()


@contextmanager
def no_fork_warning() -> Iterator[None]:
    """Python 3.12+ warns (DeprecationWarning) on fork with threads alive, as the Redis listener's; forking with
    threads is what these tests are about, and ModelForge handles it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning)
        yield


class Child:
    """``fn()`` run in a forked child; ``join`` returns its (JSON) result or fails the test with its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._read, write = os.pipe()
        with no_fork_warning():
            self.pid = os.fork()
        if self.pid == 0:  # the child: never return into pytest
            code, payload = 1, b""
            try:
                os.close(self._read)
                payload = orjson.dumps({"result": fn()})
                code = 0
            except BaseException:
                payload = orjson.dumps({"error": traceback.format_exc()[-3000:]})
            finally:
                try:
                    os.write(write, payload)
                finally:
                    os._exit(code)
        os.close(write)
        self.status: int | None = None

    def join(self, timeout: float = CHILD_DEADLINE_S) -> Any:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the forked child hung: still running after {timeout:.0f} s (killed)")
            else:
                time.sleep(0.01)
        with os.fdopen(self._read, "rb") as pipe:
            report = orjson.loads(pipe.read() or b"{}")
        assert self.status == 0, f"the forked child failed (exit {self.status}):\n{report.get('error')}"
        return report["result"]

    def kill(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


@contextmanager
def forked(fn: Callable[[], Any]) -> Iterator[Child]:
    child = Child(fn)
    try:
        yield child
    finally:
        child.kill()  # the parent failed first: no child outlives its test


def predict_many(forge: ModelForge, expected: list[dict], n: int, rows: list = ROWS, version: int = 1) -> dict[str, int]:
    """``n`` predictions cycling over ``rows`` (so misses, then hits), by name, by id and at ``version`` (the
    latest) in turn; each compared with raw onnxruntime's ``expected``. Returns the counts of cache hits and misses."""
    model_id = forge.get("iris").id
    counts = {"hits": 0, "misses": 0}
    for i in range(n):
        k = i % len(rows)
        by = [{"model": "iris"}, {"model": model_id}, {"model": "iris", "version": version}][i % 3]
        res = forge.predict(by.pop("model"), {"float_input": [rows[k]]}, **by)
        assert res.model_version == version, f"prediction {i} answered version {res.model_version}"
        assert res.output_data == expected[k], f"prediction {i} (row {k}) differs from raw onnxruntime"
        counts["hits" if res.cached else "misses"] += 1
    return counts


# -- (a) a raw os.fork(): both processes keep predicting ----------------------------------------------------------
def test_parent_and_forked_child_both_predict(forge, iris_expected):
    # Given a ModelForge whose database, cache and (PostgreSQL + Redis) listener connections are open
    # When the process forks and both processes predict 300 times at once (the child on other rows: its own misses)
    other_expected = expected_outputs(IRIS, OTHER_ROWS)
    with forked(lambda: predict_many(forge, other_expected, 300, OTHER_ROWS)) as child:
        parent = predict_many(forge, iris_expected, 300)
        in_child = child.join()

    # Then every answer equals raw onnxruntime in both, each saw misses and hits, and the parent still works after
    assert parent["misses"] > 0 and parent["hits"] > 0, parent
    assert in_child["misses"] > 0 and in_child["hits"] > 0, in_child
    assert forge.predict("iris", {"float_input": [ROWS[3]]}).output_data == iris_expected[3]
    assert forge.health()["database"] == "connected"


# -- (b) a multiprocessing fork Pool ----------------------------------------------------------------------------
_POOL_FORGE: ModelForge | None = None  # the pool's workers inherit it by fork


def _pool_task(i: int) -> tuple[int, list[dict]]:
    assert _POOL_FORGE is not None
    outs = []
    for j in range(5):
        k = (i * 5 + j) % len(ROWS)
        version = 1 if j % 2 else None
        outs.append(_POOL_FORGE.predict("iris", {"float_input": [ROWS[k]]}, version=version).output_data)
    return i, outs


def test_fork_pool_of_three_predicts_with_the_inherited_forge(forge, iris_expected):
    global _POOL_FORGE
    _POOL_FORGE = forge
    try:
        with no_fork_warning():
            pool = multiprocessing.get_context("fork").Pool(3)
        try:
            results = pool.map_async(_pool_task, range(30)).get(timeout=60)
            pool.close()
            pool.join()
        finally:
            pool.terminate()
    finally:
        _POOL_FORGE = None

    assert sorted(i for i, _ in results) == list(range(30))
    for i, outs in results:
        assert outs == [iris_expected[(i * 5 + j) % len(ROWS)] for j in range(5)], f"task {i}"


# -- (c) a change in the parent after the fork reaches the child -------------------------------------------------
def test_update_in_parent_after_fork_is_seen_by_child(forge, iris_expected):
    v2_expected = expected_outputs(IRIS_V2)
    v1_sha = forge.get("iris").sha256
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()

    def child() -> dict:
        before = forge.predict("iris", {"float_input": [ROWS[1]]})
        os.write(to_parent_w, b"r")  # ready: the parent may update now
        assert os.read(to_child_r, 1) == b"u"
        after = predict_many(forge, v2_expected, 60, version=2)  # from the first call on, version 2
        evicted = False
        if forge.listener is not None:  # PostgreSQL + Redis: the eviction event unloads v1 here too
            deadline = time.monotonic() + 10
            while v1_sha in forge.engine.loaded() and time.monotonic() < deadline:
                time.sleep(0.02)
            evicted = v1_sha not in forge.engine.loaded()
        return {"before": [before.model_version, before.output_data == iris_expected[1]], "after": after,
                "evicted": evicted}

    # Given a forked child that has predicted with version 1
    with forked(child) as proc:
        assert os.read(to_parent_r, 1) == b"r"
        # When the parent adds version 2, then both processes predict at once
        record = forge.update("iris", IRIS_V2)
        os.write(to_child_w, b"u")
        in_parent = predict_many(forge, v2_expected, 60, version=2)
        seen = proc.join()
    for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w):
        os.close(fd)

    # Then the child answers with version 2 at once (raw onnxruntime's v2 outputs), as the parent does, and with
    # Redis its eviction listener (restarted in the child) unloads version 1's session as the parent's does
    assert record.version == 2
    assert seen["before"] == [1, True], seen
    assert sum(seen["after"].values()) == sum(in_parent.values()) == 60
    assert seen["evicted"] == (forge.listener is not None), seen
    assert v1_sha not in forge.engine.loaded()


# -- locks held and work in flight in other threads at the fork --------------------------------------------------
def test_child_predicts_though_other_threads_held_the_locks_at_the_fork(forge, iris_expected):
    # Given threads of the parent inside ModelForge at the moment of the fork (a server's executor, say): here they
    # hold the registry clock's, the engine's, the metadata's and the cache breaker's locks
    locks = [forge.registry._clock_lock, forge.engine._lock, forge.resolver._lock, forge.cache.breaker._lock]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(30)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)
    try:
        # When the process forks and the child predicts
        with forked(lambda: predict_many(forge, iris_expected, 20)) as child:
            counts = child.join()
    finally:
        release.set()
        holder.join(10)

    # Then the child answers (its locks are its own): no deadlock
    assert counts["misses"] + counts["hits"] == 20


def test_child_loads_a_session_whose_load_was_in_flight_in_another_thread_at_the_fork():
    # Given a thread of the parent loading a session (reading the model bytes) when the process forks
    engine = Engine()
    data = IRIS.read_bytes()
    started, finish = threading.Event(), threading.Event()

    def slow_bytes() -> bytes:
        started.set()
        finish.wait(30)
        return data

    loader = threading.Thread(target=engine.session, args=("iris", slow_bytes), daemon=True)
    loader.start()
    assert started.wait(10)
    feed = {"float_input": np.array([ROWS[2]], np.float32)}
    try:
        # When the child runs that model: it must load it itself, not wait for the parent's thread
        with forked(lambda: engine.run("iris", lambda: data, feed)) as child:
            out = child.join()
    finally:
        finish.set()
        loader.join(10)

    assert out["output_label"] == mf_raw_run(IRIS, feed)[0].tolist()


def test_child_batches_though_a_batch_was_in_flight_in_another_thread_at_the_fork():
    # Given a dynamic batcher whose leader (a parent thread) is running a batch when the process forks
    engine = Engine()
    batcher = DynamicBatcher(engine, max_batch_size=8, max_queue_delay_us=0)
    data = IRIS.read_bytes()
    started, finish = threading.Event(), threading.Event()
    feed = {"float_input": np.array([ROWS[4]], np.float32)}

    def slow_bytes() -> bytes:
        started.set()
        finish.wait(30)
        return data

    leader = threading.Thread(target=batcher.run, args=("iris", slow_bytes, feed), daemon=True)
    leader.start()
    assert started.wait(10)
    try:
        # When the child sends a request for that model: it must lead its own batch
        with forked(lambda: json_data(batcher.run("iris", lambda: data, feed))) as child:
            out = child.join()
    finally:
        finish.set()
        leader.join(10)

    assert out["output_label"] == mf_raw_run(IRIS, feed)[0].tolist()


def test_children_forked_while_other_threads_run_models_never_hang_on_the_shared_arena(mf_embedded_settings,
                                                                                     iris_expected):
    from modelforge_jupyter.core.deadline import Cancellation

    # Given two threads running a long Loop model (every iteration allocates from ONNX Runtime's shared arena, whose
    # lock a fork may catch held) and iris loaded and run before
    with ModelForge(**mf_embedded_settings) as forge:
        forge.register("iris", IRIS)
        forge.register("spin", mf_spin_model())
        forge.predict("iris", [ROWS[0]], use_cache=False)
        assert forge.engine.arena_bytes > 0  # the shared arena is in use (max_arena_bytes' default)
        cancels = [Cancellation() for _ in range(2)]
        spinners = [threading.Thread(target=lambda c=c: _spin(forge, mf_spin_input(FOREVER), c)) for c in cancels]
        for t in spinners:
            t.start()
        time.sleep(0.3)
        try:
            # When the process forks 20 times and each child predicts
            hung = 0
            for i in range(20):
                with forked(lambda i=i: [forge.predict("iris", [ROWS[i]], use_cache=False).output_data,
                                         forge.engine.arena_bytes]) as child:
                    try:
                        out = child.join(timeout=5)
                    except pytest.fail.Exception:
                        hung += 1
                        break  # one hang is enough: the others would each cost the deadline
                # and each answers as raw ONNX Runtime, from sessions with arenas of their own
                assert out == [iris_expected[i], 0]
        finally:
            for c in cancels:
                c.cancel("the test is over")
            for t in spinners:
                t.join(10)

    # Then no child hung (before the fix 3 of 20 did, inside session.run on the arena's lock)
    assert hung == 0


def _spin(forge: ModelForge, x: np.ndarray, cancel) -> None:
    from modelforge_jupyter.core.errors import RequestCancelledError

    with pytest.raises(RequestCancelledError):
        forge.predict("spin", x, use_cache=False, timeout=0, cancel=cancel)
