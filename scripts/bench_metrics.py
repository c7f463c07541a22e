"""What counting (``core.metrics``) costs a prediction, in one run: the counting calls alone, and ``predict`` with
counting against the same ``predict`` with it switched off (a stand-in that counts nothing), hits and misses.

The budget (issue 14) is 2 µs a prediction. The first table times exactly the calls ``predict`` makes for counting
(``METRICS.of``, the perf_counter_ns marks, ``hit`` / ``with stats`` + the engine's ``ran`` + ``executed``), a
million times each, with the folds of what they recorded into the histograms (``ModelStats.fold``: every
``metrics.FOLD_AT`` requests, and the rest at the end of each repeat, timed with it): the least of 100 interleaved
repeats, less the least of the same marks without counting, steady to ~0.1 µs. The second times ``predict`` itself, alternating rounds with counting on and
off so that the box's noise falls on both: its difference should agree with the first within that noise (a predict
costs tens of µs, so read it as a check, not the figure).

    .venv/bin/python scripts/bench_metrics.py               # ~30 s: embedded backend (SQLite + disk cache)
    .venv/bin/python scripts/bench_metrics.py --rounds 20 --calls 5000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core import api, engine, metrics

IRIS = Path(__file__).resolve().parent.parent / "modelforge_jupyter" / "sample_models" / "iris.onnx"


class _Uncounted:
    """A ``ModelStats`` that counts nothing: ``predict`` with counting switched off."""

    def hit(self, *args: object) -> None:
        pass

    def executed(self, *args: object) -> None:
        pass

    def __enter__(self) -> _Uncounted:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _NoMetrics:
    def __init__(self) -> None:
        self.stats = _Uncounted()

    def of(self, model: str, version: int) -> _Uncounted:
        return self.stats


@contextmanager
def uncounted():
    """Switch counting off in this process: ``predict``'s stats and the engine's hook count nothing."""
    saved = api.METRICS, engine.ran
    api.METRICS, engine.ran = _NoMetrics(), lambda start, feed, values: values
    try:
        yield
    finally:
        api.METRICS, engine.ran = saved


def per_call_ns(fn, n: int, then=lambda: None) -> float:
    """ns per call of ``fn``, ``n`` calls and ``then`` once (timed with them)."""
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    then()
    return (time.perf_counter_ns() - start) / n


REPEATS = 100  # of the counting calls, each n / 100 (10,000) calls, their folds (``metrics.FOLD_AT``) and the last


def counting_calls(n: int) -> dict[str, float]:
    """ns a prediction spends in counting: per cache hit, per miss (run alone), each the calls ``predict`` makes and
    their share of the folds."""
    feed = {"x": np.zeros((1, 4), np.float32)}
    now = time.perf_counter_ns
    of = metrics.METRICS.of
    fold = of("bench", 1).fold

    def hit() -> None:
        start = now()
        fed = now()
        looked, stats = now(), of("bench", 1)
        stats.hit(start, fed, looked)

    def miss() -> None:
        start = now()
        fed = now()
        looked, stats = now(), of("bench", 1)
        with stats:
            run_start = now()  # the engine's marks around its session run, and its hook
            metrics.ran(run_start, feed, None)
        stats.executed(start, fed, looked, True)

    def marks_only() -> None:  # what the uncounted predict still pays: its own start and end marks
        now()
        now()

    least = {"base": float("inf"), "hit": float("inf"), "miss": float("inf")}
    for _ in range(REPEATS):  # each the least of its repeats, interleaved: the box's noise only ever adds
        least["base"] = min(least["base"], per_call_ns(marks_only, n // REPEATS))
        least["hit"] = min(least["hit"], per_call_ns(hit, n // REPEATS, fold))
        least["miss"] = min(least["miss"], per_call_ns(miss, n // REPEATS, fold))
    return {"hit": least["hit"] - least["base"], "miss": least["miss"] - least["base"]}


def predict_rounds(forge: ModelForge, rounds: int, calls: int) -> dict[str, dict[str, list[float]]]:
    """µs per predict, per round, with counting on and off (alternating), for hits and misses."""
    x = np.random.default_rng(0).random((1, 4), dtype=np.float32)
    forge.predict("iris", x)  # cached, session loaded
    out: dict[str, dict[str, list[float]]] = {k: {"on": [], "off": []} for k in ("hit", "miss")}
    for _ in range(rounds):
        for mode in ("on", "off"):
            with uncounted() if mode == "off" else nullcontext():
                out["hit"][mode].append(per_call_ns(lambda: forge.predict("iris", x), calls) / 1000)
                out["miss"][mode].append(per_call_ns(lambda: forge.predict("iris", x, use_cache=False), calls) / 1000)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="counting calls timed (default 1e6)")
    p.add_argument("--rounds", type=int, default=10, help="alternating predict rounds per mode (default 10)")
    p.add_argument("--calls", type=int, default=2000, help="predicts per round (default 2000)")
    args = p.parse_args()
    calls = counting_calls(args.n)
    perf_ns = min(per_call_ns(time.perf_counter_ns, 100_000) for _ in range(5))
    print(f"Counting alone, per prediction (the calls predict makes; budget 2 µs; this box's perf_counter_ns() "
          f"costs {perf_ns:.0f} ns):")
    for kind, ns in calls.items():
        print(f"  {kind:5s} {ns / 1000:6.2f} µs")
    with tempfile.TemporaryDirectory(prefix="mf-bench-metrics-") as tmp:
        with ModelForge(database_url=f"sqlite:///{tmp}/registry.db", cache_dir=f"{tmp}/cache") as forge:
            forge.register("iris", IRIS)
            rounds = predict_rounds(forge, args.rounds, args.calls)
    print(f"predict (iris, 1 row, embedded backend), median of {args.rounds} alternating rounds of {args.calls}:")
    print(f"  {'':5s} {'counted':>10s} {'uncounted':>10s} {'difference':>11s} {'ratio':>6s}")
    for kind, modes in rounds.items():
        on, off = statistics.median(modes["on"]), statistics.median(modes["off"])
        print(f"  {kind:5s} {on:8.2f} µs {off:8.2f} µs {on - off:+8.2f} µs {on / off:6.3f}")


if __name__ == "__main__":
    main()
