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

Counting costs about a µs a prediction (``scripts/bench_metrics.py`` measures it against a ModelForge without it, in
one run): plain integers under one uncontended lock per model version, a histogram bucket found by ``bisect``; no
``prometheus_client`` call on the data path (its labelled children cost more): exporters read these at scrape time.
Counts are this process's, reset in a forked child (its parent's are not its own).
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from typing import Any

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
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)  # rows of a session run
STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
SUCCESS, FAIL, QUEUE, INPUT, INFER, OUTPUT, HIT, MISS = range(len(STAGES))
# A failure's reason (the ``reason`` label), by the error raised; anything else is "other"
REASONS = {InvalidInputError: "invalid_input", ModelNotFoundError: "not_found", InferenceError: "inference_error",
           InferenceTimeoutError: "timeout", RequestCancelledError: "cancelled", ResourceLimitError: "resource_limit",
           ServiceUnavailableError: "unavailable"}
MAX_BATCH_SIZES = 4096  # distinct batch sizes kept per model version (batch_stats); runs of others count elsewhere
# Per thread: ``run``, the (start, end) ns of the session run that served the thread's current request; ``stats``,
# the ModelStats of the request the thread has in the engine (its runs count as that version's executions)
_now, _bisect = time.perf_counter_ns, bisect_left


class _Thread(threading.local):
    run: tuple[int, int] | None = None
    stats: ModelStats | None = None


_tls = _Thread()


def reason_of(err: BaseException) -> str:
    """The ``reason`` label of a failed request: ``REASONS``' value for ``err``'s class, ``invalid_input`` for another
    400 of the family (a bad ``version`` or ``timeout``), else ``other``."""
    for cls in type(err).__mro__:
        if cls in REASONS:
            return REASONS[cls]
    return "invalid_input" if getattr(err, "status", None) == 400 else "other"


def ran(start_ns: int, feed: dict, values: Any) -> Any:
    """The engine's hook, returning ``values``: the current thread ran a session on ``feed`` from ``start_ns``
    (perf_counter_ns) to now; an execution of the model version whose request the thread has in the engine, if
    any (``ModelStats.__enter__``)."""
    end = _now()
    _tls.run = (start_ns, end)
    stats = _tls.stats
    if stats is not None:
        stats.ran(rows(feed), end - start_ns)
    return values


def rows(feed: dict) -> int:
    """Rows of ``feed`` (``{input name: ndarray}``): its first input's leading dimension; 1 for a scalar or no input."""
    for array in feed.values():
        return array.shape[0] if array.ndim else 1
    return 1


def last_run() -> tuple[int, int] | None:
    """The (start, end) ns of the last session run this thread made or was served by (``ran``, ``served_by``)."""
    return _tls.run


def served_by(run: tuple[int, int] | None) -> None:
    """A dynamic batch's follower: its request was served by the leader's ``run`` (``last_run`` of that thread)."""
    _tls.run = run


class Duration:
    """One stage of a model version: its requests' histogram over ``_BOUNDS_NS`` (per bucket, not cumulative; the
    last is +Inf) and their total duration in ns. A copy for readers: ``ModelStats.stage``."""

    __slots__ = ("buckets", "ns")

    def __init__(self, buckets: list[int] | None = None, ns: int = 0) -> None:
        self.buckets = buckets if buckets is not None else [0] * (len(_BOUNDS_NS) + 1)
        self.ns = ns

    @property
    def count(self) -> int:
        """Requests counted."""
        return sum(self.buckets)

    def add(self, ns: int) -> None:
        """Count one of ``ns`` nanoseconds (not on the data path: ``ModelStats`` inlines it)."""
        self.buckets[bisect_left(_BOUNDS_NS, ns)] += 1
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        """Triton's ``{"count", "ns"}``."""
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """The counts of one model version in this process (module docstring).

    Updated with no lock, each update one statement on an int of a list or slot (``x[i] += n``): under CPython's
    GIL no other thread runs inside one (the interpreter switches threads only at calls and backward jumps), and a
    lock would double counting's cost (it is most of it: ``scripts/bench_metrics.py``). Readers may see one request's
    stages half counted; each figure is exact.
    """

    __slots__ = ("model", "version", "buckets", "ns", "failures", "counts", "last_ns", "batches", "batch_buckets")

    def __init__(self, model: str, version: int) -> None:
        self.model = model
        self.version = version
        self.buckets = tuple([0] * (len(_BOUNDS_NS) + 1) for _ in STAGES)  # per stage (``STAGES``' order)
        self.ns = [0] * len(STAGES)  # per stage, total
        self.failures: dict[str, int] = {}
        self.counts = [0, 0, 0]  # inference_count (rows), execution_count (runs), pending (requests in the engine)
        self.last_ns = 0  # perf_counter_ns of the last request that ended (0: none)
        self.batches: dict[int, list[int]] = {}  # rows -> [runs, compute_infer ns]
        self.batch_buckets = [0] * (len(BATCH_BOUNDS) + 1)

    @property
    def inference_count(self) -> int:
        """Rows inferred by session runs of this version (a batch of N rows counts N; cache hits none)."""
        return self.counts[0]

    @property
    def execution_count(self) -> int:
        """Session runs of this version (a batch of several requests counts once)."""
        return self.counts[1]

    @property
    def pending(self) -> int:
        """Requests of this version in the engine or the dynamic batcher now."""
        return self.counts[2]

    def stage(self, name: str) -> Duration:
        """A copy of stage ``name`` (one of ``STAGES``)."""
        i = STAGES.index(name)
        return Duration(list(self.buckets[i]), self.ns[i])

    def hit(self, start: int, fed: int, looked: int) -> None:
        """A cache hit: ``predict`` started at ``start``, had its feed at ``fed``, its cached answer at ``looked``
        (perf_counter_ns), and ends now."""
        end = _now()
        buckets, ns = self.buckets, self.ns
        d = end - start
        buckets[SUCCESS][_bisect(_BOUNDS_NS, d)] += 1
        ns[SUCCESS] += d
        d = looked - fed
        buckets[HIT][_bisect(_BOUNDS_NS, d)] += 1
        ns[HIT] += d
        self.last_ns = end

    def executed(self, start: int, fed: int, looked: int, cached: bool) -> None:
        """A request the engine answered: marks as ``hit``'s (``cached``: the cache was looked up, a miss), the
        session run that served it being the thread's last (``last_run``)."""
        end = _now()
        run_start, run_end = _tls.run or (looked, looked)
        buckets, ns, bounds = self.buckets, self.ns, _BOUNDS_NS
        d = end - start
        buckets[SUCCESS][_bisect(bounds, d)] += 1
        ns[SUCCESS] += d
        d = fed - start
        buckets[INPUT][_bisect(bounds, d)] += 1
        ns[INPUT] += d
        d = run_start - looked
        buckets[QUEUE][_bisect(bounds, d)] += 1
        ns[QUEUE] += d
        d = run_end - run_start
        buckets[INFER][_bisect(bounds, d)] += 1
        ns[INFER] += d
        d = end - run_end
        buckets[OUTPUT][_bisect(bounds, d)] += 1
        ns[OUTPUT] += d
        if cached:
            d = looked - fed
            buckets[MISS][_bisect(bounds, d)] += 1
            ns[MISS] += d
        self.last_ns = end

    def ran(self, rows: int, ns: int) -> None:
        """Count a session run of ``rows`` rows (its batch size) that took ``ns``: ``inference_count``,
        ``execution_count``, batch stats."""
        counts = self.counts
        counts[0] += rows
        counts[1] += 1
        self.batch_buckets[_bisect(BATCH_BOUNDS, rows)] += 1
        batch = self.batches.get(rows)
        if batch is None and len(self.batches) < MAX_BATCH_SIZES:
            batch = self.batches.setdefault(rows, [0, 0])
        if batch is not None:
            batch[0] += 1
            batch[1] += ns

    def failed(self, start: int, reason: str) -> None:
        """A request that started at ``start`` (perf_counter_ns) failed now, for ``reason`` (``reason_of``)."""
        end = _now()
        d = end - start
        self.buckets[FAIL][_bisect(_BOUNDS_NS, d)] += 1
        self.ns[FAIL] += d
        failures = self.failures
        failures.setdefault(reason, 0)  # one statement each: two threads may both add the key, never lose a count
        failures[reason] += 1
        self.last_ns = end

    def __enter__(self) -> ModelStats:
        """``with stats:`` around handing a request of this version to the engine: ``pending`` + 1 meanwhile, and the
        session runs the current thread makes count as this version's executions (``ran``)."""
        _tls.stats = self
        self.counts[2] += 1
        return self

    def __exit__(self, *exc: object) -> None:
        _tls.stats = None
        self.counts[2] -= 1

    def to_dict(self, epoch_offset_ns: int) -> dict[str, Any]:
        """Triton's per-model statistics: ``{name, version, last_inference (ms since the epoch, 0: never),
        inference_count, execution_count, inference_stats: {stage: {count, ns}}, batch_stats: [{batch_size,
        compute_infer: {count, ns}}]}`` (``epoch_offset_ns``: ``time.time_ns() - time.perf_counter_ns()``)."""
        return {
            "name": self.model,
            "version": str(self.version),
            "last_inference": (self.last_ns + epoch_offset_ns) // 1_000_000 if self.last_ns else 0,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {name: {"count": sum(b), "ns": n} for name, b, n in zip(STAGES, self.buckets, self.ns)},
            "batch_stats": [{"batch_size": rows, "compute_infer": {"count": runs, "ns": ns}}
                            for rows, (runs, ns) in sorted(list(self.batches.items()))],
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
