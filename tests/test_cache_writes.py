"""The disk cache's writes behind the answer (``core.cache_writes``): a miss is written after its predict returns, by
one thread, many entries a transaction; the next identical predict is a hit at once in this process, and in another
once the writer committed; a failed predict files nothing; flush, close, clear and invalidate write what is filed."""

from __future__ import annotations

import threading

import diskcache
import numpy as np

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.cache_writes import WriteBehind
from modelforge_jupyter.core.errors import InvalidInputError

from .mf_plugin import SAMPLES, mf_cached_keys, mf_raw_run, mf_wait_until, mf_zipmap

IRIS = SAMPLES / "iris.onnx"
ROW = [[5.1, 3.5, 1.4, 0.2]]


def stored(settings: dict, key: str) -> bytes | None:
    """``key``'s bytes in the disk cache's SQLite file as another process reads it (its own diskcache handle)."""
    with diskcache.Cache(settings["cache_dir"]) as other:
        return other.get(key)


def test_a_miss_is_a_hit_here_before_it_is_written_and_everywhere_once_written(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings) as mf:
        mf.register("iris", IRIS)
        mf.cache.writes.window = 60.0  # the writer holds its batch: nothing reaches SQLite unless flushed
        want = mf_zipmap(mf_raw_run(IRIS, {"float_input": np.array(ROW, np.float32)})[1])
        key = mf.cache_key("iris", ROW)

        # Given a miss, answered
        first = mf.predict("iris", ROW)
        assert (first.cached, first.output_data["output_probability"]) == (False, want)
        # Then the entry is filed, not yet in the SQLite file another process reads
        assert stored(mf_embedded_settings, key) is None

        # When the same input comes again in this process: a hit at once, with the same outputs
        second = mf.predict("iris", ROW)
        assert (second.cached, second.output_data) == (True, first.output_data)

        # When the filed entries are written: another process reads the very bytes this one answers from
        assert mf.cache.flush() == 1
        assert stored(mf_embedded_settings, key) == mf.cache.get(key) is not None
        assert mf.cache.flush() == 0


def test_the_writer_thread_commits_a_miss_without_a_flush(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings) as mf, ModelForge(**mf_embedded_settings) as other:
        mf.register("iris", IRIS)
        assert mf.predict("iris", ROW).cached is False
        # Another process's ModelForge (its own cache handle, its own filed entries) answers it as a hit once the
        # writer thread committed it: within the writer's window, milliseconds
        key = mf.cache_key("iris", ROW)
        assert mf_wait_until(lambda: stored(mf_embedded_settings, key) is not None, 10.0)
        hit = other.predict("iris", ROW)
        assert hit.cached is True and hit.output_data == mf.predict("iris", ROW).output_data


def test_a_failed_predict_files_nothing(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings) as mf:
        mf.register("iris", IRIS)
        mf.cache.writes.window = 60.0
        try:
            mf.predict("iris", [[5.1, 3.5, 1.4]])  # a wrong shape: 400 before any run
        except InvalidInputError:
            pass
        else:
            raise AssertionError("a wrong shape was not refused")
        assert mf.cache.flush() == 0 and mf_cached_keys(mf) == []


def test_close_clear_and_invalidate_write_what_is_filed_first(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings) as mf:
        mf.register("iris", IRIS)
        mf.cache.writes.window = 60.0
        mf.predict("iris", ROW)
        # clear_cache counts and deletes the filed entry too: nothing of it comes back later
        assert mf.clear_cache() == 1
        assert mf.predict("iris", ROW).cached is False
        model_id = mf.get("iris").id
        assert mf.cache.invalidate(mf.settings.cache_key_prefix, model_id) == 1
        assert mf.cache.flush() == 0 and mf_cached_keys(mf) == []
        mf.predict("iris", [[6.0, 3.0, 4.8, 1.8]])
        key = mf.cache_key("iris", [[6.0, 3.0, 4.8, 1.8]])
    # close() wrote the last filed entry
    assert stored(mf_embedded_settings, key) is not None


def test_filed_entries_are_bounded_and_batched():
    batches: list[dict] = []
    writes = WriteBehind(lambda batch: batches.append(dict(batch)), max_pending=3, window=60.0)
    # Given a writer holding its batch: the third entry reaches the bound, and the putting thread writes all three
    for i in range(3):
        writes.put(f"k{i}", b"v%d" % i, 60, "m")
    assert [sorted(b) for b in batches] == [["k0", "k1", "k2"]]
    assert writes.get("k0") is None  # written: the cache, not this buffer, answers it now
    # An expired filed entry is not answered
    writes.put("old", b"v", -1, "m")
    assert writes.get("old") is None
    writes.close()
    assert sorted(batches[-1]) == ["old"]


def test_a_get_during_the_write_still_sees_the_entry():
    # While a batch is being committed, its entries stay readable (never in neither place)
    entered, release = threading.Event(), threading.Event()

    def slow_write(batch: dict) -> None:
        entered.set()
        release.wait(10)

    writes = WriteBehind(slow_write, window=0.0)
    writes.put("k", b"v", 60, "m")
    assert entered.wait(10)
    assert writes.get("k") == b"v"
    writes.put("k2", b"v2", 60, "m")  # filed behind the batch in progress
    assert writes.get("k2") == b"v2"
    release.set()
    assert mf_wait_until(lambda: writes.get("k") is None and writes.get("k2") is None, 10.0)
    writes.close()
    assert mf_wait_until(lambda: writes._thread is None, 5.0)  # the writer thread ends once closed
