"""Issue 14's lifecycle measurements in one run: latency while a model is updated under load, and memory over many
update cycles.

1. **Updates under load** (over HTTP): an isolated ``jupyter server`` (embedded backend; ``--url``/``--token`` for
   another), a ~``--model-mb`` MB float32 MLP (``samples.build_wide_mlp``, hidden 2048) registered with ``PUT
   modelforge/models/{name}``; ``--clients`` threads, each with its own keep-alive ``ModelForgeClient``, sending
   ``POST modelforge/predict`` batch 1 with the cache off. First ``--baseline-s`` seconds without updates, then the
   model PUT ``--updates`` times in a row (two weight seeds in turn, so each PUT is a new version the server loads
   and warms before it commits). Per window: requests, errors, p50 and p99 of each request's round trip; the ratio
   "during / without"; and stale answers: requests sent after an update's PUT returned that answered an older
   version (must be 0).
2. **Memory over update cycles** (in this process, embedded registry in a temporary directory): a ~``--cycle-mb``
   MB MLP updated ``--cycles`` times (two seeds in turn: each update loads a session and unloads the superseded
   one), then ``--requests`` predictions (batch 1, cache off) timed per cycle; the process RSS after each cycle.
   Prints RSS and per-request p50 at cycle 1, 10, 100 and the last, and plots both against the cycle (``--plot``).

    .venv/bin/python scripts/bench_updates.py                         # both parts, the issue's sizes
    .venv/bin/python scripts/bench_updates.py --cycles 200 --updates 5 --baseline-s 10
    .venv/bin/python scripts/bench_updates.py --skip-http            # part 2 only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("MODELFORGE_INTRA_OP_NUM_THREADS", "1")  # the server started below inherits it

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import jupyter_server  # noqa: E402

from modelforge_jupyter import ModelForge  # noqa: E402
from modelforge_jupyter.core.client import ModelForgeClient  # noqa: E402
from modelforge_jupyter.core.memory import process_rss  # noqa: E402
from modelforge_jupyter.core.samples import build_wide_mlp  # noqa: E402

FEATURES, HIDDEN = 256, 2048
MB = 1e6


def mlp(mb: float, seed: int, hidden: int = HIDDEN) -> bytes:
    """An MLP of about ``mb`` MB: as many hidden layers of ``hidden`` as it takes (at least 1)."""
    layers = max(1, round((mb * MB / 4 - FEATURES * hidden) / hidden**2) + 1)
    return build_wide_mlp(FEATURES, hidden, 10, seed=seed, layers=layers)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- 1. updates under load ------------------------------------------------------------------------------------------
def under_load(url: str, token: str, args) -> None:
    models = [mlp(args.model_mb, seed) for seed in (0, 1)]
    admin = ModelForgeClient(url, token, timeout=600)
    admin.save("big", models[0])
    x = np.random.default_rng(0).uniform(0, 5, (1, FEATURES)).astype(np.float32)
    records: list[tuple[float, float, int]] = []  # (sent, latency s, version answered)
    errors: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with ModelForgeClient(url, token, timeout=120) as c:
            body = c.predict_body("big", x, use_cache=False)
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    answer = c.post_predict(body)
                    records.append((sent, time.monotonic() - sent, int(answer["model_version"])))
                except Exception as err:  # every error counts
                    errors.append(f"{type(err).__name__}: {err}")

    print(f"model: {len(models[0]) / MB:.1f} MB; {args.clients} clients, batch 1, cache off, over HTTP")
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # every client connected and warm
    base_start = time.monotonic()
    time.sleep(args.baseline_s)
    base_end = upd_start = time.monotonic()
    returned: list[tuple[float, int]] = []
    put_s = []
    for i in range(args.updates):
        t0 = time.monotonic()
        rec = admin.save("big", models[(i + 1) % 2])
        put_s.append(time.monotonic() - t0)
        returned.append((time.monotonic(), rec["version"]))
    upd_end = time.monotonic()
    stop.set()
    for t in threads:
        t.join()
    admin.close()

    def window(a: float, b: float) -> list[float]:
        return [lat * 1000 for sent, lat, _ in records if a <= sent and sent + lat <= b]

    base, during = window(base_start, base_end), window(upd_start, upd_end)
    stale = sum(1 for at, version in returned for sent, _, v in records if sent > at and v < version)
    print(f"{'window':<16}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for label, values, seconds in (("without updates", base, base_end - base_start),
                                   (f"{args.updates} updates", during, upd_end - upd_start)):
        print(f"{label:<16}{len(values):>9}{pct(values, 50):>9.2f}{pct(values, 99):>9.2f}{max(values or [0]):>9.2f}"
              f"   ({seconds:.1f} s, {len(values) / seconds:.0f} req/s)")
    print(f"during / without: p50 x{pct(during, 50) / pct(base, 50):.2f}, p99 x{pct(during, 99) / pct(base, 99):.2f}")
    print(f"PUT of a new version: p50 {statistics.median(put_s):.2f} s, max {max(put_s):.2f} s; versions "
          f"{returned[0][1]}..{returned[-1][1]}")
    print(f"errors: {len(errors)}{' (' + errors[0] + ')' if errors else ''}; stale answers after an update "
          f"returned: {stale}")


# -- 2. memory over update cycles ------------------------------------------------------------------------------------
def cycles(args) -> None:
    models = [mlp(args.cycle_mb, seed, hidden=512) for seed in (0, 1)]
    x = np.random.default_rng(0).uniform(0, 5, (1, FEATURES)).astype(np.float32)
    rss, p50s, update_ms = [], [], []
    with tempfile.TemporaryDirectory(prefix="mf-cycles-") as tmp:
        with ModelForge(database_url=f"sqlite:///{tmp}/registry.db", cache_dir=f"{tmp}/cache", serving=True) as mf:
            mf.register("m", models[0])
            for i in range(args.cycles):
                t0 = time.perf_counter()
                mf.update("m", models[(i + 1) % 2])
                update_ms.append((time.perf_counter() - t0) * 1000)
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    mf.predict("m", x, use_cache=False)
                    times.append((time.perf_counter() - t0) * 1e6)
                p50s.append(statistics.median(times))
                rss.append(process_rss() / MB)
            sessions = len(mf.engine.loaded())
    print(f"\nmodel: {len(models[0]) / MB:.1f} MB; {args.cycles} update cycles of {args.requests} requests each "
          f"(batch 1, cache off, in process)")
    print(f"{'cycle':>7}{'RSS MB':>9}{'p50 µs':>9}{'update ms':>11}")
    marks = sorted({1, 10, 100, args.cycles} & set(range(1, args.cycles + 1)))
    for c in marks:
        print(f"{c:>7}{rss[c - 1]:>9.1f}{p50s[c - 1]:>9.1f}{update_ms[c - 1]:>11.1f}")
    tail = max(1, args.cycles // 10)
    print(f"RSS: max {max(rss):.1f} MB; last {tail} cycles' mean {statistics.mean(rss[-tail:]):.1f} MB vs cycles "
          f"{tail}..{2 * tail}'s {statistics.mean(rss[tail:2 * tail] or rss[:tail]):.1f} MB; sessions loaded at the "
          f"end: {sessions}")
    first, last = statistics.median(p50s[:tail]), statistics.median(p50s[-tail:])
    print(f"per-request p50: first {tail} cycles {first:.1f} µs, last {tail} {last:.1f} µs (x{last / first:.2f})")
    plot(rss, p50s, args.plot)


def plot(rss: list[float], p50s: list[float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles_ = range(1, len(rss) + 1)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot(cycles_, rss, color="tab:blue", label="process RSS (MB)")
    ax.set_xlabel("update cycle")
    ax.set_ylabel("RSS (MB)", color="tab:blue")
    ax.set_ylim(0, max(rss) * 1.15)
    right = ax.twinx()
    right.plot(cycles_, p50s, color="tab:orange", alpha=0.6, linewidth=0.8, label="per-request p50 (µs)")
    right.set_ylabel("per-request p50 (µs)", color="tab:orange")
    right.set_ylim(0, max(p50s) * 1.15)
    ax.set_title("ModelForge: RSS and per-request cost over update cycles")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start an isolated one)")
    parser.add_argument("--token", default="")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--model-mb", type=float, default=50.0)
    parser.add_argument("--baseline-s", type=float, default=20.0)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--cycle-mb", type=float, default=4.0)
    parser.add_argument("--requests", type=int, default=50, help="timed predictions per cycle")
    parser.add_argument("--plot", default="docs/bench_updates_rss.png")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-cycles", action="store_true")
    args = parser.parse_args()
    if not args.skip_http:
        if args.url:
            under_load(args.url, args.token, args)
        else:
            with jupyter_server([]) as (url, token):
                under_load(url, token, args)
    if not args.skip_cycles:
        cycles(args)


if __name__ == "__main__":
    main()
