"""Issue 12's measurements in one run: the Open Inference Protocol (KServe V2) on the Jupyter server beside raw
ONNX Runtime and ModelForge's own JSON endpoint, on the forest (breast_cancer_rf.onnx) and iris, 1 intra-op thread
everywhere (the server's ``MODELFORGE_INTRA_OP_NUM_THREADS=1``, the raw session's ``ModelForge.raw_session``
SessionOptions, which are the engine's).

Per model and batch size (default 1 and 1000), cache off everywhere (V2's ``use_cache`` request parameter, the JSON
endpoint's ``"use_cache": false``), one keep-alive connection, each call's latency timed (p50, p99) and the rows per
second over all timed calls:

- ``raw ORT``: ``InferenceSession.run`` in this process on the same arrays;
- ``V2 binary (tritonclient)``: ``tritonclient.http.InferenceServerClient.infer`` with binary inputs and outputs
  (its defaults), outputs read with ``as_numpy``; ``V2 JSON (tritonclient)``: the same with ``binary_data=False``
  for inputs and outputs;
- ``V2 binary (ModelForgeClient)``: the kernel's client (``http.client``), NumPy in and out;
- ``MF JSON``: ``POST modelforge/predict`` through the kernel's client, body encoded once, answer decoded (orjson).

The paths are interleaved (5 slices each, in turn) so a neighbour's load on a shared box hits them alike.
``pred/s`` is rows over all timed calls; ``pred/s @p50`` is batch / p50, robust to a noisy neighbour; the ratios
(over raw ORT, over MF JSON) are on ``pred/s @p50``. Then perf_analyzer's concurrency mode at 1 and 16 (that many
requests always in flight), batch 1, cache off: ``async_infer`` (tritonclient's, which yields with
``gevent.sleep(0.01)`` after sending each request: at most ~100 requests/s from one client, whatever the server), and
N threads each with its own client calling ``infer``: requests/s, p50, p99.

    .venv/bin/python scripts/bench_v2.py                       # starts an isolated jupyter server (embedded)
    .venv/bin/python scripts/bench_v2.py --url http://127.0.0.1:8888/ --token "$TOKEN"
    .venv/bin/python scripts/bench_v2.py --serve               # the same against `modelforge serve` (uvicorn)
    .venv/bin/python scripts/bench_v2.py --asgi                # the server's side alone, no socket
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from pathlib import Path

os.environ.setdefault("MODELFORGE_INTRA_OP_NUM_THREADS", "1")  # the server started below inherits it

import numpy as np  # noqa: E402
import orjson  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import jupyter_server  # noqa: E402

from modelforge_jupyter import ModelForge  # noqa: E402
from modelforge_jupyter.cli.bench import summarize, timed  # noqa: E402
from modelforge_jupyter.core.client import ModelForgeClient, ServerUnreachableError  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "modelforge_jupyter" / "sample_models"
ROUNDS = 5
MODELS = {"breast_cancer_rf": SAMPLES / "breast_cancer_rf.onnx", "iris": SAMPLES / "iris.onnx"}


@contextmanager
def modelforge_serve():
    """``modelforge serve --workers 1`` on a free port with an embedded registry and disk cache in a temporary
    directory: (url, token)."""
    import socket
    import subprocess

    from modelforge_jupyter.cli.demo import stop_server

    token = os.urandom(16).hex()
    with tempfile.TemporaryDirectory(prefix="mf-serve-") as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFORGE_", "CACHE_"))}
        env.update(DATABASE_URL=f"sqlite:///{tmp}/registry.db", REDIS_URL="", MODELFORGE_CACHE_DIR=f"{tmp}/cache",
                   CELERY_BROKER_URL="", MODELFORGE_INTRA_OP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "modelforge_jupyter.cli.main", "serve", "--port", str(port), "--workers", "1",
               "--token", token]
        with open(f"{tmp}/serve.log", "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}/"
                client = ModelForgeClient(url, token, timeout=5)
                for _ in range(600):
                    try:
                        if client.request("GET", "health/ready")[0] == 200:
                            break
                    except ServerUnreachableError:
                        pass
                    if proc.poll() is not None:
                        sys.exit(Path(f"{tmp}/serve.log").read_text())
                    time.sleep(0.1)
                client.close()
                yield url, token
            finally:
                stop_server(proc, timeout=30)


async def asgi(args) -> None:
    """Print the server's own time per request (µs, best of 3 rounds): ``modelforge serve``'s ``ServeApp`` called
    in this process with the request already in memory, V2 binary infer beside ``POST modelforge/predict``, cache
    off. What is left of a client's latency is the network, the HTTP server's parsing (uvicorn, tornado) and the
    client."""
    import asyncio

    tmp = tempfile.mkdtemp(prefix="mf-asgi-")
    os.environ.update(DATABASE_URL=f"sqlite:///{tmp}/r.db", REDIS_URL="", MODELFORGE_CACHE_DIR=f"{tmp}/c",
                      CELERY_BROKER_URL="")
    from modelforge_jupyter.core.protocol import encode_predict
    from modelforge_jupyter.core.v2_client import encode_infer
    from modelforge_jupyter.serve.app import ServeApp
    from modelforge_jupyter.serve.options import ServeOptions

    with ModelForge() as mf:
        for name, path in MODELS.items():
            mf.register(name, path)
    app = ServeApp(ServeOptions(token="t"))

    async def call(path: str, body: bytes, headers: list) -> None:
        sent, left, done = [], [{"type": "http.request", "body": body, "more_body": False}], asyncio.Event()

        async def receive():
            if left:
                return left.pop()
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
                 "headers": [(b"authorization", b"token t"), *headers]}
        await app(scope, receive, send)
        done.set()
        assert sent[0]["status"] == 200, sent

    await app.startup()
    print("# the server's side alone: modelforge serve's ASGI app in process, µs per request (best of 3), cache off")
    print("| model            | batch | V2 binary µs | MF JSON µs | MF JSON / V2 |\n"
          "|------------------|-------|--------------|------------|--------------|")
    try:
        for name in MODELS:
            for batch in (int(b) for b in args.batch.split(",")):
                x = np.resize(dataset(name), (batch, dataset(name).shape[1]))
                body, length = encode_infer({"float_input": x}, use_cache=False)
                calls = {"v2": (f"/modelforge/v2/models/{name}/infer", body,
                                [(b"inference-header-content-length", str(length).encode())]),
                         "json": ("/modelforge/predict", encode_predict(name, {"float_input": x.tolist()},
                                                                        use_cache=False), [])}
                best = {}
                for _ in range(3):
                    for label, request in calls.items():
                        count = 1000 if batch <= 10 else 50
                        start = time.perf_counter()
                        for _ in range(count):
                            await call(*request)
                        took = (time.perf_counter() - start) / count * 1e6
                        best[label] = min(best.get(label, took), took)
                print(f"| {name:<16} | {batch:>5} | {best['v2']:>12,.0f} | {best['json']:>10,.0f} | "
                      f"{best['json'] / best['v2']:>12.2f} |")
    finally:
        await app.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def dataset(name: str) -> np.ndarray:
    from sklearn.datasets import load_breast_cancer, load_iris

    return (load_breast_cancer() if name == "breast_cancer_rf" else load_iris()).data.astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server's URL, base_url included (default: start one)")
    p.add_argument("--token", default=os.environ.get("TOKEN", ""))
    p.add_argument("--batch", default="1,1000", help="comma-separated batch sizes")
    p.add_argument("--seconds", type=float, default=2.0, help="time per cell")
    p.add_argument("--concurrency", default="1,16", help="async_infer concurrency levels")
    p.add_argument("--asgi", action="store_true", help="only the server's side: `modelforge serve`'s ASGI app called "
                   "in this process (no socket, no client), V2 binary vs ModelForge JSON per request")
    p.add_argument("--serve", action="store_true", help="start `modelforge serve --workers 1` (uvicorn) instead of "
                   "a jupyter server: the same V2 routes behind a lighter HTTP stack")
    args = p.parse_args()
    if args.asgi:
        import asyncio

        asyncio.run(asgi(args))
        return
    if args.url:
        server = nullcontext((args.url, args.token))
    else:
        server = modelforge_serve() if args.serve else jupyter_server([])
    with server as (url, token), tempfile.TemporaryDirectory(prefix="mf-bench-v2-") as tmp:
        with ModelForge(database_url=f"sqlite:///{tmp}/r.db", cache_dir=f"{tmp}/c") as mf:
            run(mf, url, token, args, "modelforge serve --workers 1" if args.serve and not args.url else "jupyter server")


def run(mf, url: str, token: str, args, kind: str) -> None:
    import tritonclient.http as tc

    assert mf.engine.session_options().intra_op_num_threads == 1
    batches = [int(b) for b in args.batch.split(",")]
    client = ModelForgeClient(url, token)
    uploaded = []
    for name, path in MODELS.items():
        try:
            client.model(name)
        except Exception:
            client.save(name, path)
            uploaded.append(name)
    auth = {"Authorization": f"token {token}"}
    triton = tc.InferenceServerClient(url=url.removeprefix("http://").rstrip("/") + "/modelforge")
    print(f"# V2 vs raw ONNX Runtime vs ModelForge JSON; {kind} {url}; {args.seconds} s per cell; cache off; "
          f"1 intra-op thread; Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    head = f"| {'model':<16} | {'batch':>5} | {'path':<28} | {'p50 ms':>8} | {'p99 ms':>8} | {'pred/s':>11} | " \
           f"{'pred/s @p50':>11} | {'x raw':>6} | {'x MF JSON':>9} |"
    print(head + "\n|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    try:
        for name, path in MODELS.items():
            raw = mf.raw_session(path.read_bytes())
            meta = triton.get_model_metadata(name, headers=dict(auth))
            outs = [o["name"] for o in meta["outputs"]]
            for batch in batches:
                x = np.resize(dataset(name), (batch, dataset(name).shape[1]))
                feed = {"float_input": x}
                cells = measure(raw, client, triton, tc, auth, name, feed, outs, batch, args.seconds)
                rows = {label: summarize(name, batch, label, ms, None) for label, ms in cells.items()}
                ort, mfjson = (batch / rows[k].p50_ms * 1000 for k in ("raw ORT", "MF JSON"))
                for label, r in rows.items():
                    at_p50 = batch / r.p50_ms * 1000
                    print(f"| {name:<16} | {batch:>5} | {label:<28} | {r.p50_ms:>8.3f} | {r.p99_ms:>8.3f} | "
                          f"{r.predictions_per_s:>11,.0f} | {at_p50:>11,.0f} | {at_p50 / ort:>6.3f} | "
                          f"{at_p50 / mfjson:>9.2f} |")
        print("\n# tritonclient, batch 1, cache off, perf_analyzer's concurrency mode: async_infer with N requests in "
              "flight; and N threads, each a client calling infer")
        print("| model            | client            | concurrency | requests | req/s   | p50 ms | p99 ms |\n"
              "|------------------|-------------------|-------------|----------|---------|--------|--------|")
        for name in MODELS:
            x = dataset(name)[:1]
            for how, fn in (("async_infer", concurrent), ("infer, N threads", threaded)):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    count, per_s, p50, p99 = fn(tc, url, auth, name, x, concurrency, args.seconds * 2)
                    print(f"| {name:<16} | {how:<17} | {concurrency:>11} | {count:>8} | {per_s:>7,.0f} | {p50:>6.2f} "
                          f"| {p99:>6.2f} |")
    finally:
        triton.close()
        for name in uploaded:
            client.delete(name)
        client.close()


def measure(raw, client, triton, tc, auth, name, feed, outs, batch, seconds) -> dict[str, list[float]]:
    """Each path's latencies (ms) on ``feed``: cache off, same arrays, answers decoded to arrays or JSON."""
    x = feed["float_input"]

    def triton_call(binary: bool):
        item = tc.InferInput("float_input", list(x.shape), "FP32")
        item.set_data_from_numpy(x, binary_data=binary)
        requested = None if binary else [tc.InferRequestedOutput(o, binary_data=False) for o in outs]

        def call(i):
            result = triton.infer(name, [item], outputs=requested, headers=dict(auth), parameters={"use_cache": False})
            return [result.as_numpy(o) for o in outs]
        return call

    body, length = client.infer_body(feed, use_cache=False)
    json_body = client.predict_body(name, feed, use_cache=False)
    want = raw.run(None, feed)[0]
    got = triton_call(True)(0)[0]
    assert np.array_equal(got, want), "V2 binary answer differs from raw ORT"
    assert np.array_equal(client.post_infer(name, body, length).outputs[outs[0]], want)
    assert not client.post_infer(name, body, length).cached
    paths = {
        "raw ORT": lambda i: raw.run(None, feed),
        "V2 binary (tritonclient)": triton_call(True),
        "V2 JSON (tritonclient)": triton_call(False),
        "V2 binary (ModelForgeClient)": lambda i: client.post_infer(name, body, length).outputs,
        "MF JSON": lambda i: orjson.loads(client.request("POST", "predict", json_body)[1]),
    }
    # Interleaved: ROUNDS slices of each path in turn, so a neighbour's load on a shared box hits every path alike.
    n = 20000 if batch <= 10 else 2000
    out: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(ROUNDS):
        for label, fn in paths.items():
            out[label] += timed(fn, seconds / ROUNDS, n // ROUNDS, warmup=3)
    return out


def concurrent(tc, url, auth, name, x, concurrency, seconds) -> tuple[int, float, float, float]:
    """(requests, requests/s, p50 ms, p99 ms) with ``concurrency`` ``async_infer`` requests always in flight."""
    client = tc.InferenceServerClient(url=url.removeprefix("http://").rstrip("/") + "/modelforge",
                                      concurrency=concurrency)
    item = tc.InferInput("float_input", list(x.shape), "FP32")
    item.set_data_from_numpy(x)

    def send():
        return time.perf_counter(), client.async_infer(name, [item], headers=dict(auth),
                                                       parameters={"use_cache": False})
    try:
        pending = deque(send() for _ in range(concurrency))
        for _ in range(concurrency * 5):  # warm-up
            pending.popleft()[1].get_result()
            pending.append(send())
        latencies, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            sent, request = pending.popleft()
            request.get_result().as_numpy("label" if "rf" in name else "output_label")
            latencies.append((time.perf_counter() - sent) * 1000)
            pending.append(send())
        elapsed = time.perf_counter() - start
        for _, request in pending:
            request.get_result()
    finally:
        client.close()
    p50, p99 = np.percentile(latencies, [50, 99])
    return len(latencies), len(latencies) / elapsed, float(p50), float(p99)


def threaded(tc, url, auth, name, x, concurrency, seconds) -> tuple[int, float, float, float]:
    """(requests, requests/s, p50 ms, p99 ms) with ``concurrency`` threads, each its own client calling ``infer``
    back to back (what perf_analyzer's C++ workers do, without async_infer's ``gevent.sleep(0.01)``)."""
    import threading

    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start_at = time.perf_counter() + 1.0
    stop_at = start_at + seconds

    def worker(out: list[float]) -> None:
        client = tc.InferenceServerClient(url=url.removeprefix("http://").rstrip("/") + "/modelforge")
        item = tc.InferInput("float_input", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        try:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                client.infer(name, [item], headers=dict(auth), parameters={"use_cache": False})
                if t >= start_at:
                    out.append((time.perf_counter() - t) * 1000)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(out,)) for out in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [ms for out in latencies for ms in out]
    p50, p99 = np.percentile(flat, [50, 99])
    return len(flat), len(flat) / seconds, float(p50), float(p99)


if __name__ == "__main__":
    main()
