"""Live readings of what a process is serving, as ``%mf_stats`` shows them: requests/s, p50/p99 latency by stage,
cache hit ratio and loaded sessions, each computed from two Prometheus samples taken ``interval`` seconds apart.

One sample format for every source (``Sample``): this process's counts (``local_sample``: ``prometheus.samples()``,
the values the Jupyter server's ``/metrics`` would export for this process) or a server's ``/metrics`` text
(``parse_sample``: the Jupyter server's, or ``modelforge serve``'s summed over its workers), read with
``prometheus_client``'s parser. A reading (``reading``) is the difference of two samples, so it shows what happened
in that window, not since the process started. Quantiles come from the histogram buckets' differences, interpolated
linearly inside a bucket as Prometheus' ``histogram_quantile`` does; their resolution is the buckets'
(``metrics.DURATION_BOUNDS_US``: 5 µs to 10 s, tens of µs apart below 1 ms).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from .metrics import DURATION_BOUNDS_US

PREFIX = "modelforge_"
# The latency a reading splits, by the histograms it sums: the whole request (successes, cache hits included), the
# time executed requests waited for their session run, the run itself, and the prediction cache's lookups (hit or miss)
STAGE_HISTOGRAMS = {"request": ("inference_request_duration_us",), "queue": ("inference_queue_duration_us",),
                    "compute": ("inference_compute_infer_duration_us",),
                    "cache": ("cache_hit_duration_us", "cache_miss_duration_us")}
_STAGE_OF = {family: stage for stage, families in STAGE_HISTOGRAMS.items() for family in families}
COUNTERS = ("inference_request_success", "inference_request_failure", "cache_num_hits_per_model",
            "cache_num_misses_per_model")
GAUGES = ("sessions_loaded", "session_bytes")
_BOUNDS = tuple(float(b) for b in DURATION_BOUNDS_US) + (math.inf,)


@dataclass
class Sample:
    """Cumulative values of one source at ``at`` (``time.monotonic()`` s), summed over the model versions it keeps
    (one model's, or all): ``counters`` and ``gauges`` by family name (no ``modelforge_`` prefix), ``histograms``
    per-bucket counts (not cumulative; ``DURATION_BOUNDS_US`` µs bounds, +Inf last) by stage of ``STAGE_HISTOGRAMS``."""

    at: float
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Reading:
    """What a source served between two samples: ``seconds`` long, ending at ``at`` (monotonic s). ``requests_per_s``
    and ``failures_per_s`` over the window; ``p50_ms`` / ``p99_ms`` per stage of ``STAGE_HISTOGRAMS`` (None when no
    request went through that stage); ``hit_ratio`` of cache lookups (None without lookups); ``sessions`` loaded and
    the ``session_bytes`` they are charged at its end."""

    at: float
    seconds: float
    requests_per_s: float
    failures_per_s: float
    p50_ms: dict[str, float | None]
    p99_ms: dict[str, float | None]
    hit_ratio: float | None
    sessions: int
    session_bytes: int


def _keeps(labels: dict[str, str], model: str | None) -> bool:
    return model is None or "model" not in labels or labels["model"] == model


def _add(sample: Sample, family: str, kind: str, labels: dict[str, str], value: Any, model: str | None) -> None:
    if not _keeps(labels, model):
        return
    if kind == "histogram" and family in _STAGE_OF:
        buckets = value[0]
        into = sample.histograms.setdefault(_STAGE_OF[family], [0.0] * len(_BOUNDS))
        for i, n in enumerate(buckets[:len(_BOUNDS)]):
            into[i] += n
    elif family in COUNTERS:
        sample.counters[family] = sample.counters.get(family, 0.0) + value
    elif family in GAUGES:
        sample.gauges[family] = sample.gauges.get(family, 0.0) + value


def local_sample(model: str | None = None) -> Sample:
    """This process's values now (``prometheus.samples()``), of ``model`` (a name; None: every model)."""
    from .prometheus import samples

    sample = Sample(time.monotonic())
    for family, kind, _help, labels, value in samples():
        _add(sample, family, kind, labels, value, model)
    return sample


def parse_sample(text: str, model: str | None = None, at: float | None = None) -> Sample:
    """The ``modelforge_*`` families of a ``/metrics`` text exposition (Prometheus' text format), of ``model`` (None:
    every model), taken at ``at`` (monotonic s; default now). Other families are skipped. Raises ``ValueError`` for
    text that is not the text format."""
    from prometheus_client.parser import text_string_to_metric_families

    sample = Sample(time.monotonic() if at is None else at)
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith(PREFIX):
            continue
        family = fam.name[len(PREFIX):]
        if fam.type == "histogram":
            for labels, buckets in _histograms(fam.samples).items():
                _add(sample, family, "histogram", dict(labels), (buckets, None), model)
            continue
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            _add(sample, family, fam.type, s.labels, s.value, model)
    return sample


def _histograms(samples: list) -> dict[tuple, list[float]]:
    """Per label set (``le`` aside): per-bucket counts from a histogram's cumulative ``_bucket`` samples."""
    cumulative: dict[tuple, dict[float, float]] = {}
    for s in samples:
        if s.name.endswith("_bucket"):
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            cumulative.setdefault(labels, {})[float(s.labels["le"])] = s.value
    out = {}
    for labels, by_bound in cumulative.items():
        running = [by_bound.get(b, 0.0) for b in _BOUNDS]
        out[labels] = [running[0]] + [max(0.0, b - a) for a, b in zip(running, running[1:])]
    return out


def quantile(q: float, buckets: list[float]) -> float | None:
    """The ``q`` quantile (0..1) in µs of per-bucket counts over ``DURATION_BOUNDS_US``, interpolated linearly in its
    bucket (from 0 for the first; the last finite bound for the +Inf bucket), as Prometheus' ``histogram_quantile``;
    None for no counts."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for i, n in enumerate(buckets):
        if n > 0 and seen + n >= rank:
            if math.isinf(_BOUNDS[i]):
                return _BOUNDS[i - 1]
            low = 0.0 if i == 0 else _BOUNDS[i - 1]
            return low + (_BOUNDS[i] - low) * (rank - seen) / n
        seen += n
    return _BOUNDS[-2]


def reading(before: Sample, after: Sample) -> Reading:
    """What happened between two samples of one source (``after`` the later). A counter that went down (the source
    restarted, or a ``modelforge serve`` worker was replaced) reads as starting from zero."""
    seconds = max(after.at - before.at, 1e-9)

    def delta(name: str) -> float:
        now, then = after.counters.get(name, 0.0), before.counters.get(name, 0.0)
        return now - then if now >= then else now

    p50, p99 = {}, {}
    for stage in STAGE_HISTOGRAMS:
        now, then = after.histograms.get(stage), before.histograms.get(stage) or [0.0] * len(_BOUNDS)
        diff = [] if now is None else [a - b if a >= b else a for a, b in zip(now, then)]
        low, high = quantile(0.5, diff), quantile(0.99, diff)
        p50[stage] = None if low is None else low / 1000
        p99[stage] = None if high is None else high / 1000
    hits, misses = delta("cache_num_hits_per_model"), delta("cache_num_misses_per_model")
    return Reading(
        at=after.at, seconds=seconds,
        requests_per_s=(delta("inference_request_success") + delta("inference_request_failure")) / seconds,
        failures_per_s=delta("inference_request_failure") / seconds,
        p50_ms=p50, p99_ms=p99, hit_ratio=hits / (hits + misses) if hits + misses else None,
        sessions=int(after.gauges.get("sessions_loaded", 0)), session_bytes=int(after.gauges.get("session_bytes", 0)),
    )
