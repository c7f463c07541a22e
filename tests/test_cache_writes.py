"""The prediction cache's writes behind the answer (``core.cache_writes``), on the disk cache and on Redis: a miss is
written after its predict returns, by one thread, many entries a transaction (disk) or a pipelined round trip (Redis);
a quiet process, one request at a time, commits before answering; the next identical predict is a hit at once in this
process, and in another once the writer committed; a failed predict files nothing; flush, close, clear and invalidate
write what is filed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import diskcache
import numpy as np
import redis

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.cache_writes import WriteBehind
from modelforge_jupyter.core.errors import InvalidInputError

from .mf_plugin import SAMPLES, mf_cached_keys, mf_raw_run, mf_wait_until, mf_zipmap

IRIS = SAMPLES / "iris.onnx"
ROW = [[5.1, 3.5, 1.4, 0.2]]


def stored(settings: dict, key: str) -> bytes | None:
    """``key``'s bytes in the cache as another process reads it: its own Redis client, or its own diskcache handle
    on the SQLite file."""
    if settings.get("redis_url"):
        client = redis.Redis.from_url(settings["redis_url"])
        try:
            return client.get(key)
        finally:
            client.close()
    with diskcache.Cache(settings["cache_dir"]) as other:
        return other.get(key)


def test_a_quiet_process_commits_a_miss_before_answering(mf_settings):
    with ModelForge(**mf_settings) as mf, ModelForge(**mf_settings) as other:
        mf.register("iris", IRIS)
        want = mf_zipmap(mf_raw_run(IRIS, {"float_input": np.array(ROW, np.float32)})[1])
        first = mf.predict("iris", ROW)
        assert (first.cached, first.output_data["output_probability"]) == (False, want)
        # No other write in progress: the entry is in the SQLite file when predict returns, and another process's
        # ModelForge (its own cache handle) answers the same input as a hit at once
        assert stored(mf_settings, mf.cache_key("iris", ROW)) is not None
        hit = other.predict("iris", ROW)
        assert (hit.cached, hit.output_data) == (True, first.output_data)


def test_a_miss_behind_a_write_in_progress_is_filed_a_hit_here_and_written_after(mf_settings):
    with ModelForge(**mf_settings) as mf:
        mf.register("iris", IRIS)
        writes = mf.cache.writes
        writes.window = 60.0  # the writer thread holds its batch: nothing reaches SQLite unless flushed
        key = mf.cache_key("iris", ROW)
        # Given a write in progress (another request's batch being committed)
        with writes._flushing:
            first = mf.predict("iris", ROW)
            # Then the miss is answered, its entry filed, not yet in the SQLite file another process reads
            assert first.cached is False and stored(mf_settings, key) is None
            # When the same input comes again in this process: a hit at once, with the same outputs
            second = mf.predict("iris", ROW)
            assert (second.cached, second.output_data) == (True, first.output_data)
        # When the filed entries are written: another process reads the very bytes this one answers from
        assert writes.flush() == 1
        assert stored(mf_settings, key) == mf.cache.get(key) is not None
        assert writes.flush() == 0


def test_the_writer_thread_commits_a_filed_miss_without_a_flush(mf_settings):
    with ModelForge(**mf_settings) as mf, ModelForge(**mf_settings) as other:
        mf.register("iris", IRIS)
        with mf.cache.writes._flushing:  # a write in progress: the miss is filed for the writer thread
            assert mf.predict("iris", ROW).cached is False
        # Another process answers it as a hit once the writer committed it: within its window, milliseconds
        key = mf.cache_key("iris", ROW)
        assert mf_wait_until(lambda: stored(mf_settings, key) is not None, 10.0)
        hit = other.predict("iris", ROW)
        assert hit.cached is True and hit.output_data == mf.predict("iris", ROW).output_data


def test_a_failed_predict_files_nothing(mf_settings):
    with ModelForge(**mf_settings) as mf:
        mf.register("iris", IRIS)
        mf.cache.writes.window = 60.0
        try:
            mf.predict("iris", [[5.1, 3.5, 1.4]])  # a wrong shape: 400 before any run
        except InvalidInputError:
            pass
        else:
            raise AssertionError("a wrong shape was not refused")
        assert mf.cache.flush() == 0 and mf_cached_keys(mf) == []


def test_close_clear_and_invalidate_write_what_is_filed_first(mf_settings):
    with ModelForge(**mf_settings) as mf:
        mf.register("iris", IRIS)
        mf.cache.writes.window = 60.0
        with mf.cache.writes._flushing:
            mf.predict("iris", ROW)  # filed behind a write in progress
        # clear_cache counts and deletes the filed entry too: nothing of it comes back later
        assert mf.clear_cache() == 1
        with mf.cache.writes._flushing:
            assert mf.predict("iris", ROW).cached is False
        model_id = mf.get("iris").id
        assert mf.cache.invalidate(mf.settings.cache_key_prefix, model_id) == 1
        assert mf.cache.flush() == 0 and mf_cached_keys(mf) == []
        with mf.cache.writes._flushing:
            mf.predict("iris", [[6.0, 3.0, 4.8, 1.8]])
        key = mf.cache_key("iris", [[6.0, 3.0, 4.8, 1.8]])
    # close() wrote the last filed entry
    assert stored(mf_settings, key) is not None


def test_filed_entries_are_bounded_and_batched():
    batches: list[dict] = []
    writes = WriteBehind(lambda batch: batches.append(dict(batch)), max_pending=3, window=60.0)
    # Given a writer holding its batch: the third entry reaches the bound, and the putting thread writes all three
    with writes._flushing:  # a write in progress: the first two are filed
        writes.put("k0", b"v0", 60, "m")
        writes.put("k1", b"v1", 60, "m")
        assert batches == [] and writes.get("k1") == b"v1"
    writes.put("k2", b"v2", 60, "m")
    assert [sorted(b) for b in batches] == [["k0", "k1", "k2"]]
    assert writes.get("k0") is None  # written: the cache, not this buffer, answers it now
    # An expired filed entry is not answered; close() writes what is filed
    with writes._flushing:
        writes.put("old", b"v", -1, "m")
        assert writes.get("old") is None
    writes.put("later", b"v", 60, "m")  # behind a filed entry: filed too
    assert len(batches) == 1 and writes.get("later") == b"v"
    writes.close()
    assert [sorted(b) for b in batches[1:]] == [["later", "old"]]
    # a quiet put is written at once on its thread
    quiet = WriteBehind(lambda batch: batches.append(dict(batch)))
    quiet.put("now", b"v", 60, "m")
    assert batches[-1] == {"now": (b"v", batches[-1]["now"][1], "m")} and quiet.get("now") is None
    quiet.close()
    # a busy put (the caller has other requests in flight) is filed even with no write in progress, and the writer
    # thread writes it within its window
    busy = WriteBehind(lambda batch: batches.append(dict(batch)), window=0.05)
    count = len(batches)
    busy.put("b", b"v", 60, "m", busy=True)
    assert len(batches) == count and busy.get("b") == b"v"
    assert mf_wait_until(lambda: len(batches) == count + 1, 10.0) and sorted(batches[-1]) == ["b"]
    busy.close()


def test_a_get_during_the_write_still_sees_the_entry():
    # While a batch is being committed, its entries stay readable (never in neither place)
    entered, release = threading.Event(), threading.Event()

    def slow_write(batch: dict) -> None:
        entered.set()
        release.wait(10)

    writes = WriteBehind(slow_write, window=0.0)
    putter = threading.Thread(target=writes.put, args=("k", b"v", 60, "m"))  # quiet: written on its thread
    putter.start()
    assert entered.wait(10)
    assert writes.get("k") == b"v"
    writes.put("k2", b"v2", 60, "m")  # filed behind the batch in progress
    assert writes.get("k2") == b"v2"
    release.set()
    putter.join(10)
    assert mf_wait_until(lambda: writes.get("k") is None and writes.get("k2") is None, 10.0)
    writes.close()
    assert mf_wait_until(lambda: writes._thread is None, 5.0)  # the writer thread ends once closed


def test_a_busy_process_answers_misses_before_their_write_and_writes_them_together(mf_settings):
    # Given eight requests of one model in the engine together (a server under load), the writer thread holding
    # what is filed (its window 60 s)
    rows = [[[5.0 + i / 100, 3.0, 1.5, 0.2]] for i in range(8)]
    with ModelForge(**mf_settings) as mf, ModelForge(**mf_settings) as other:
        mf.register("iris", IRIS)
        mf.cache.writes.window = 60.0
        batches: list[int] = []
        write = mf.cache.writes._write
        mf.cache.writes._write = lambda batch: (batches.append(len(batch)), write(batch))
        record = mf.get("iris")
        real, gate = mf._runner(record), threading.Barrier(len(rows))

        def run_together(*args):
            gate.wait(10)  # every run waits for the others: each request sees the others pending
            return real(*args)

        mf._runners[(record.name, record.sha256)] = run_together
        with ThreadPoolExecutor(len(rows)) as pool:
            answers = list(pool.map(lambda row: mf.predict("iris", row), rows))
        # Then every miss was answered with no write made (a quiet process writes its first miss before answering)
        keys = [mf.cache_key("iris", row) for row in rows]
        assert [a.cached for a in answers] == [False] * len(rows)
        assert batches == [] and [stored(mf_settings, key) for key in keys] == [None] * len(rows)
        assert all(mf.predict("iris", row).cached for row in rows)  # filed: hits in this process at once
        # When the writer writes: all eight in one batch (a transaction, or one pipelined round trip), and another
        # process answers each from the cache with the outputs ONNX Runtime gives
        assert mf.cache.flush() == len(rows) and batches == [len(rows)]
        for row, answer in zip(rows, answers):
            hit = other.predict("iris", row)
            want = mf_zipmap(mf_raw_run(IRIS, {"float_input": np.array(row, np.float32)})[1])
            assert hit.cached is True
            assert hit.output_data["output_probability"] == answer.output_data["output_probability"] == want


def test_an_entry_the_writer_commits_while_redis_answers_is_still_a_hit_here(mf_services_settings):
    # Found by a tester: the lookup's MGET finds no value (not written yet), then the writer commits the filed entry
    # before the lookup looks at the filed entries: neither had it, and the repeat ran the model again
    import asyncio

    import orjson

    from modelforge_jupyter.core.loop_hits import LoopHits

    with ModelForge(**mf_services_settings) as mf:
        mf.register("iris", IRIS)
        mf.predict("iris", [[6.0, 3.0, 4.8, 1.8]])  # the record remembered: its lookups ride on the stamp's MGET
        mf.cache.writes.window = 60.0
        with mf.cache.writes._flushing:  # a write in progress: the miss is filed, the writer thread holds it
            first = mf.predict("iris", ROW)
        assert first.cached is False and stored(mf_services_settings, mf.cache_key("iris", ROW)) is None

        def commit_after(read):  # Redis answers the lookup, then the writer commits, before the lookup goes on
            def mget(keys, *args, **kwargs):
                values = read(keys, *args, **kwargs)
                mf.cache.flush()
                return values
            return mget

        # When the executor's lookup (``get_many``) races the writer: still a hit, with the same outputs
        real = mf.cache.client.mget
        mf.cache.client.mget = commit_after(real)
        second = mf.predict("iris", ROW)
        mf.cache.client.mget = real
        assert (second.cached, second.output_data) == (True, first.output_data)

        # And the event loop's lookup (``loop_hits``) racing it the same way
        row = [[6.3, 2.9, 5.6, 1.8]]
        with mf.cache.writes._flushing:
            third = mf.predict("iris", row)
        hits = LoopHits(mf)

        async def scenario():
            client = hits._redis()
            read = client.mget

            async def mget(keys, *args, **kwargs):
                values = await read(keys, *args, **kwargs)
                mf.cache.flush()
                return values

            client.mget = mget
            answer = await hits.answer_json(orjson.dumps({"model_id": "iris", "input_data": row}))
            await hits.close()
            return answer

        answer = asyncio.run(scenario())
        assert isinstance(answer, bytes), answer
        got = orjson.loads(answer)
        assert got["cached"] is True and got["output_data"] == orjson.loads(orjson.dumps(third.output_data))
