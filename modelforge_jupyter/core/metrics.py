"""What this process's predictions cost and how they ended, per model and version, counted once in the core's data path
(``ModelForge.predict``, the event loop's cache hits ``loop_hits``, the engine's session runs and loads), so every door
(kernel, Jupyter, ``modelforge serve``, V2) counts the same. Triton's statistics and metrics are the model: each stage a
count and a total in ns (the statistics JSON, ``statistics``) and a histogram in µs (Prometheus, ``prometheus``).

Stages of one request, as Triton splits them (perf_counter_ns marks; a request is in exactly one of hit and miss):
- ``success`` / ``fail``: the whole ``predict`` call, by how it ended (failures also by ``REASONS``);
- ``cache_hit`` / ``cache_miss``: the cache lookup (hashing the feed, the GET, decoding a hit); a request with the
  cache off counts in neither;
- executed requests only (misses): ``compute_input`` (resolving the model, validating and converting the input),
  ``queue`` (from handing the feed to the engine or the dynamic batcher until its session run starts: waiting for a
  batch, a cold session load), ``compute_infer`` (the session run that served it: a batch's, for each of its
  requests), ``compute_output`` (splitting a batch, output checks, storing into the cache);
- ``inference_count`` rows inferred (a batch of N rows counts N; cache hits none), ``execution_count`` session runs
  (a batch of several requests counts once), ``batch_stats`` runs per batch size (rows) with their ``compute_infer``.

What counting costs a prediction, ``scripts/bench_metrics.py`` measures in one run (the calls alone with their share of
the folds, and predict with and without them): the request's perf_counter_ns marks packed into one append to a list,
no lock, folded into the histograms by NumPy when read or every ``FOLD_AT`` requests (``ModelStats``); no
``prometheus_client`` call on the data path (its labelled children cost more): exporters read these at scrape time.
The engine leaves the times of each session run for its thread (``ran``), which the request's ``predict`` reads.
Counts are this process's, reset in a forked child (its parent's are not its own).
"""

from __future__ import annotations

import struct
import threading
import time
import weakref
from bisect import bisect_left
from typing import Any

import numpy as np

from .errors import (
    InferenceError, InferenceTimeoutError, InvalidInputError, ModelNotFoundError, RequestCancelledError,
    ResourceLimitError, ServiceUnavailableError,
)
from .forksafe import at_fork_in_child

# Histogram bounds of durations, µs (the last bucket +Inf): tens of µs apart where a cache hit or a small model's
# run falls, then up to 10 s
DURATION_BOUNDS_US = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 20_000,
                      50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000)
_BOUNDS_NS = tuple(b * 1000 for b in DURATION_BOUNDS_US)
_BOUNDS_NP = np.array(_BOUNDS_NS, np.int64)  # ``np.searchsorted``'s side "left" is ``bisect_left``
FOLD_AT = 4096  # requests recorded per version and kind (hit, executed) past which the recording thread folds them
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)  # rows of a session run
STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
SUCCESS, FAIL, QUEUE, INPUT, INFER, OUTPUT, HIT, MISS = range(len(STAGES))
# A failure's reason (the ``reason`` label), by the error raised; anything else is "other"
REASONS = {InvalidInputError: "invalid_input", ModelNotFoundError: "not_found", InferenceError: "inference_error",
           InferenceTimeoutError: "timeout", RequestCancelledError: "cancelled", ResourceLimitError: "resource_limit",
           ServiceUnavailableError: "unavailable"}
MAX_BATCH_SIZES = 4096  # distinct batch sizes kept per model version; runs of others count under OTHER_SIZES
OTHER_SIZES = -1  # the ``batches`` key of runs whose size was one too many to keep (not in batch_stats)
_now, _bisect = time.perf_counter_ns, bisect_left
# a request's marks, packed as int64s in native order (``ModelStats``): a hit's, an executed request's
_HIT, _RUN = struct.Struct("=4q").pack, struct.Struct("=8q").pack


def _taken(entries: list[bytes], width: int) -> np.ndarray:
    """The first ``len(entries)`` entries (``width`` int64 each, packed), as an (n, width) array, deleted from
    ``entries``: another thread's appends meanwhile land after them and stay."""
    n = len(entries)
    marks = np.frombuffer(b"".join(entries[:n]), np.int64).reshape(n, width)
    del entries[:n]
    return marks


class _Thread(threading.local):
    # (start ns, end ns, rows) of the session run that answered the thread's current request; rows 0 when another
    # thread made it (a dynamic batch's follower), so that each run counts once
    run: tuple[int, int, int] | None = None


_tls = _Thread()


def reason_of(err: BaseException) -> str:
    """The ``reason`` label of a failed request: ``REASONS``' value for ``err``'s class, ``invalid_input`` for another
    400 of the family (a bad ``version`` or ``timeout``), else ``other``."""
    for cls in type(err).__mro__:
        if cls in REASONS:
            return REASONS[cls]
    return "invalid_input" if getattr(err, "status", None) == 400 else "other"


def ran(start_ns: int, feed: dict, values: Any) -> Any:
    """The engine's hook, returning ``values``: the current thread ran a session on ``feed`` (its rows: the batch
    size) from ``start_ns`` (perf_counter_ns) to now."""
    for array in feed.values():
        try:
            rows = len(array)
        except TypeError:  # a 0-d array: one row
            rows = 1
        _tls.run = (start_ns, _now(), rows)
        return values
    _tls.run = (start_ns, _now(), 1)
    return values


def last_run() -> tuple[int, int, int] | None:
    """(start ns, end ns, rows) of the last session run this thread made (``ran``) or was served by (``served_by``)."""
    return _tls.run


def served_by(run: tuple[int, int, int] | None) -> None:
    """The current thread's request was answered by ``run`` (``last_run`` of the thread that made it: a dynamic batch's
    leader, which gives all but one of the batch's requests the run with rows 0, so that the run counts once)."""
    _tls.run = run


class Duration:
    """One stage of a model version, copied for readers (``ModelStats.stage``): its requests' histogram over
    ``DURATION_BOUNDS_US`` (per bucket, not cumulative; the last is +Inf) and their total duration in ns."""

    __slots__ = ("buckets", "ns")

    def __init__(self, buckets: list[int] | None = None, ns: int = 0) -> None:
        self.buckets = buckets if buckets is not None else [0] * (len(_BOUNDS_NS) + 1)
        self.ns = ns

    @property
    def count(self) -> int:
        """Requests counted."""
        return sum(self.buckets)

    def add(self, ns: int) -> None:
        """Count one of ``ns`` nanoseconds (session loads; ``ModelStats`` folds its requests with NumPy)."""
        self.buckets[bisect_left(_BOUNDS_NS, ns)] += 1
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        """Triton's ``{"count", "ns"}``."""
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """The counts of one model version in this process (module docstring).

    Recorded on the data path as the request's perf_counter_ns marks packed into one bytes (int64s: ``_HIT``,
    ``_RUN``) appended to a list (``hit``, ``executed``: no lock, a list's append is atomic under the GIL), folded into
    the histograms and totals by ``fold`` (NumPy: ``searchsorted`` then ``bincount``, exact int64): readers call it
    first (``stage``, ``to_dict``, the counts), and so does the recording thread when a list reaches ``FOLD_AT``
    requests, so that memory stays bounded when nobody reads. A fold takes the first ``n`` entries and deletes exactly
    those, under a lock of its own: a request recorded meanwhile stays for the next fold, none is lost or counted
    twice (swapping in a new list instead would lose the entry of a thread holding the old one). Failures (rare) are
    counted at once, under that lock. Readers see whole requests: each figure exact as of the fold.
    """

    __slots__ = ("model", "version", "stages", "failures", "counts", "last_ns", "batches", "_hits", "_runs", "_lock")

    def __init__(self, model: str, version: int) -> None:
        self.model = model
        self.version = version
        # per stage (``STAGES``' order): its histogram's buckets (the last +Inf), then its total ns
        self.stages = tuple([0] * (len(_BOUNDS_NS) + 2) for _ in STAGES)
        self.failures: dict[str, int] = {}
        self.counts = [0, 0, 0]  # inference_count (rows), execution_count (runs), pending (requests in the engine)
        self.last_ns = 0  # perf_counter_ns of the last request that ended (0: none)
        self.batches: dict[int, list[int]] = {}  # rows -> [runs, compute_infer ns] (``OTHER_SIZES``: the rest)
        self._hits: list[bytes] = []  # (start, fed, looked, end) of cache hits not folded yet, packed (``_HIT``)
        # (start, fed, looked, run start, run end, end, rows, cached) of executed requests not folded yet (``_RUN``)
        self._runs: list[bytes] = []
        self._lock = threading.Lock()  # one fold at a time

    @property
    def inference_count(self) -> int:
        """Rows inferred by session runs of this version (a batch of N rows counts N; cache hits none)."""
        self.fold()
        return self.counts[0]

    @property
    def execution_count(self) -> int:
        """Session runs of this version (a batch of several requests counts once)."""
        self.fold()
        return self.counts[1]

    @property
    def pending(self) -> int:
        """Requests of this version in the engine or the dynamic batcher now."""
        return self.counts[2]

    def stage(self, name: str) -> Duration:
        """A copy of stage ``name`` (one of ``STAGES``)."""
        self.fold()
        values = self.stages[STAGES.index(name)]
        return Duration(values[:-1], values[-1])

    def hit(self, start: int, fed: int, looked: int) -> None:
        """A cache hit: ``predict`` started at ``start``, had its feed at ``fed``, its cached answer at ``looked``
        (perf_counter_ns), and ends now."""
        hits = self._hits
        hits.append(_HIT(start, fed, looked, _now()))
        if len(hits) >= FOLD_AT:
            self.fold(wait=False)

    def executed(self, start: int, fed: int, looked: int, cached: bool) -> None:
        """A request the engine answered: marks as ``hit``'s (``cached``: the cache was looked up, a miss), the
        session run that answered it being the thread's last (``last_run``), counted once (by its maker)."""
        end = _now()
        run_start, run_end, rows = _tls.run or (looked, looked, 0)
        runs = self._runs
        runs.append(_RUN(start, fed, looked, run_start, run_end, end, rows, cached))
        if len(runs) >= FOLD_AT:
            self.fold(wait=False)

    def fold(self, wait: bool = True) -> None:
        """Count the requests recorded since the last fold into the stages, counts and batch sizes (class docstring);
        ``wait``: for another thread's fold to end (False: leave the work to it)."""
        if not (self._hits or self._runs) or not self._lock.acquire(wait):
            return
        try:
            last = self.last_ns
            hits = _taken(self._hits, 4)
            if len(hits):
                start, fed, looked, end = hits.T
                self._add(SUCCESS, end - start)
                self._add(HIT, looked - fed)
                last = max(last, int(end.max()))
            runs = _taken(self._runs, 8)
            if len(runs):
                start, fed, looked, run_start, run_end, end, rows, cached = runs.T
                infer = run_end - run_start
                self._add(SUCCESS, end - start)
                self._add(INPUT, fed - start)
                self._add(QUEUE, run_start - looked)
                self._add(INFER, infer)
                self._add(OUTPUT, end - run_end)
                self._add(MISS, (looked - fed)[cached != 0])
                made = rows > 0  # the runs this version's requests made (a batch's followers have rows 0)
                self._add_runs(rows[made], infer[made])
                last = max(last, int(end.max()))
            self.last_ns = last
        finally:
            self._lock.release()

    def _add(self, stage: int, ns: np.ndarray) -> None:
        """Count durations ``ns`` (n,) int64 into ``stage``."""
        values = self.stages[stage]
        for i, n in enumerate(np.bincount(np.searchsorted(_BOUNDS_NP, ns), minlength=len(values) - 1).tolist()):
            values[i] += n
        values[-1] += int(ns.sum())

    def _add_runs(self, rows: np.ndarray, infer: np.ndarray) -> None:
        """Count session runs of ``rows`` (n,) int64 rows each, ``infer`` (n,) int64 ns long."""
        if not len(rows):
            return
        self.counts[0] += int(rows.sum())
        self.counts[1] += len(rows)
        if rows.min() == rows.max():  # one batch size (no dynamic batching): no sort
            groups: Any = [(int(rows[0]), len(rows), int(infer.sum()))]
        else:
            sizes, index = np.unique(rows, return_inverse=True)
            ns = np.zeros(len(sizes), np.int64)
            np.add.at(ns, index, infer)
            groups = zip(sizes.tolist(), np.bincount(index).tolist(), ns.tolist())
        for size, runs, total in groups:
            batch = self.batches.get(size)
            if batch is None:
                batch = self.batches.setdefault(size if len(self.batches) < MAX_BATCH_SIZES else OTHER_SIZES, [0, 0])
            batch[0] += runs
            batch[1] += total

    def batch_buckets(self) -> list[int]:
        """Session runs per ``BATCH_BOUNDS`` bucket of their size (per bucket, not cumulative; the last is +Inf)."""
        self.fold()
        buckets = [0] * (len(BATCH_BOUNDS) + 1)
        for rows, (runs, _) in list(self.batches.items()):
            buckets[_bisect(BATCH_BOUNDS, rows) if rows != OTHER_SIZES else -1] += runs
        return buckets

    def failed(self, start: int, reason: str) -> None:
        """A request that started at ``start`` (perf_counter_ns) failed now, for ``reason`` (``reason_of``)."""
        with self._lock:  # not racing a fold's last_ns
            end = _now()
            d = end - start
            fail = self.stages[FAIL]
            fail[_bisect(_BOUNDS_NS, d)] += 1
            fail[-1] += d
            self.failures[reason] = self.failures.get(reason, 0) + 1
            self.last_ns = max(self.last_ns, end)

    def __enter__(self) -> ModelStats:
        """``with stats:`` around handing a request of this version to the engine: ``pending`` + 1 meanwhile."""
        self.counts[2] += 1
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self.counts[2] -= 1

    def to_dict(self, epoch_offset_ns: int) -> dict[str, Any]:
        """Triton's per-model statistics: ``{name, version, last_inference (ms since the epoch, 0: never),
        inference_count, execution_count, inference_stats: {stage: {count, ns}}, batch_stats: [{batch_size,
        compute_infer: {count, ns}}]}`` (``epoch_offset_ns``: ``time.time_ns() - time.perf_counter_ns()``)."""
        self.fold()
        return {
            "name": self.model,
            "version": str(self.version),
            "last_inference": (self.last_ns + epoch_offset_ns) // 1_000_000 if self.last_ns else 0,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {name: {"count": sum(v[:-1]), "ns": v[-1]} for name, v in zip(STAGES, self.stages)},
            "batch_stats": [{"batch_size": rows, "compute_infer": {"count": runs, "ns": ns}}
                            for rows, (runs, ns) in sorted(list(self.batches.items())) if rows != OTHER_SIZES],
        }


class Metrics:
    """Every model version's ``ModelStats`` in this process, the engines whose sessions it reports, and the session
    loads (count, durations). One per process: ``METRICS``."""

    def __init__(self) -> None:
        self._reset()
        at_fork_in_child(self._reset)

    def _reset(self) -> None:
        self._stats: dict[tuple[str, int], ModelStats] = {}
        self._lock = threading.Lock()
        self.loads = Duration()  # session builds, their durations
        self.unloads = 0
        self.engines: weakref.WeakSet = weakref.WeakSet()  # whose loaded sessions are reported (gauges)

    def of(self, model: str, version: int) -> ModelStats:
        """The counts of ``model`` (its name) at ``version``, created on first use."""
        stats = self._stats.get((model, version))
        if stats is None:
            with self._lock:
                stats = self._stats.setdefault((model, version), ModelStats(model, version))
        return stats

    def all(self) -> list[ModelStats]:
        """Every model version counted so far, by name then version (failures of no known model under name "")."""
        return sorted(list(self._stats.values()), key=lambda s: (s.model, s.version))

    def find(self, model: str, version: int | None = None) -> list[ModelStats]:
        """The counted versions of ``model`` (its name), or only ``version``, by version."""
        return [s for s in self.all() if s.model == model and (version is None or s.version == version)]

    def failed(self, record: Any, start: int, err: BaseException) -> None:
        """Count a request that started at ``start`` (perf_counter_ns) and failed with ``err``, under its model
        version (``record``, a ``ModelRecord``), or under model "" version 0 when it is None: an unknown model or
        version, or one this process had not resolved yet (a client's typos must not create label values)."""
        stats = self.of(record.name, record.version) if record is not None else self.of("", 0)
        stats.failed(start, reason_of(err))

    def loaded(self, ns: int) -> None:
        """Count a session build that took ``ns`` nanoseconds (``engine.Engine.load``)."""
        with self._lock:
            self.loads.add(ns)

    def unloaded(self, sessions: int = 1) -> None:
        """Count ``sessions`` sessions dropped from an engine (evicted, unloaded, or pruned)."""
        with self._lock:
            self.unloads += sessions

    def sessions(self) -> tuple[int, int]:
        """(sessions loaded, bytes they are charged) over this process's engines (``SessionLRU.nbytes``)."""
        engines = list(self.engines)
        return sum(len(e.loaded()) for e in engines), sum(e.session_bytes() for e in engines)


METRICS = Metrics()


def statistics(forge: Any, model: str | None = None, version: int | None = None) -> dict[str, Any]:
    """Triton's statistics of this process (a ``modelforge serve`` worker's, the Jupyter server's, a kernel's):
    ``{"model_stats": [ModelStats.to_dict()...]}``, for ``model`` (name or id; every version counted here, or the
    latest with zero counts when none is; only ``version`` if given), or every model version counted (``model``
    None). Raises ``ModelNotFoundError`` (404) for an unknown model or version."""
    offset = time.time_ns() - time.perf_counter_ns()
    if model is None:
        return {"model_stats": [s.to_dict(offset) for s in METRICS.all() if s.model]}
    record = forge.get(model, version)
    found = METRICS.find(record.name, version) or [ModelStats(record.name, record.version)]
    return {"model_stats": [s.to_dict(offset) for s in found]}
