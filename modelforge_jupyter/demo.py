"""The main job on embedded defaults: register the sample models, predict, show the cache hit, update a model, then
start a Jupyter server with the extension and print its URL, token and a working curl line for /predict.

Run: ``modelforge-demo`` (or ``python -m modelforge_jupyter.demo``; options ``--no-server``, ``--smoke``,
``--port``). Uses whatever the environment configures (``DATABASE_URL``, ``REDIS_URL``...); with nothing set, a
SQLite registry and a disk cache under the Jupyter data directory. Each prediction is printed beside raw
onnxruntime's answer on the same input.
"""

from __future__ import annotations

import argparse
import subprocess

import numpy as np

from .samples import sample_path
from .settings import mask_url

SAMPLE_MODELS = {
    "iris": ("iris.onnx", [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]),
    "breast_cancer_rf": ("breast_cancer_rf.onnx", None),
    "diabetes": ("diabetes.onnx", None),
}


def sample_input(record, rows: int = 2, seed: int = 0) -> np.ndarray:
    """A float32 batch shaped like the record's single input (unknown dims as ``rows``)."""
    spec = record.inputs[0]
    shape = [rows if d is None else d for d in spec.shape]
    return np.random.default_rng(seed).uniform(0, 5, shape).astype(np.float32)


def register_samples(mf) -> None:
    """Register (or update) the sample models, predict with each beside raw onnxruntime, show a cache hit."""
    import onnxruntime as ort

    print(f"registry: {mask_url(mf.settings.database_url)}")
    print(f"cache:    {mask_url(mf.settings.redis_url) or mf.settings.cache_dir} ({mf.cache.backend})")
    for name, (filename, example) in SAMPLE_MODELS.items():
        record, changed = mf.save(name, sample_path(filename))
        X = np.asarray(example, np.float32) if example else sample_input(record)
        miss = mf.predict(name, X, use_cache=False)
        mf.predict(name, X)
        hit = mf.predict(name, X)
        raw = ort.InferenceSession(str(sample_path(filename)), mf.engine.session_options()).run(
            None, {record.inputs[0].name: X}
        )
        what = ("registered" if record.version == 1 else "updated") if changed else "unchanged"
        print(f"\n{name} v{record.version} ({what}, id {record.id})")
        first = record.outputs[0].name
        print(f"  {first}: {miss.output_data[first]}  raw onnxruntime: {raw[0].tolist()}")
        print(f"  computed in {miss.inference_time_ms:.3f} ms; cache hit (cached={hit.cached}) "
              f"in {hit.inference_time_ms:.3f} ms")
    updated = mf.update("iris", sample_path("iris_v2.onnx"))
    res = mf.predict("iris", np.asarray(SAMPLE_MODELS["iris"][1], np.float32))
    print(f"\niris updated to v{updated.version}: probabilities {res.output_data['output_probability'][0]}")
    print(f"health: {mf.health()}")


def serve(port: int, smoke: bool) -> int:
    """Start ``jupyter server`` with the extension, print its URL, token and a working curl line; wait for it.

    ``smoke``: send that /predict once over HTTP, print the answer, stop the server and return.
    """
    import http.client
    import os
    import secrets
    import signal
    import sys
    import time

    token = secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyter", "server", "--no-browser", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    server = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM, like Ctrl-C, stops the server with us
    body = '{"model_id": "iris", "input_data": [[5.1, 3.5, 1.4, 0.2]]}'
    try:
        for _ in range(300):
            if server.poll() is not None:
                print(f"jupyter server exited with code {server.returncode} (is port {port} free?)", file=sys.stderr)
                return 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/modelforge/health")
                if conn.getresponse().status in (200, 503):
                    break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        print(f"\nJupyter server with ModelForge: {url}?token={token}")
        print(f"token: {token}")
        print("predict over HTTP:")
        print(f"  curl -s -X POST -H 'Authorization: token {token}' -H 'Content-Type: application/json' "
              f"-d '{body}' {url}modelforge/predict")
        if smoke:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/modelforge/predict", body,
                         {"Authorization": f"token {token}", "Content-Type": "application/json"})
            answer = conn.getresponse()
            print(f"HTTP {answer.status}: {answer.read().decode()}")
            return 0 if answer.status == 200 else 1
        print("(Ctrl-C stops the server)")
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(server)


def stop_server(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a ``jupyter server`` process: SIGTERM (it stops its extensions and kernels), SIGKILL after ``timeout``
    s or on a second Ctrl-C meanwhile, so it is never left running."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except BaseException:  # a second Ctrl-C while waiting
        proc.kill()
        proc.wait()
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8888, help="port of the Jupyter server (default 8888)")
    parser.add_argument("--no-server", action="store_true", help="register and predict only; start no server")
    parser.add_argument("--smoke", action="store_true", help="predict once over HTTP, then stop the server")
    args = parser.parse_args(argv)

    from . import ModelForge

    with ModelForge() as mf:
        register_samples(mf)
    return 0 if args.no_server else serve(args.port, args.smoke)


if __name__ == "__main__":
    raise SystemExit(main())
