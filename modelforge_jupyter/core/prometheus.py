"""ModelForge's Prometheus metrics: this process's counts (``metrics``) as ``prometheus_client`` metric families, named
and labelled after Triton's (``nv_inference_*`` becomes ``modelforge_inference_*``; labels ``model``, ``version``),
read at scrape time, so the data path never calls ``prometheus_client``.

Two ways out, one table (``FAMILIES``):
- ``register(registry)``: a collector in a process's registry; the Jupyter server's ``/metrics`` exports
  ``prometheus_client.REGISTRY`` (honouring ``ServerApp.authenticate_prometheus``), so the extension registers there;
- ``MultiProcessFiles``: for ``modelforge serve``'s workers, this process's values written to ``prometheus_client``'s
  multiprocess files (``PROMETHEUS_MULTIPROC_DIR``: ``counter_<pid>.db``, ``histogram_<pid>.db``,
  ``gauge_livesum_<pid>.db``, the format its ``MultiProcessCollector`` sums over processes), by each worker once a
  second and before it answers a scrape (``exposition``).

Metrics (durations in µs, histograms with ``metrics.DURATION_BOUNDS_US`` buckets; counters end in ``_total``):
``modelforge_inference_request_success``, ``modelforge_inference_request_failure`` (+ ``reason``: invalid_input,
not_found, inference_error, timeout, cancelled, resource_limit, unavailable, other; an unknown model counts under
model ""), ``modelforge_inference_count`` (rows), ``modelforge_inference_exec_count`` (session runs),
``modelforge_inference_request_duration_us`` (successes), ``modelforge_inference_queue_duration_us``,
``modelforge_inference_compute_input_duration_us``, ``modelforge_inference_compute_infer_duration_us``,
``modelforge_inference_compute_output_duration_us``, ``modelforge_cache_num_hits_per_model``,
``modelforge_cache_num_misses_per_model``, ``modelforge_cache_hit_duration_us``, ``modelforge_cache_miss_duration_us``,
``modelforge_inference_batch_size`` (rows per session run), ``modelforge_inference_pending_request_count`` (gauge);
per process, no labels: ``modelforge_sessions_loaded``, ``modelforge_session_bytes`` (gauges: what the engines'
LRUs are charged), ``modelforge_model_loads``, ``modelforge_model_unloads``, ``modelforge_model_load_duration_us``.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from .metrics import BATCH_BOUNDS, DURATION_BOUNDS_US, METRICS, ModelStats

log = logging.getLogger(__name__)
PREFIX = "modelforge_"
# (name, help, stage of ``metrics.STAGES``): a histogram per stage; success and the cache's also as counters
HISTOGRAMS = (
    ("inference_request_duration_us", "Duration of successful requests, µs (cache hits included)", "success"),
    ("inference_queue_duration_us", "Time executed requests waited for their session run (dynamic batching, a cold "
     "session load), µs", "queue"),
    ("inference_compute_input_duration_us", "Resolving the model and validating the input of executed requests, µs",
     "compute_input"),
    ("inference_compute_infer_duration_us", "Session run serving each executed request, µs", "compute_infer"),
    ("inference_compute_output_duration_us", "Output checks, batch split and cache store of executed requests, µs",
     "compute_output"),
    ("cache_hit_duration_us", "Prediction cache lookups that hit (hash, GET, decode), µs", "cache_hit"),
    ("cache_miss_duration_us", "Prediction cache lookups that missed, µs", "cache_miss"),
)
COUNTERS = (
    ("inference_request_success", "Successful inference requests (cache hits included)", "success"),
    ("cache_num_hits_per_model", "Prediction cache hits", "cache_hit"),
    ("cache_num_misses_per_model", "Prediction cache misses", "cache_miss"),
)
Sample = tuple[str, str, str, dict[str, str], Any]  # (family, type, help, labels, value | (buckets, sum))


def samples() -> Iterator[Sample]:
    """This process's values, one per family and label set: counters and gauges a number, histograms (per-bucket
    counts, not cumulative, with the +Inf bucket last; sum). The one reading of ``metrics`` both exporters share."""
    for stats in METRICS.all():
        labels = {"model": stats.model, "version": str(stats.version) if stats.version else ""}
        yield from _model_samples(stats, labels)
    sessions, nbytes = METRICS.sessions()
    yield "sessions_loaded", "gauge", "Sessions loaded in the engines' LRUs", {}, sessions
    yield "session_bytes", "gauge", "Bytes the loaded sessions are charged (their builds' RSS growth)", {}, nbytes
    loads = METRICS.loads
    yield "model_loads", "counter", "Session builds (a first use, a registration, a reload)", {}, loads.count
    yield "model_unloads", "counter", "Sessions dropped (LRU eviction, unload, a removed version)", {}, METRICS.unloads
    yield ("model_load_duration_us", "histogram", "Session build durations, µs", {},
           (list(loads.buckets), loads.ns / 1000))


def _model_samples(stats: ModelStats, labels: dict[str, str]) -> Iterator[Sample]:
    for name, text, stage in COUNTERS:
        yield name, "counter", text, labels, stats.stage(stage).count
    for reason, count in sorted(list(stats.failures.items())):
        yield ("inference_request_failure", "counter", "Failed inference requests, by reason",
               {**labels, "reason": reason}, count)
    yield "inference_count", "counter", "Rows inferred by session runs (a batch of N counts N)", labels, \
        stats.inference_count
    yield "inference_exec_count", "counter", "Session runs (a dynamic batch counts once)", labels, \
        stats.execution_count
    yield "inference_pending_request_count", "gauge", "Requests in the engine or its batcher now", labels, \
        stats.pending
    for name, text, stage in HISTOGRAMS:
        duration = stats.stage(stage)
        yield name, "histogram", text, labels, (duration.buckets, duration.ns / 1000)
    yield ("inference_batch_size", "histogram", "Rows per session run (batch size)", labels,
           (stats.batch_buckets(), stats.inference_count))


class ModelForgeCollector:
    """``prometheus_client`` collector of this process's ``samples`` (register it with ``register``)."""

    def collect(self) -> Iterator[Any]:
        """The metric families, buckets cumulative as the exposition format wants them."""
        families: dict[str, Any] = {}
        for name, kind, text, labels, value in samples():
            family = families.get(name)
            if family is None:
                family = families[name] = _family(PREFIX + name, kind, text, list(labels))
            if kind == "histogram":
                buckets, total = value
                bounds = BATCH_BOUNDS if name == "inference_batch_size" else DURATION_BOUNDS_US
                family.add_metric(list(labels.values()), _cumulative(bounds, buckets), total)
            else:
                family.add_metric(list(labels.values()), value)
        yield from families.values()

    def describe(self) -> list[Any]:
        """Nothing: names are checked at each scrape, not reserved (registering twice is refused by ``register``)."""
        return []


def _family(name: str, kind: str, text: str, labels: list[str]) -> Any:
    if kind == "counter":
        return CounterMetricFamily(name, text, labels=labels)
    if kind == "gauge":
        return GaugeMetricFamily(name, text, labels=labels)
    return HistogramMetricFamily(name, text, labels=labels)


def _cumulative(bounds: tuple[int, ...], buckets: list[int]) -> list[tuple[str, int]]:
    out, total = [], 0
    for bound, count in zip((*(_go(float(b)) for b in bounds), "+Inf"), buckets):
        total += count
        out.append((bound, total))
    return out


_registered: set[int] = set()
_register_lock = threading.Lock()


def register(registry: Any = None) -> None:
    """Add ModelForge's collector to ``registry`` (default ``prometheus_client.REGISTRY``, which the Jupyter server
    exports at ``{base_url}metrics``); once per registry and process."""
    from prometheus_client import REGISTRY

    registry = REGISTRY if registry is None else registry
    with _register_lock:
        if id(registry) not in _registered:
            registry.register(ModelForgeCollector())
            _registered.add(id(registry))


class MultiProcessFiles:
    """This process's values in ``prometheus_client``'s multiprocess files under ``path`` (``modelforge serve``).

    Each ``write`` stores the current totals (not increments) under this process's pid: counters and histograms stay
    after the process exits (what it did is still counted), gauges go with ``mark_dead`` (``livesum``: summed over
    live processes). Thread-safe; one per process.
    """

    KINDS = {"counter": "counter", "histogram": "histogram", "gauge": "gauge_livesum"}

    def __init__(self, path: str, pid: int | None = None) -> None:
        self.path = path
        self.pid = os.getpid() if pid is None else pid
        self._files: dict[str, MmapedDict] = {}
        self._keys: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self, period: float = 1.0) -> None:
        """Write every ``period`` seconds from a daemon thread until ``close``, so that a scrape answered by another
        process sees this one's values at most that old."""
        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    self.write()
                except Exception:  # a full disk, say: the next period tries again
                    log.warning("metrics not written to %s", self.path, exc_info=True)

        threading.Thread(target=loop, name="modelforge-metrics", daemon=True).start()

    def write(self) -> None:
        """Store this process's current values (``samples``)."""
        with self._lock:
            for name, kind, text, labels, value in samples():
                family = PREFIX + name
                if kind == "histogram":
                    buckets, total = value
                    bounds = BATCH_BOUNDS if name == "inference_batch_size" else DURATION_BOUNDS_US
                    for bound, count in zip((*(float(b) for b in bounds), float("inf")), buckets):
                        self._put(kind, family, family + "_bucket", text, {**labels, "le": _go(bound)}, count)
                    self._put(kind, family, family + "_sum", text, labels, total)
                else:
                    self._put(kind, family, family + ("_total" if kind == "counter" else ""), text, labels, value)

    def _put(self, kind: str, family: str, sample: str, text: str, labels: dict[str, str], value: float) -> None:
        ident = (family, sample, tuple(labels.items()))
        key = self._keys.get(ident)
        if key is None:
            key = self._keys[ident] = mmap_key(family, sample, list(labels), list(labels.values()), text)
        store = self._files.get(kind)
        if store is None:
            store = self._files[kind] = MmapedDict(os.path.join(self.path, f"{self.KINDS[kind]}_{self.pid}.db"))
        store.write_value(key, float(value), 0.0)

    def close(self) -> None:
        """Stop the writing thread, write a last time and close the files; the gauges of this process are then
        dropped (``mark_dead``)."""
        self._stop.set()
        self.write()
        with self._lock:
            for store in self._files.values():
                store.close()
            self._files = {}
        mark_dead(self.path, [self.pid])


def _go(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


def mark_dead(path: str, pids: list[int] | None = None) -> list[int]:
    """Drop the live gauges of ``pids`` (default: every process with files under ``path`` that no longer runs) from
    the multiprocess files; returns the pids dropped."""
    from prometheus_client import multiprocess

    if pids is None:
        found = {os.path.basename(f).rsplit("_", 1)[1][:-3] for f in glob.glob(os.path.join(path, "gauge_live*.db"))}
        pids = [int(p) for p in found if p.isdigit() and not _alive(int(p))]
    for pid in pids:
        multiprocess.mark_process_dead(pid, path)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: raises when no such process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def exposition(path: str | None = None) -> tuple[bytes, str]:
    """(the text exposition, its content type) of every process writing under ``path`` (multiprocess mode), or of
    this process alone (``path`` None), ModelForge's metrics only."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if path is None:
        registry.register(ModelForgeCollector())
    else:
        mark_dead(path)
        MultiProcessCollector(registry, path)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a text exposition (tests and the dashboard read scrapes so)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}

