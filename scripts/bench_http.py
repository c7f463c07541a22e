"""Measure ``POST <base_url>modelforge/predict`` over HTTP: p50/p95/p99 latency (ms) and throughput per scenario.

Scenarios: batch sizes x concurrency x cache (hit: the same body again; miss: ``"use_cache": false``). Each client
thread keeps one keep-alive connection and sends requests back to back for ``--seconds``; latencies are timed and
summarized by ``modelforge_jupyter.cli.bench`` (``timed``, ``summarize``), as ``%mf_bench --http`` does.

The default client (``Connection``) sends each request in one write and reads the answer by its Content-Length.
``http.client`` (``--client http.client``) sends the body in a second TCP segment and parses the answer's headers
with the ``email`` package: on this 2-core box, +90 µs p50 per request against a bare tornado handler (204 vs 113
µs), +120 µs against this server (0.63 vs 0.51 ms): the hand-rolled client keeps the figure the server's own.

    .venv/bin/python scripts/bench_http.py --start-server           # an isolated jupyter server, embedded backend
    .venv/bin/python scripts/bench_http.py --url http://127.0.0.1:8888 --token "$TOKEN"   # a running server
    .venv/bin/python scripts/bench_http.py --start-server --mlp 4096x4 --name mlp --batch 1 --concurrency 1,32 \
        --cache miss --server-arg=--ModelForgeApp.dynamic_batching=true --server-arg=--ModelForgeApp.max_workers=32
"""

from __future__ import annotations

import argparse
import http.client
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
import orjson

from modelforge_jupyter.cli.bench import summarize, timed
from modelforge_jupyter.cli.demo import stop_server

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
    p.add_argument("--mlp", type=mlp_shape, default=None, metavar="HIDDENxLAYERS", help="instead of --model, build the wide MLP "
                   "of modelforge_jupyter.core.samples.build_wide_mlp, e.g. 4096x4 (196 MB, ~5 ms per batch-1 run); "
                   "a started server then accepts its upload (max_body_size)")
    p.add_argument("--name", default="breast_cancer_rf")
    p.add_argument("--batch", default="1,1000", help="comma-separated batch sizes")
    p.add_argument("--concurrency", default="1,16", help="comma-separated client thread counts")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each scenario")
    p.add_argument("--cache", default="hit,miss", help="comma-separated: hit (the same body again), miss "
                   "(use_cache false: every request runs the model)")
    p.add_argument("--floor", action="store_true", help="first measure Jupyter's own GET api/status (token auth, "
                   "same client): the server's per-request floor that every /modelforge request pays too")
    p.add_argument("--client", choices=("socket", "http.client"), default="socket",
                   help="the timed clients' HTTP implementation (see above); default socket")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mf-mlp-") as tmp:  # the built MLP (197 MB at 4096x4) goes with it
        if args.mlp:
            from modelforge_jupyter.core.samples import build_wide_mlp

            hidden, layers = args.mlp
            args.model = Path(tmp) / f"mlp{hidden}x{layers}.onnx"
            args.model.write_bytes(build_wide_mlp(hidden=hidden, layers=layers))
            args.server_arg.append(f"--ModelForgeApp.max_body_size={args.model.stat().st_size + (1 << 20)}")
        server = jupyter_server(args.server_arg) if args.start_server else nullserver(args.url, args.token)
        with server as (url, token):
            bench(url, token, args)


def mlp_shape(text: str) -> tuple[int, int]:
    """``--mlp HIDDENxLAYERS``, e.g. 4096x4, as (hidden, layers)."""
    try:
        hidden, layers = (int(v) for v in text.lower().split("x"))
    except ValueError:
        hidden = layers = 0
    if hidden < 1 or layers < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: HIDDENxLAYERS, two whole numbers >= 1, e.g. 4096x4")
    return hidden, layers


def bench(url: str, token: str, args: argparse.Namespace) -> None:
    target = urllib.parse.urlsplit(url)
    base = target.path.rstrip("/") + "/modelforge/"
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    conn = Connection(target.hostname, target.port)
    status, body = conn.request("PUT", base + f"models/{args.name}", args.model.read_bytes(),
                           {**headers, "Content-Type": "application/octet-stream"})
    assert status in (200, 201), (status, body)
    record = orjson.loads(body)
    (spec,) = record["inputs"]
    features = spec["shape"][1]
    _, health = conn.request("GET", base + "health", None, {})
    print(f"# {args.name} v{record['version']} ({spec['name']}: {spec['dtype']} {spec['shape']})")
    print(f"# health {health.decode()}")
    if args.floor:
        status_path = target.path.rstrip("/") + "/api/status"
        lat, _ = run(target, status_path, None, headers, 1, args.seconds, args.client, "GET")
        row = summarize("api/status", 1, "floor", lat, None)
        print(f"# floor: GET {status_path} (Jupyter's own handler, token auth), {len(lat)} requests: "
              f"p50 {row.p50_ms:.3f} ms, p99 {row.p99_ms:.3f} ms")
    print("| batch | concurrency | cache | requests | p50 ms | p95 ms | p99 ms | req/s | predictions/s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for batch in map(int, args.batch.split(",")):
        X = rng.normal(size=(batch, features)).astype(np.float32).tolist()
        warm = orjson.dumps({"model_id": args.name, "input_data": {spec["name"]: X}, "use_cache": False})
        assert conn.request("POST", base + "predict", warm, headers)[0] == 200  # the session loaded
        for cache in args.cache.split(","):
            payload = {"model_id": args.name, "input_data": {spec["name"]: X}, "use_cache": cache == "hit"}
            body = orjson.dumps(payload)
            _, first = conn.request("POST", base + "predict", body, headers)  # warm: cache filled
            assert orjson.loads(first)["model_version"] == record["version"], first
            _, again = conn.request("POST", base + "predict", body, headers)
            assert orjson.loads(again)["cached"] is (cache == "hit"), again[:200]
            for concurrency in map(int, args.concurrency.split(",")):
                lat, elapsed = run(target, base + "predict", body, headers, concurrency, args.seconds, args.client)
                # summarize's throughput assumes one client; with several, it is the rows answered per wall second
                row = replace(summarize(args.name, batch, f"http_{cache}", lat, None),
                              predictions_per_s=len(lat) * batch / elapsed)
                print(
                    f"| {batch} | {concurrency} | {cache} | {len(lat)} | {row.p50_ms:.2f} | {row.p95_ms:.2f} "
                    f"| {row.p99_ms:.2f} | {len(lat) / elapsed:.0f} | {row.predictions_per_s:.0f} |",
                    flush=True,
                )
    conn.close()


def run(target, path: str, body: bytes | None, headers: dict, concurrency: int, seconds: float,
        client: str = "socket", method: str = "POST") -> tuple[list[float], float]:
    """Latencies (ms) of every request sent by ``concurrency`` keep-alive clients within ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start_line = threading.Barrier(concurrency + 1)

    def client_thread(out: list[float]) -> None:
        if client == "http.client":
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            conn.connect()

            def send(i: int) -> None:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                assert r.status == 200, data[:200]
        else:
            conn = Connection(target.hostname, target.port)
            message = conn.message(method, path, body, headers)

            def send(i: int) -> None:
                conn.sock.sendall(message)
                status, data = conn.response()
                assert status == 200, data[:200]

        start_line.wait()
        out.extend(timed(send, seconds, sys.maxsize, warmup=0, min_iterations=1))
        conn.close()

    threads = [threading.Thread(target=client_thread, args=(out,)) for out in latencies]
    for t in threads:
        t.start()
    start_line.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return [x for out in latencies for x in out], time.perf_counter() - start


class Connection:
    """One keep-alive HTTP/1.1 connection: a request goes out in one write (head and body), the answer is read by its
    Content-Length (the server's JSON answers all have one)."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def message(self, method: str, path: str, body: bytes | None, headers: dict) -> bytes:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", *(f"{k}: {v}" for k, v in headers.items())]
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
        self.sock.sendall(self.message(method, path, body, headers))
        return self.response()

    def response(self) -> tuple[int, bytes]:
        """(status, body) of the next answer."""
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv()
        head, buffer = buffer[:end].decode("latin-1"), buffer[end + 4:]
        status = int(head[9:12])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding":
                raise NotImplementedError(f"Transfer-Encoding: {value.strip()}")
        while len(buffer) < length:
            buffer += self._recv()
        self._buffer = buffer[length:]
        return status, buffer[:length]

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


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
                    try:
                        conn = Connection("127.0.0.1", port, timeout=5)
                        try:
                            if conn.request("GET", "/modelforge/health", None, {})[0] == 200:
                                break
                        finally:
                            conn.close()
                    except OSError:
                        if proc.poll() is not None:
                            sys.exit(Path(f"{tmp}/server.log").read_text())
                        time.sleep(0.1)
                yield url, token
            finally:
                stop_server(proc, timeout=30)


if __name__ == "__main__":
    main()
