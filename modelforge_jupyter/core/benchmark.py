"""Measure ModelForge beside raw ONNX Runtime: what ``%mf_bench`` and ``python -m modelforge_jupyter.cli.bench`` share.

Both doors call ``plan_bench`` then ``run_bench``: for each batch size they measure, on the same input arrays and
with the same ``SessionOptions`` and providers (``ModelForge.raw_session``), ModelForge beside a raw
``InferenceSession.run``. Only public ``ModelForge`` methods are used:

- ``raw_cold`` / ``cold``: raw session creation + first run / ``predict`` right after ``ModelForge.unload`` (model
  bytes fetched from the registry, session built; the unload itself is not timed);
- ``raw_ort`` / ``api_cache_off``: raw ``run`` / a warm ``predict(use_cache=False)``; ``raw_ort_default``: raw
  ``run`` of a session built with ONNX Runtime's default ``SessionOptions`` (its own thread pool, spinning on);
- ``api_miss``: ``predict`` on a new input each call, the cache write included (CLI only);
- ``api_hit``: ``predict`` of an input already in the prediction cache;
- ``json_floor``: what ``POST modelforge/predict`` does without HTTP (``protocol.predict_json``): decode the JSON
  body (orjson), ``predict`` with the cache off (nested lists converted to arrays), encode the answer, in this process;
- ``http_miss`` / ``http_hit``: ``POST <base_url>modelforge/predict`` on a running Jupyter server over one keep-alive
  connection (``client.ModelForgeClient``), with ``"use_cache": false`` / an input already cached; the request body
  is encoded once, the answer is read and decoded (orjson) in every timed call;
- ``v2_miss`` / ``v2_hit``: the same server's Open Inference Protocol, ``POST <base_url>modelforge/v2/models/{m}/infer``
  with binary tensors in and out (``ModelForgeClient.infer_body`` / ``post_infer``), with ``use_cache`` false / an
  input already cached; the body is encoded once, the answer read and decoded to NumPy arrays in every timed call.
  Only when the server has V2 (``ModelForgeClient.has_v2``): the doors add them beside ``http_*``.

Each cell reports p50 / p95 / p99 latency in ms, throughput in predictions/s (rows of the batch per second over all
timed calls) and the p50 ratio to the raw path beside it (``raw_cold`` for ``cold``, ``raw_ort`` for the others).
The performance budget checked on these figures is ``verdicts``; the CLI is ``bench``, the kernel's dashboard
``kernel.dashboard``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .batches import batch_of, fixed_batch, resize_batch, sample_feed
from .bench_stages import format_stages, reader, stage_split

BATCH_SIZES = (1, 10, 100, 1000)
MAGIC_PATHS = ("raw_cold", "cold", "raw_ort", "api_cache_off", "api_hit")
CLI_PATHS = ("raw_ort", "raw_ort_default", "api_cache_off", "api_miss", "api_hit", "json_floor")
HTTP_PATHS = ("http_miss", "http_hit")  # after raw_ort in a plan: their ratio is to it
V2_PATHS = ("v2_miss", "v2_hit")  # likewise; only when the server has V2
RAW_OF = {"cold": "raw_cold", "raw_ort_default": "raw_ort", "api_cache_off": "raw_ort", "api_miss": "raw_ort",
          "api_hit": "raw_ort", "json_floor": "raw_ort", "http_miss": "raw_ort", "http_hit": "raw_ort",
          "v2_miss": "raw_ort", "v2_hit": "raw_ort"}
LABELS = {
    "raw_cold": "raw ORT cold", "cold": "cold", "raw_ort": "raw ORT", "raw_ort_default": "raw ORT, ORT defaults",
    "api_cache_off": "warm (cache off)", "api_miss": "cache miss", "api_hit": "cache hit",
    "json_floor": "JSON floor (no HTTP)", "raw_cache_get": "raw cache GET", "consistency_check": "consistency check",
    "http_miss": "HTTP cache off", "http_hit": "HTTP cache hit",
    "v2_miss": "V2 binary cache off", "v2_hit": "V2 binary cache hit",
}


@dataclass(frozen=True)
class Row:
    """One measured cell: latency percentiles in ms, predictions/s, p50 ratio to the raw path (1.0 for raw rows)."""

    model: str
    batch: int
    path: str  # a key of LABELS
    p50_ms: float
    p95_ms: float
    p99_ms: float
    predictions_per_s: float
    ratio_p50: float | None = None  # p50 / raw p50 of the same model and batch
    iterations: int = 0
    stages_us: tuple[tuple[str, float], ...] = ()  # (stage, mean µs per call): ``bench_stages.stage_split``


def row_record(row: Row) -> dict[str, Any]:
    """``row`` as a dict of its fields, JSON-safe and unchanged by a JSON round trip (``stages_us`` a dict)."""
    return {**asdict(row), "stages_us": dict(row.stages_us)}


@dataclass(frozen=True)
class Budget:
    """How long each cell runs: about ``seconds`` (at least 5 calls), or exactly ``iterations`` calls when set."""

    seconds: float = 0.5
    iterations: int | None = None
    warmup: int = 20
    max_iterations: int = 20000
    cold_max: int = 20  # a cold call builds a session: cap the repeats when timing by seconds

    def timed(self, fn: Callable[[int], object], *, cold: bool = False, limit: int | None = None,
              setup: Callable[[int], object] | None = None) -> list[float]:
        """Latencies (ms) of ``fn`` under this budget; ``cold`` cells take 2 warmups and 3 to ``cold_max`` calls,
        ``limit`` caps the calls (a finite supply of cache-miss inputs)."""
        warmup = min(self.warmup, 2) if cold else self.warmup
        if self.iterations is not None:
            return timed(fn, float("inf"), min(self.iterations, limit or self.iterations), warmup, setup, 1)
        cap = self.cold_max if cold else (limit or self.max_iterations)
        return timed(fn, self.seconds, cap, warmup, setup, 3 if cold else 5)


@dataclass(frozen=True)
class BenchResult:
    """What ``%mf_bench`` returns: every measured ``Row`` of one model, plus how it was measured.

    ``table`` is a pandas DataFrame (one row per batch size and path) when pandas is installed, else a list of dicts;
    ``to_dict()`` is JSON-safe.
    """

    model: str
    version: int
    backend: str
    batch_sizes: tuple[int, ...]
    budget: Budget
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def table(self) -> Any:
        """Every row as a pandas ``DataFrame`` (one column per ``Row`` field: ms, predictions/s, ratio), or a list
        of dicts when pandas is not installed."""
        records = [row_record(r) for r in self.rows]
        try:
            import pandas as pd
        except ImportError:
            return records
        return pd.DataFrame.from_records(records, columns=list(Row.__dataclass_fields__))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: model, version, backend, batch sizes, budget, rows (each ``Row`` as a dict) and notes."""
        return {
            "model": self.model, "version": self.version, "backend": self.backend,
            "batch_sizes": list(self.batch_sizes), "budget": asdict(self.budget),
            "notes": list(self.notes), "rows": [row_record(r) for r in self.rows],
        }

    def row(self, batch: int, path: str) -> Row | None:
        """The row of ``path`` at ``batch``, or None when that cell was not measured."""
        return next((r for r in self.rows if r.batch == batch and r.path == path), None)

    def summary(self) -> str:
        """One line: model, version, how many rows over which batch sizes, the backend."""
        return (f"BenchResult {self.model} v{self.version}: {len(self.rows)} rows over batch sizes "
                f"{list(self.batch_sizes)} ({self.backend}); .table, .to_dict()")

    def __repr__(self) -> str:
        """The summary line, the table of every row (latency ms, predictions/s, ratio to raw), the stage split, the
        notes."""
        return "\n".join([self.summary(), format_table(self.rows), *format_stages(self.rows), *self.notes])

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))



def timed(fn: Callable[[int], object], seconds: float, max_iterations: int, warmup: int = 20,
          setup: Callable[[int], object] | None = None, min_iterations: int = 5) -> list[float]:
    """Call ``fn(i)`` for about ``seconds`` (at least ``min_iterations``, at most ``max_iterations`` calls) after
    ``warmup`` untimed calls; ``setup(i)`` runs untimed before each call. Returns each call's latency in ms."""
    for i in range(warmup):
        if setup is not None:
            setup(i)
        fn(i)
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    i = warmup
    while len(out) < max_iterations and (len(out) < min_iterations or time.perf_counter() < deadline):
        if setup is not None:
            setup(i)
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000.0)
        i += 1
    return out


def summarize(model: str, batch: int, path: str, ms: list[float], raw_p50: float | None) -> Row:
    """Percentiles (linear interpolation) of ``ms``; throughput = batch rows x calls / total timed seconds."""
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    total_s = sum(ms) / 1000.0
    return Row(model, batch, path, p50, p95, p99, batch * len(ms) / total_s if total_s else 0.0,
               p50 / raw_p50 if raw_p50 else None, len(ms))


@dataclass(frozen=True)
class BenchPlan:
    """What ``run_bench`` will measure: the record, the batch sizes, the paths, and the validated input (if given)."""

    name: str
    record: Any  # ModelRecord
    batch_sizes: tuple[int, ...]
    paths: tuple[str, ...]
    base: dict[str, np.ndarray] | None
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """How many cells (batch size x path) the run measures."""
        return len(self.batch_sizes) * len(self.paths)

    def feed(self, batch: int) -> dict[str, np.ndarray]:
        """The input of ``batch`` rows: the given input resized along axis 0, or a seeded sample of the model's
        input specs (the same arrays for every path, so every path runs on the same values)."""
        if self.base is None:
            return sample_feed(self.record.inputs, batch, seed=batch)
        return resize_batch(self.record.inputs, self.base, batch)


def plan_bench(mf, name: str, batch_sizes: Iterable[int] | None = None, input_data: Any = None,
               paths: Iterable[str] = MAGIC_PATHS) -> BenchPlan:
    """Resolve model ``name`` (latest version) and check the input, before anything is timed or displayed.

    ``input_data`` (anything ``predict`` takes) is validated and converted once; without it ``sample_feed`` builds
    one. ``batch_sizes`` defaults to 1, 10, 100, 1000, or to the batch of ``input_data`` when that is given; the input
    is resized along axis 0 to each. A model whose inputs fix axis 0 (``[1, 4]``, ``[8, 4]``) takes that batch only:
    other batch sizes are dropped with a note saying why (by default its own batch is measured instead). Cache paths
    are dropped (with a note) when the prediction cache is disabled. Raises ``ModelForgeError``: unknown model,
    invalid input, none of the asked batch sizes runnable (``InvalidInputError``), or ONNX Runtime refusing the input
    at the first batch size.
    """
    from .errors import InvalidInputError
    from .tensors import prepare_feed

    record = mf.get(name)
    base = prepare_feed(record.inputs, input_data) if input_data is not None else None
    given = batch_sizes is not None
    if not given:
        batch_sizes = [batch_of(record.inputs, base)] if base is not None else BATCH_SIZES
    batch_sizes, paths, notes = tuple(batch_sizes), tuple(paths), []
    unknown = [p for p in paths if p not in RAW_OF and p not in RAW_OF.values()]
    if unknown or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"bad plan: paths {paths}, batch sizes {batch_sizes}")
    fixed = fixed_batch(record.inputs)
    if fixed is not None and set(batch_sizes) != {fixed[0]}:
        only, why = fixed
        takes = f"{record.name} v{record.version} takes batch {only} only ({why})"
        skipped = [str(b) for b in batch_sizes if b != only]
        what = f"batch {skipped[0]}" if len(skipped) == 1 else f"batch sizes {', '.join(skipped)}"
        batch_sizes = tuple(b for b in batch_sizes if b == only)
        if not batch_sizes and given:
            raise InvalidInputError(f"{what} cannot run: {takes}")
        notes.append(f"{what} not measured: {takes}")
        batch_sizes = batch_sizes or (only,)
    if not mf.settings.cache_prediction_enabled and any(p in ("api_hit", "api_miss") for p in paths):
        paths = tuple(p for p in paths if p not in ("api_hit", "api_miss"))
        notes.append("cache paths not measured: the prediction cache is disabled (CACHE_PREDICTION_ENABLED=false)")
    plan = BenchPlan(name, record, batch_sizes, paths, base, tuple(notes))
    mf.predict(name, plan.feed(batch_sizes[0]), use_cache=False)
    return plan


def threads_note(mf) -> str:
    """ONNX Runtime intra-op threads per session in this process (the raw paths' ``SessionOptions`` are the same),
    and the settings for kernels/scripts and for servers (0: one per physical core, ONNX Runtime's default), e.g.
    ``intra-op threads 0 here (kernels 0: intra_op_num_threads, servers 1: server_intra_op_num_threads)``."""
    s = mf.settings
    return (f"intra-op threads {mf.engine.intra_op_num_threads} here (kernels {s.intra_op_num_threads}: "
            f"intra_op_num_threads, servers {s.server_intra_op_num_threads}: server_intra_op_num_threads; "
            f"0 = one per core)")


def run_bench(mf, plan: BenchPlan, budget: Budget = Budget(),
              on_cell: Callable[[int, int, Row | None], None] | None = None, server=None) -> BenchResult:
    """Measure every path of ``plan`` on each of its batch sizes, in order; raw paths first, so ratios exist.

    ``on_cell(done, total, row)`` runs after each cell (``row`` None when a cache path could not be measured: the
    cache did not answer, or no float input to vary for a miss). ``server`` (a ``client.ModelForgeClient``)
    is needed for the ``http_*`` and ``v2_*`` paths, and must serve the same bytes under the model's name. Raises
    ``ModelForgeError`` if a batch size's input is refused or the server serves another model.
    """
    record, name = plan.record, plan.name
    if any(p in HTTP_PATHS + V2_PATHS for p in plan.paths):
        if server is None:
            raise ValueError(f"paths {HTTP_PATHS + V2_PATHS} need a server (kernel.client.connect())")
        check_served(server, record)
    model_bytes = mf.model_bytes(record.id, record.version)
    raw = mf.raw_session(model_bytes)
    notes, rows, done = list(plan.notes), [], 0
    for batch in plan.batch_sizes:
        feed = plan.feed(batch)
        fed = batch_of(record.inputs, feed)
        if fed != batch:  # every figure below counts `batch` rows per call: they must be the rows fed
            raise AssertionError(f"batch {batch} planned but the input of {name!r} has {fed} rows per run")
        mf.predict(name, feed, use_cache=False)  # refuses a bad input before anything is timed
        raw_p50: dict[str, float] = {}
        for path in plan.paths:
            counts = reader(path, mf, server, record.name, record.version)
            before = counts() if counts else None
            if path in HTTP_PATHS:
                ms = _measure_http(server, name, path, feed, budget, notes, batch)
            elif path in V2_PATHS:
                ms = _measure_v2(server, name, path, feed, budget, notes, batch)
            else:
                ms = _measure(mf, name, path, feed, budget, raw, model_bytes, notes, batch)
            row = None
            if ms is not None:
                row = summarize(record.name, batch, path, ms, raw_p50.get(RAW_OF.get(path, "")))
                if path in RAW_OF.values():
                    raw_p50[path] = row.p50_ms
                    row = replace(row, ratio_p50=1.0)
                elif counts is not None:
                    row = replace(row, stages_us=stage_split(before, counts()))
                rows.append(row)
            done += 1
            if on_cell is not None:
                on_cell(done, plan.total, row)
    return BenchResult(record.name, record.version, f"{mf.backend}, {threads_note(mf)}", plan.batch_sizes, budget,
                       tuple(rows), tuple(notes))


def _measure(mf, name, path, feed, budget, raw, model_bytes, notes, batch) -> list[float] | None:
    """Latencies (ms) of one path on ``feed``; None when a cache path cannot be measured (a note says why)."""
    if path == "raw_ort":
        return budget.timed(lambda i: raw.run(None, feed))
    if path == "raw_ort_default":
        default = mf.raw_session(model_bytes, engine_options=False)
        return budget.timed(lambda i: default.run(None, feed))
    if path == "json_floor":
        from .protocol import encode_predict, predict_json  # the server's own work, HTTP aside

        body = encode_predict(name, {k: v.tolist() for k, v in feed.items()}, use_cache=False)

        return budget.timed(lambda i: predict_json(mf, body))
    if path == "raw_cold":
        return budget.timed(lambda i: mf.raw_session(model_bytes).run(None, feed),
                            cold=True)
    if path == "cold":
        return budget.timed(lambda i: mf.predict(name, feed, use_cache=False), cold=True,
                            setup=lambda i: mf.unload(name))
    if path == "api_cache_off":
        return budget.timed(lambda i: mf.predict(name, feed, use_cache=False))
    mf.predict(name, feed)
    if not mf.predict(name, feed).cached:
        notes.append(f"batch {batch}: {LABELS[path]} not measured: the prediction cache did not answer")
        return None
    if path == "api_hit":
        return budget.timed(lambda i: mf.predict(name, feed))
    floats = [k for k, v in feed.items() if v.dtype.kind == "f"]
    if not floats:
        notes.append(f"batch {batch}: {LABELS[path]} not measured: no float input to vary")
        return None
    n = 2000 if batch <= 10 else 300
    misses = [{k: (v + v.dtype.type(i * 1e-3) if k in floats else v) for k, v in feed.items()}
              for i in range(1, n + budget.warmup + 1)]
    return budget.timed(lambda i: mf.predict(name, misses[i % len(misses)]), limit=n)


def check_served(server, record) -> None:
    """Refuse (``ModelForgeError``) unless ``server``'s latest ``record.name`` has ``record``'s bytes (sha256)."""
    from .errors import ModelForgeError, ModelNotFoundError

    try:
        served = server.model(record.name)
    except ModelNotFoundError:
        served = None
    if served is None or served["sha256"] != record.sha256:
        what = "no model" if served is None else f"another {record.name!r} (v{served['version']}, other bytes)"
        raise ModelForgeError(
            f"the server at {server.url} has {what} under {record.name!r}, not the bytes of v{record.version} "
            "measured here: this process and the server do not share a registry (DATABASE_URL, MODELFORGE_DATA_DIR)"
        )


def _measure_http(server, name, path, feed, budget, notes, batch) -> list[float] | None:
    """Latencies (ms) of ``POST modelforge/predict`` with ``feed``: cache off, or an input the server has cached."""
    use_cache = path == "http_hit"
    body = server.predict_body(name, feed, use_cache=use_cache)
    server.post_predict(body)  # session loaded on the server, and the answer cached for a hit
    if use_cache and not server.post_predict(body)["cached"]:
        notes.append(f"batch {batch}: {LABELS[path]} not measured: the server's prediction cache did not answer")
        return None
    return budget.timed(lambda i: server.post_predict(body))


def _measure_v2(server, name, path, feed, budget, notes, batch) -> list[float] | None:
    """Latencies (ms) of a V2 binary infer with ``feed``: cache off, or an input the server has cached."""
    use_cache = path == "v2_hit"
    body, length = server.infer_body(feed, use_cache=use_cache)
    server.post_infer(name, body, length)  # session loaded on the server, and the answer cached for a hit
    if use_cache and not server.post_infer(name, body, length).cached:
        notes.append(f"batch {batch}: {LABELS[path]} not measured: the server's prediction cache did not answer")
        return None
    return budget.timed(lambda i: server.post_infer(name, body, length))


HEADER = (f"{'model':<17}{'batch':>6}  {'path':<18}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'pred/s':>12}"
          f"{'x raw p50':>11}")


def format_row(r: Row) -> str:
    """A row as a fixed-width line under ``HEADER`` (ms to 4 decimals, predictions/s, ratio to raw p50)."""
    ratio = f"{r.ratio_p50:.2f}" if r.ratio_p50 is not None else ""
    return (f"{r.model:<17}{r.batch:>6}  {r.path:<18}{r.p50_ms:>10.4f}{r.p95_ms:>10.4f}{r.p99_ms:>10.4f}"
            f"{r.predictions_per_s:>12,.0f}{ratio:>11}")


def format_table(rows: Iterable[Row]) -> str:
    """``HEADER``, a rule, then one ``format_row`` line per row."""
    return "\n".join([HEADER, "-" * len(HEADER), *map(format_row, rows)])

