"""Measure ``POST <base_url>modelforge/predict`` over HTTP: p50/p95/p99 latency (ms) and throughput per scenario.

Scenarios: batch sizes x concurrency x cache (hit: the same body again; miss: ``"use_cache": false``). Each client
thread keeps one ``http.client`` keep-alive connection and sends requests back to back for ``--seconds``; latencies
are timed and summarized by ``modelforge_jupyter.bench`` (``timed``, ``summarize``), as ``%mf_bench --http`` does.

    .venv/bin/python scripts/bench_http.py --start-server           # an isolated jupyter server, embedded backend
    .venv/bin/python scripts/bench_http.py --url http://127.0.0.1:8888 --token "$TOKEN"   # a running server
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from modelforge_jupyter.bench import summarize, timed

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "modelforge_jupyter" / "sample_models" / "breast_cancer_rf.onnx"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8888", help="server URL including its base_url")
    p.add_argument("--token", default=os.environ.get("TOKEN", ""), help="the server's token (default $TOKEN)")
    p.add_argument("--start-server", action="store_true", help="start an isolated jupyter server (embedded backend)")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument of the started server, e.g. "
                   "--server-arg=--ModelForgeApp.max_workers=2 (repeatable)")
    p.add_argument("--model", type=Path, default=MODEL, help="ONNX file with one float32 input [batch, features]")
    p.add_argument("--name", default="breast_cancer_rf")
    p.add_argument("--batch", default="1,1000", help="comma-separated batch sizes")
    p.add_argument("--concurrency", default="1,16", help="comma-separated client thread counts")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each scenario")
    args = p.parse_args()

    with (jupyter_server(args.server_arg) if args.start_server else nullserver(args.url, args.token)) as (url, token):
        bench(url, token, args)


def bench(url: str, token: str, args: argparse.Namespace) -> None:
    target = urllib.parse.urlsplit(url)
    base = target.path.rstrip("/") + "/modelforge/"
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    status, body = request(conn, "PUT", base + f"models/{args.name}", args.model.read_bytes(),
                           {**headers, "Content-Type": "application/octet-stream"})
    assert status in (200, 201), (status, body)
    record = json.loads(body)
    (spec,) = record["inputs"]
    features = spec["shape"][1]
    _, health = request(conn, "GET", base + "health", None, {})
    print(f"# {args.name} v{record['version']} ({spec['name']}: {spec['dtype']} {spec['shape']})")
    print(f"# health {health.decode()}")
    print("| batch | concurrency | cache | requests | p50 ms | p95 ms | p99 ms | req/s | predictions/s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for batch in map(int, args.batch.split(",")):
        X = rng.normal(size=(batch, features)).astype(np.float32).tolist()
        for cache in ("hit", "miss"):
            payload = {"model_id": args.name, "input_data": {spec["name"]: X}, "use_cache": cache == "hit"}
            body = json.dumps(payload).encode()
            _, first = request(conn, "POST", base + "predict", body, headers)  # warm: session loaded, cache filled
            assert json.loads(first)["model_version"] == record["version"], first
            _, again = request(conn, "POST", base + "predict", body, headers)
            assert json.loads(again)["cached"] is (cache == "hit"), again[:200]
            for concurrency in map(int, args.concurrency.split(",")):
                lat, elapsed = run(target, base + "predict", body, headers, concurrency, args.seconds)
                # summarize's throughput assumes one client; with several, it is the rows answered per wall second
                row = replace(summarize(args.name, batch, f"http_{cache}", lat, None),
                              predictions_per_s=len(lat) * batch / elapsed)
                print(
                    f"| {batch} | {concurrency} | {cache} | {len(lat)} | {row.p50_ms:.2f} | {row.p95_ms:.2f} "
                    f"| {row.p99_ms:.2f} | {len(lat) / elapsed:.0f} | {row.predictions_per_s:.0f} |",
                    flush=True,
                )
    conn.close()


def run(target, path: str, body: bytes, headers: dict, concurrency: int, seconds: float) -> tuple[list[float], float]:
    """Latencies (ms) of every request sent by ``concurrency`` keep-alive clients within ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start_line = threading.Barrier(concurrency + 1)

    def client(out: list[float]) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        conn.connect()

        def send(i: int) -> None:
            status, data = request(conn, "POST", path, body, headers)
            assert status == 200, data[:200]

        start_line.wait()
        out.extend(timed(send, seconds, sys.maxsize, warmup=0, min_iterations=1))
        conn.close()

    threads = [threading.Thread(target=client, args=(out,)) for out in latencies]
    for t in threads:
        t.start()
    start_line.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return [x for out in latencies for x in out], time.perf_counter() - start


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict):
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


@contextmanager
def nullserver(url: str, token: str):
    yield url, token


@contextmanager
def jupyter_server(extra_args: list[str]):
    """A ``jupyter server`` with its own Jupyter dirs and an embedded ModelForge in a temporary directory."""
    token = os.urandom(16).hex()
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        env.update(JUPYTER_CONFIG_DIR=f"{tmp}/config", JUPYTER_DATA_DIR=f"{tmp}/data",
                   JUPYTER_RUNTIME_DIR=f"{tmp}/runtime", MODELFORGE_DATA_DIR=f"{tmp}/modelforge")
        cmd = [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root", f"--ServerApp.port={port}",
               "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={tmp}", *extra_args]
        with open(f"{tmp}/server.log", "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}/"
                for _ in range(600):
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    try:
                        if request(conn, "GET", "/modelforge/health", None, {})[0] == 200:
                            break
                    except OSError:
                        if proc.poll() is not None:
                            sys.exit(Path(f"{tmp}/server.log").read_text())
                        time.sleep(0.1)
                    finally:
                        conn.close()
                yield url, token
            finally:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
