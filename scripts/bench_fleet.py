"""The shared services' ceilings for batch scoring, measured on this machine: what a deployment of many Celery
workers saturates first (README "Deployment").

- Redis: SET and GET of one 10,000-row chunk as ``mf.score`` stores it (NumPy bytes of float32 [10000, 30], the
  100-tree forest's rows: 1.2 MB) and of its results (int64 labels and float32 [10000, 2] probabilities, 160 KB),
  one client, sequential (a chunk's trip: the submitter SETs, a worker GETs, the worker SETs its results, the
  submitter GETs them).
- The broker: Celery tasks that do nothing, JSON, acknowledged late as ``score_chunk`` is: published from one client,
  then drained by one ``celery worker --pool prefork`` (``-c 1`` and ``-c 2``) started on the backlog. This module is
  also that worker's app (``-A bench_fleet``).

    .venv/bin/python scripts/bench_fleet.py [--redis URL] [--broker URL]     # ~15 s

Every key and queue it makes is its own (``mf-bench-fleet-*``) and deleted after.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

QUEUE = os.environ.get("MF_BENCH_FLEET_QUEUE", "mf-bench-fleet")
COUNTER = f"{QUEUE}:done"
app = Celery("bench_fleet", broker=os.environ.get("MF_BENCH_FLEET_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(task_serializer="json", accept_content=["json"], task_acks_late=True, task_ignore_result=True,
                task_default_queue=QUEUE, worker_hijack_root_logger=False)
_redis = None


@app.task(name="bench_fleet.noop")
def noop(i: int) -> None:
    """Count itself done in Redis: nothing else, so the drain rate is the broker's and Celery's own."""
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["MF_BENCH_FLEET_REDIS"])
    _redis.incr(COUNTER)


def npy(array) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def redis_rates(client, key: str, value: bytes, n: int) -> tuple[float, float]:
    """(SETs/s, GETs/s) of ``value`` under ``key``, ``n`` of each, sequential."""
    start = time.perf_counter()
    for _ in range(n):
        client.set(key, value, ex=60)
    mid = time.perf_counter()
    for _ in range(n):
        client.get(key)
    end = time.perf_counter()
    client.delete(key)
    return n / (mid - start), n / (end - mid)


def wait_for(client: Any, count: int, worker: subprocess.Popen) -> None:
    """Until ``count`` tasks ran; ``RuntimeError`` with the worker's last error line if it exits first."""
    while int(client.get(COUNTER) or 0) < count:
        if worker.poll() is not None:
            last = (worker.stderr.read() or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"the benchmark's worker exited with {worker.returncode}: {last[0][:300]}")
        time.sleep(0.005)


def drain_rate(client, tasks: int, concurrency: int, env: dict) -> tuple[float, float]:
    """(tasks/s published by one client, tasks/s a fresh prefork worker of ``concurrency`` drains)."""
    client.delete(COUNTER)
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(tasks):
            noop.apply_async((i,), producer=producer)
    published = tasks / (time.perf_counter() - start)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_fleet", "worker", "-Q", QUEUE, "-n", f"{QUEUE}@%h", "--pool",
         "prefork", "-c", str(concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat", "-l",
         "warning"],  # a node name of its own: another worker on this host (celery@host) would lock it out
        cwd=Path(__file__).parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        warm = tasks // 10  # the clock starts once the pool runs
        wait_for(client, warm, worker)
        t0, done0 = time.perf_counter(), int(client.get(COUNTER))
        wait_for(client, tasks, worker)
        return published, (tasks - done0) / (time.perf_counter() - t0)
    finally:
        worker.terminate()
        worker.wait(30)
        client.delete(COUNTER)


def main() -> None:
    import numpy as np
    import redis

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--tasks", type=int, default=3_000)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    chunk = npy(rng.normal(size=(10_000, 30)).astype(np.float32))
    results = npy(rng.integers(0, 2, 10_000)) + npy(rng.random((10_000, 2), np.float32))
    client = redis.Redis.from_url(args.redis)
    key = f"mf-bench-fleet-{uuid.uuid4().hex[:8]}"
    in_set, in_get = redis_rates(client, key, chunk, 200)
    out_set, out_get = redis_rates(client, key, results, 500)
    trip = 1 / (1 / in_set + 1 / in_get + 1 / out_set + 1 / out_get)  # one client doing a chunk's four calls

    queue = f"mf-bench-fleet-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "MF_BENCH_FLEET_QUEUE": queue, "MF_BENCH_FLEET_BROKER": args.broker,
           "MF_BENCH_FLEET_REDIS": args.redis}
    os.environ.update(env)
    global QUEUE, COUNTER
    QUEUE, COUNTER = queue, f"{queue}:done"
    app.conf.update(broker_url=args.broker, task_default_queue=queue)
    try:
        drains = {c: drain_rate(client, args.tasks, c, env) for c in (1, 2)}
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
            conn.default_channel.exchange_delete(queue)  # declared with the queue: it would stay on the broker
        app.close()
        client.close()

    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}\n")
    print(f"Redis, one client: a 10,000-row chunk ({len(chunk) / 1e6:.2f} MB) SET {in_set:,.0f}/s, GET {in_get:,.0f}/s"
          f" ({len(chunk) * in_get / 1e6:,.0f} MB/s); its results ({len(results) / 1e3:.0f} KB) SET {out_set:,.0f}/s,"
          f" GET {out_get:,.0f}/s; a chunk's four calls: {trip:,.0f} chunks/s")
    for c, (published, drained) in drains.items():
        print(f"Broker, trivial tasks: one client publishes {published:,.0f}/s; a prefork worker -c {c} drains"
              f" {drained:,.0f}/s")


if __name__ == "__main__":
    main()
