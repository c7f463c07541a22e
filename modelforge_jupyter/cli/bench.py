"""``python -m modelforge_jupyter.cli.bench``: benchmark ModelForge against raw ONNX Runtime in one run (the CLI door).

What each path measures and how a cell is summarised (p50 / p95 / p99 ms, predictions/s, the p50 ratio to the raw
path beside it) is ``benchmark``'s docstring; the budget lines are ``verdicts``'. The CLI adds a cache hit beside a raw
GET of the same key from the cache backend, the cross-process consistency check alone
(``ModelForge.registry_generation``: what every predict pays to prove its metadata current), and checks each line of
the performance budget on the figures; ``--json PATH`` writes all of it as JSON. By default it runs on a fresh
embedded registry and disk cache in a temporary directory; ``--database-url`` and ``--redis-url`` measure real
services (use a scratch database). ``--http [URL]`` also measures the server found as ``client.find_server`` does
(URL, env ``MODELFORGE_URL``/``MODELFORGE_TOKEN``, the parent server); the CLI uploads each sample model it lacks
(``PUT``) and deletes those afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import orjson

from ..core.benchmark import (  # noqa: F401  (re-exported: ``modelforge_jupyter.cli.bench`` names them in notebooks and scripts)
    BATCH_SIZES,
    CLI_PATHS,
    HEADER,
    HTTP_PATHS,
    LABELS,
    MAGIC_PATHS,
    RAW_OF,
    V2_PATHS,
    BenchPlan,
    BenchResult,
    Budget,
    Row,
    check_served,
    format_row,
    format_table,
    plan_bench,
    run_bench,
    summarize,
    timed,
)
from ..core.batches import batch_of, fixed_batch, parse_batch_sizes, resize_batch, sample_feed  # noqa: F401
from ..core.samples import SAMPLE_MODELS, sample_path
from ..core.urls import mask_url
from ..core.verdicts import Verdict, budget, format_budget  # noqa: F401


def served_samples(server, names: Iterable[str], uploaded: list[str]) -> None:
    """Upload (``PUT``) each sample model the server lacks; refuse one it has with other bytes. Appends each upload
    to ``uploaded`` as it happens, so ``main`` deletes them afterwards even when a later one is refused or the run
    is interrupted, leaving the server's registry as it was."""
    import hashlib

    from ..core.errors import ModelForgeError, ModelNotFoundError

    for name in names:
        data = sample_path(SAMPLE_MODELS[name]).read_bytes()
        try:
            served = server.model(name)
        except ModelNotFoundError:
            uploaded.append(name)  # before the PUT: an interrupted upload may still have landed
            server.save(name, data)
            continue
        if served["sha256"] != hashlib.sha256(data).hexdigest():
            raise ModelForgeError(f"the server at {server.url} has another model named {name!r}; "
                                  "measure it with --models naming only sample models it lacks or has unchanged")


def bench_model(mf, name: str, batches: list[int], seconds: float, server=None) -> list[Row]:
    """Register sample model ``name`` (if new) and measure the CLI's warm paths on each batch size (and the HTTP
    paths with ``server``, and its V2 binary paths when it has V2)."""
    mf.save(name, sample_path(SAMPLE_MODELS[name]))
    paths = CLI_PATHS + (HTTP_PATHS + (V2_PATHS if server.has_v2 else ()) if server is not None else ())
    plan = plan_bench(mf, name, batches, paths=paths)
    return list(run_bench(mf, plan, Budget(seconds=seconds), server=server).rows)


def bench_cold(mf, name: str, repeats: int = 20) -> list[Row]:
    """Cold start at batch 1 beside raw session creation + first run, ``repeats`` times each."""
    plan = plan_bench(mf, name, [1], paths=("raw_cold", "cold"))
    return list(run_bench(mf, plan, Budget(iterations=repeats, warmup=2)).rows)


def bench_cache_get(mf, name: str, seconds: float) -> list[Row]:
    """A cache hit beside a GET of the same key from the cache alone (``mf.cache.get``: a Redis GET or a diskcache
    get, behind the outage breaker's check)."""
    feed = sample_feed(mf.get(name).inputs, 1)
    mf.predict(name, feed)
    key = mf.cache_key(name, feed)
    get = mf.cache.get
    budget = Budget(seconds=seconds)
    raw_row = replace(summarize(name, 1, "raw_cache_get", budget.timed(lambda i: get(key)), None), ratio_p50=1.0)
    hit_row = summarize(name, 1, "api_hit", budget.timed(lambda i: mf.predict(name, feed)), raw_row.p50_ms)
    return [raw_row, hit_row]


def bench_consistency_check(mf, name: str, seconds: float) -> Row:
    """The cross-process consistency check alone, as every predict pays it: ``ModelForge.registry_generation``
    (SQLite ``PRAGMA data_version``; PostgreSQL ``SELECT``; with Redis, the stamp GET that predict pipelines with
    its cache GET, so a cache hit pays no extra round trip for it)."""
    return summarize(name, 1, "consistency_check", Budget(seconds=seconds).timed(lambda i: mf.registry_generation()),
                     None)


def _sample_models(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SAMPLE_MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'none given'}: the sample models are "
                                         f"{', '.join(SAMPLE_MODELS)}")
    return names


def _batch_sizes(text: str) -> list[int]:
    try:
        return parse_batch_sizes(text)  # the core's rule, as %mf_bench's
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers >= 1, e.g. 1,10,100,1000") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds > 0 and < 3600")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m modelforge_jupyter.cli.bench [--models ...] [--http] ...``: measure, print the table and the
    budget verdicts (a failed budget is reported, not an error). Returns the exit status: 0 measured, 2 a setup
    error (``--json`` not writable, Redis or the server unreachable, a model refused); argparse exits 2 on usage."""
    parser = argparse.ArgumentParser(description="ModelForge vs raw ONNX Runtime, in one run.")
    parser.add_argument("--models", type=_sample_models, default=list(SAMPLE_MODELS),
                        help="comma-separated sample models")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=list(BATCH_SIZES))
    parser.add_argument("--seconds", type=_seconds, default=0.5, help="time per measured cell (s)")
    parser.add_argument("--database-url", default=None, help="registry (default: a temporary SQLite file)")
    parser.add_argument("--redis-url", default="", help="Redis cache (default: a temporary disk cache)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--http", nargs="?", const="", default=None, metavar="URL",
                        help="also measure POST modelforge/predict on a Jupyter server: URL (base_url included), "
                        "else env MODELFORGE_URL, else the server of this kernel (JPY_PARENT_PID)")
    parser.add_argument("--token", default=None,
                        help="the server's token (default: env MODELFORGE_TOKEN, or the found server's own)")
    args = parser.parse_args(argv)

    from ..core.errors import ModelForgeError

    batches, names = args.batch_sizes, args.models
    if args.json is not None:
        try:  # found now, not after every figure was measured
            args.json.write_bytes(b"")
        except OSError as err:
            print(f"cannot write --json {args.json}: {err.strerror or err}", file=sys.stderr)
            return 2
    server, uploaded = None, []
    try:
        if args.http is not None:
            from ..core.client import connect

            server = connect(args.http or None, args.token)
            served_samples(server, names, uploaded)
        rows, backend = _bench_all(args, names, batches, server)
    except (ModelForgeError, OSError, ValueError) as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            for name in uploaded:
                try:
                    server.delete(name)
                except (ModelForgeError, OSError) as err:
                    print(f"could not delete {name!r} from the server: {err}", file=sys.stderr)
            server.close()
    print(f"ModelForge vs raw ONNX Runtime ({backend}; Python {sys.version.split()[0]})")
    if server is not None:
        print(f"HTTP: POST {server.url}modelforge/predict, one keep-alive connection")
        if server.has_v2:
            print(f"V2: POST {server.url}modelforge/v2/models/{{model}}/infer, binary tensors, the same connection")
    print(format_table(rows))
    verdicts = budget(rows, "redis" if "cache redis" in backend else "disk")
    print("\nBudget, checked on the figures above:")
    print(format_budget(verdicts))
    if args.json:
        args.json.write_bytes(orjson.dumps({"backend": backend, "rows": [asdict(r) for r in rows],
                                            "budget": [asdict(v) for v in verdicts]}, option=orjson.OPT_INDENT_2))
    return 0


def _bench_all(args: argparse.Namespace, names: list[str], batches: list[int], server) -> tuple[list[Row], str]:
    """The CLI's measurements on a fresh registry and cache (temporary unless given): (rows, backend)."""
    from ..core.api import ModelForge
    from ..core.errors import ServiceUnavailableError

    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        settings = {
            "database_url": args.database_url or f"sqlite:///{tmp}/registry.db",
            "redis_url": args.redis_url,
            "cache_dir": f"{tmp}/cache",
            "cache_key_prefix": f"mfbench-{int(time.time())}-{os.getpid()}",
        }
        with ModelForge(**settings) as mf:
            if args.redis_url and not mf.cache.ping():  # found now, not after every figure was measured
                raise ServiceUnavailableError(f"cannot reach Redis at {mask_url(args.redis_url)}")
            try:
                rows: list[Row] = []
                for name in names:
                    rows += bench_model(mf, name, batches, args.seconds, server)
                for name in names:
                    rows += bench_cold(mf, name)
                rows.append(bench_consistency_check(mf, names[0], args.seconds))
                rows += bench_cache_get(mf, names[0], args.seconds)
            finally:  # interrupted or not: the run's own Redis keys (predictions, registry stamp) go
                mf.cache.clear(settings["cache_key_prefix"])
            backend = mf.backend
    return rows, backend



if __name__ == "__main__":
    raise SystemExit(main())
