"""Benchmark ModelForge against raw ONNX Runtime in one run: ``python -m modelforge_jupyter.bench``.

For each sample model and batch size it measures, on the same input and with the same ``SessionOptions``:
raw ``InferenceSession.run``; ``ModelForge.predict`` with the cache off, on a cache miss (a new input each call, the
cache write included) and on a cache hit; p50 / p99 latency in ms and predictions/s (rows per second), each with its
ratio to raw ONNX Runtime. Then cold start (predict right after the session is unloaded, model bytes fetched from the
registry) beside raw session creation + first run, and a cache hit beside a raw GET of the same value from the cache
backend. ``--json PATH`` writes the same figures as JSON.

By default it runs on a fresh embedded registry and disk cache in a temporary directory; ``--database-url`` and
``--redis-url`` measure real services (the registry used is created and dropped nowhere: use a scratch database).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

from .demo import sample_path

MODELS = {"iris": "iris.onnx", "breast_cancer_rf": "breast_cancer_rf.onnx", "diabetes": "diabetes.onnx"}


@dataclass
class Row:
    model: str
    batch: int
    path: str  # raw_ort | api_cache_off | api_miss | api_hit | cold | raw_cold | raw_cache_get
    p50_ms: float
    p99_ms: float
    predictions_per_s: float
    ratio_p50: float | None = None  # p50 / raw p50 of the same model and batch


def timed(fn: Callable[[int], object], seconds: float, max_iterations: int, warmup: int = 20) -> list[float]:
    """Call ``fn(i)`` repeatedly for about ``seconds`` (at most ``max_iterations``); return latencies in ms."""
    for i in range(warmup):
        fn(i)
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    i = warmup
    while len(out) < max_iterations and (len(out) < 5 or time.perf_counter() < deadline):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000.0)
        i += 1
    return out


def summarize(model: str, batch: int, path: str, ms: list[float], raw_p50: float | None) -> Row:
    ms_sorted = sorted(ms)
    p50 = statistics.median(ms_sorted)
    p99 = ms_sorted[min(len(ms_sorted) - 1, int(round(0.99 * (len(ms_sorted) - 1))))]
    return Row(model, batch, path, p50, p99, batch * 1000.0 / p50 if p50 else 0.0,
               p50 / raw_p50 if raw_p50 else None)


def bench_model(mf, name: str, batches: list[int], seconds: float) -> list[Row]:
    import onnxruntime as ort

    record = mf.save(name, sample_path(MODELS[name]))[0]
    spec = record.inputs[0]
    raw = ort.InferenceSession(str(sample_path(MODELS[name])), mf.engine.session_options(), providers=mf.engine.providers)
    rows: list[Row] = []
    for batch in batches:
        rng = np.random.default_rng(batch)
        X = rng.uniform(0, 5, [batch if d is None else d for d in spec.shape]).astype(np.float32)
        n_miss = 2000 if batch <= 10 else 300
        misses = [X + np.float32(i * 1e-3) for i in range(n_miss + 20)]
        raw_ms = timed(lambda i: raw.run(None, {spec.name: X}), seconds, 20000)
        raw_row = summarize(name, batch, "raw_ort", raw_ms, None)
        raw_row.ratio_p50 = 1.0
        rows.append(raw_row)
        cases = {
            "api_cache_off": lambda i: mf.predict(name, X, use_cache=False),
            "api_miss": lambda i: mf.predict(name, misses[i % len(misses)]),
            "api_hit": lambda i: mf.predict(name, X),
        }
        for path, fn in cases.items():
            limit = n_miss if path == "api_miss" else 20000
            rows.append(summarize(name, batch, path, timed(fn, seconds, limit), raw_row.p50_ms))
    return rows


def bench_cold(mf, name: str, repeats: int = 20) -> list[Row]:
    import onnxruntime as ort

    record = mf.get(name)
    X = np.ones([1 if d is None else d for d in record.inputs[0].shape], np.float32)
    data = sample_path(MODELS[name]).read_bytes()

    def raw_cold(_i):
        ort.InferenceSession(data, mf.engine.session_options(), providers=mf.engine.providers).run(
            None, {record.inputs[0].name: X})

    def api_cold(_i):
        mf.unload(name)
        mf.predict(name, X, use_cache=False)

    raw_row = summarize(name, 1, "raw_cold", timed(raw_cold, 0, repeats, warmup=2), None)
    raw_row.ratio_p50 = 1.0
    return [raw_row, summarize(name, 1, "cold", timed(api_cold, 0, repeats, warmup=2), raw_row.p50_ms)]


def bench_cache_get(mf, name: str, seconds: float) -> list[Row]:
    """A cache hit beside a raw GET of the same key from the cache backend (Redis GET or diskcache get)."""
    X = np.ones([1 if d is None else d for d in mf.get(name).inputs[0].shape], np.float32)
    mf.predict(name, X)
    key = next(iter_keys(mf))
    get = mf.cache.client.get if mf.cache.backend == "redis" else mf.cache.cache.get
    raw_row = summarize(name, 1, "raw_cache_get", timed(lambda i: get(key), seconds, 20000), None)
    raw_row.ratio_p50 = 1.0
    hit_row = summarize(name, 1, "api_hit", timed(lambda i: mf.predict(name, X), seconds, 20000), raw_row.p50_ms)
    return [raw_row, hit_row]


def iter_keys(mf):
    if mf.cache.backend == "redis":
        pattern = f"{mf.settings.cache_key_prefix}:prediction:*"
        return (k.decode() for k in mf.cache.client.scan_iter(match=pattern))
    return mf.cache.cache.iterkeys()


def format_table(rows: list[Row]) -> str:
    head = f"{'model':<17}{'batch':>6}  {'path':<14}{'p50 ms':>10}{'p99 ms':>10}{'pred/s':>12}{'x raw p50':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.ratio_p50:.2f}" if r.ratio_p50 is not None else ""
        lines.append(f"{r.model:<17}{r.batch:>6}  {r.path:<14}{r.p50_ms:>10.4f}{r.p99_ms:>10.4f}"
                     f"{r.predictions_per_s:>12,.0f}{ratio:>11}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ModelForge vs raw ONNX Runtime, in one run.")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated sample models")
    parser.add_argument("--batch-sizes", default="1,10,100,1000")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measured cell (s)")
    parser.add_argument("--database-url", default=None, help="registry (default: a temporary SQLite file)")
    parser.add_argument("--redis-url", default="", help="Redis cache (default: a temporary disk cache)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from . import ModelForge

    batches = [int(b) for b in args.batch_sizes.split(",")]
    names = [n for n in args.models.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        settings = {
            "database_url": args.database_url or f"sqlite:///{tmp}/registry.db",
            "redis_url": args.redis_url,
            "cache_dir": f"{tmp}/cache",
            "cache_key_prefix": f"mfbench-{int(time.time())}",
        }
        with ModelForge(**settings) as mf:
            rows: list[Row] = []
            for name in names:
                rows += bench_model(mf, name, batches, args.seconds)
            for name in names:
                rows += bench_cold(mf, name)
            rows += bench_cache_get(mf, names[0], args.seconds)
            backend = f"registry {mf.registry.dialect}, cache {mf.cache.backend}"
            if mf.cache.backend == "redis":
                keys = list(iter_keys(mf))
                if keys:
                    mf.cache.client.unlink(*keys)
    print(f"ModelForge vs raw ONNX Runtime ({backend}; Python {sys.version.split()[0]})")
    print(format_table(rows))
    if args.json:
        args.json.write_bytes(orjson.dumps({"backend": backend, "rows": [asdict(r) for r in rows]},
                                           option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
