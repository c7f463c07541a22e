"""Batch scoring throughput: ``mf.score`` with 1 and 2 worker processes beside the in-kernel ``mf.predict`` loop over
the same chunks, and raw ONNX Runtime's loop, in one run.

The model is the 100-tree forest sample (``breast_cancer_rf.onnx``, 30 float32 features), the rows the breast cancer
data set resampled with noise (so trees take their real paths), every session with ``intra_op_num_threads=1``, no
prediction cache. Rows/s are over the whole job: submit to the last output gathered in row order (the chunks' trips
to the workers and back included), with the pool already started (a first, cold job of a few chunks per process,
timed apart: the time from submit to its first finished chunk, which builds a ModelForge and a session).
``--celery BROKER`` adds the same jobs on real Celery workers (prefork, ``-c`` 1 then 2; a SQLite registry; the rows
as Parquet files both sides read by path (float columns without dictionary encoding, README), then as the array, its
chunks through ``--redis``; results through Redis).

    .venv/bin/python scripts/bench_score.py                      # 2 M rows, chunks of 10,000 (~1-2 min)
    .venv/bin/python scripts/bench_score.py --rows 200000 --celery amqp://guest:guest@127.0.0.1:5672//

Read the ratios: the box is shared and its absolute figures move from run to run (``--repeat N`` keeps each figure's
fastest of N; the load average printed says how busy the box was). Every job's Redis keys are deleted once it is
over (``ScoreJob.forget``). ``submit CPU`` is this process's CPU over a job, in % of one core: waiting, polling
and gathering the outputs take it from the workers' cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelforge_jupyter import ModelForge  # noqa: E402
from modelforge_jupyter.core.samples import sample_path  # noqa: E402

MODEL = "bench_rf"


def rows_of(n: int) -> np.ndarray:
    """``n`` rows like the breast cancer data set's: its rows resampled, each feature moved by 5% of its spread."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer().data
    rng = np.random.default_rng(0)
    x = data[rng.integers(0, len(data), n)] + rng.normal(0, 0.05, (n, data.shape[1])) * data.std(axis=0)
    return x.astype(np.float32)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def score_job(mf: ModelForge, data, chunk_rows: int, workers: int | None, output=None,
              repeat: int = 1) -> tuple[float, float, float]:
    """The fastest of ``repeat`` jobs: (seconds from submit to the outputs gathered, seconds to the first finished
    chunk, CPU seconds this process spent over the job). Each job's keys are deleted from Redis once it is over
    (``forget``)."""
    best = None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        job = mf.score(MODEL, data, chunk_rows=chunk_rows, workers=workers, output=output)
        try:
            out = job.result()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            assert output is not None or len(out["label"]) == job.spec.rows
            first = job.progress().first_progress_s or 0.0
        finally:
            job.cancel()
            job.wait(60)
            job.forget()
        if best is None or seconds < best[0]:
            best = (seconds, first, cpu)
    return best


def best_of(repeat: int, fn) -> float:
    """The fastest of ``repeat`` timings of ``fn``."""
    return min(timed(fn) for _ in range(repeat))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--chunk-rows", type=int, default=10_000)
    p.add_argument("--workers", default="1,2", help="worker processes to measure, comma-separated")
    p.add_argument("--celery", metavar="BROKER", default=None, help="also on Celery workers on this broker")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for --celery's job state")
    p.add_argument("--repeat", type=int, default=1, help="time each figure this many times, keep the fastest")
    args = p.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    x = rows_of(args.rows)
    chunks = [(a, min(a + args.chunk_rows, args.rows)) for a in range(0, args.rows, args.chunk_rows)]
    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    settings = {"database_url": f"sqlite:///{work / 'registry.db'}", "redis_url": "", "celery_broker_url": "",
                "cache_dir": str(work / "cache"), "intra_op_num_threads": 1}
    rows: list[tuple] = []  # (what, family, seconds, first progress s, this process's CPU s)
    with ModelForge(**settings) as mf:
        mf.register(MODEL, sample_path("breast_cancer_rf.onnx"))
        session = mf.raw_session(MODEL)
        session.run(None, {"float_input": x[:10]})
        rows.append(("raw ONNX Runtime loop (1 thread)", "", best_of(args.repeat, lambda: [
            session.run(None, {"float_input": x[a:b]}) for a, b in chunks]), None, None))
        mf.predict(MODEL, x[:10], use_cache=False)
        rows.append(("in-kernel mf.predict loop", "", best_of(args.repeat, lambda: [
            mf.predict(MODEL, x[a:b], use_cache=False) for a, b in chunks]), None, None))
        for n in workers:
            _, cold_first, _ = score_job(mf, x[: args.chunk_rows * n], args.chunk_rows, n)  # starts the pool
            seconds, first, cpu = score_job(mf, x, args.chunk_rows, n, repeat=args.repeat)
            rows.append((f"mf.score, local pool, {n} process{'es' if n > 1 else ''}", "local", seconds, first, cpu))
            print(f"  (pool of {n}: a cold job's first chunk after {cold_first:.2f} s)", file=sys.stderr)
    if args.celery:
        rows += celery_rows(args, x, workers, work, settings)
    report(rows, args.rows, args.chunk_rows)


def celery_rows(args, x: np.ndarray, workers: list[int], work: Path, settings: dict) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = work / "rows"
    files.mkdir()
    step = max(args.chunk_rows, len(x) // 4 // args.chunk_rows * args.chunk_rows)
    for i, a in enumerate(range(0, len(x), step)):  # a few files, row groups of chunk_rows: chunks read by path
        table = pa.table({f"f{j}": x[a:a + step, j] for j in range(x.shape[1])})
        pq.write_table(table, files / f"part-{i:03d}.parquet", row_group_size=args.chunk_rows, use_dictionary=False)
    warm = work / "warm.parquet"  # a cold job: enough chunks for every pool process to build its ModelForge
    warm_rows = min(len(x), args.chunk_rows * 4 * max(workers))
    pq.write_table(pa.table({f"f{j}": x[:warm_rows, j] for j in range(x.shape[1])}), warm,
                   row_group_size=args.chunk_rows, use_dictionary=False)
    prefix, queue = f"bench-{uuid.uuid4().hex[:8]}", f"bench-score-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DATABASE_URL": settings["database_url"], "REDIS_URL": args.redis, "CACHE_KEY_PREFIX": prefix,
           "CELERY_BROKER_URL": args.celery, "MODELFORGE_CELERY_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    remote = {**settings, "redis_url": args.redis, "cache_key_prefix": prefix, "celery_broker_url": args.celery,
              "celery_queue": queue}
    rows = []
    with ModelForge(**remote) as mf:
        for n in workers:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "modelforge_jupyter.tasks", "worker", "-Q", queue, "-n",
                 f"{queue}-{n}@localhost", "--pool", "prefork", "-c", str(n), "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-l", os.environ.get("BENCH_CELERY_LOG", "warning")], env=env)
            try:
                _, cold_first, _ = score_job(mf, warm, args.chunk_rows, None)
                seconds, first, cpu = score_job(mf, files, args.chunk_rows, None, repeat=args.repeat)
                rows.append((f"mf.score, Celery prefork -c {n} (Parquet by path)", "celery", seconds, first, cpu))
                seconds, first, cpu = score_job(mf, x, args.chunk_rows, None, repeat=args.repeat)
                rows.append((f"mf.score, Celery prefork -c {n} (array via Redis)", "celery-redis", seconds, first,
                             cpu))
                print(f"  (Celery -c {n}: a cold job's first chunk after {cold_first:.2f} s)", file=sys.stderr)
            finally:
                worker.terminate()
                worker.wait(60)
    return rows


def report(rows: list, n: int, chunk_rows: int) -> None:
    """Print rows/s, the ratio to the in-kernel loop, to the same kind of job's first (fewest processes), the time
    from submit to the first finished chunk, and the CPU this (submitting) process used over the job, in % of one
    core: what it takes from the workers' cores on a small box."""
    loop = next(r[2] for r in rows if r[0].startswith("in-kernel"))
    first_of = {}
    for _, family, seconds, *_ in rows:
        first_of.setdefault(family, seconds)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{n:,} rows, chunks of {chunk_rows:,}, breast_cancer_rf (100 trees), intra_op_num_threads=1, "
          f"{os.cpu_count()} CPUs, load average {load}\n")
    print(f"{'':<52} {'rows/s':>10} {'x loop':>7} {'x first':>8} {'1st chunk':>9} {'submit CPU':>10}")
    for what, family, seconds, first, cpu in rows:
        vs_first = f"{first_of[family] / seconds:.2f}" if family else ""
        first_s = "" if first is None else f"{first:.2f} s"
        cpu_s = "" if cpu is None else f"{100 * cpu / seconds:.0f}%"
        print(f"{what:<52} {n / seconds:>10,.0f} {loop / seconds:>7.2f} {vs_first:>8} {first_s:>9} {cpu_s:>10}")


if __name__ == "__main__":
    main()
