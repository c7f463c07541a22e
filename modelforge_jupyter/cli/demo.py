"""The main job on embedded defaults: register the sample models, predict, show the cache hit, update a model, then
start a Jupyter server with the extension and print its URL, token and a working curl line for /predict.

Run: ``modelforge-demo`` (or ``python -m modelforge_jupyter.cli.demo``; options ``--no-server``, ``--smoke``,
``--port``). The port is checked first: when another server holds it, the demo says so and stops before printing or
registering anything. The models are registered as ``demo_iris``, ``demo_breast_cancer_rf`` and ``demo_diabetes``
(not the names the README's examples register), and a second run changes nothing. Uses whatever the environment
configures (``DATABASE_URL``, ``REDIS_URL``...); with nothing set, a SQLite registry and a disk cache under the
Jupyter data directory. Each prediction is printed beside raw onnxruntime's answer on the same input.

``start_server`` is also how a notebook run outside a Jupyter server (``jupyter nbconvert --execute``) gets one on
its own registry.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np

from ..core.samples import NEXT_VERSIONS, SAMPLE_MODELS as SAMPLES, sample_path
from ..core.urls import mask_url

EXAMPLES = {"iris": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}  # others: a sample built from the model's input
# Registered under names of their own, so the README's examples (which register "iris") run after the demo.
SAMPLE_MODELS = {f"demo_{name}": (filename, EXAMPLES.get(name)) for name, filename in SAMPLES.items()}
UPDATED = ("demo_iris", NEXT_VERSIONS["iris"])  # the model update the demo shows


def sample_input(record, rows: int = 2, seed: int = 0) -> np.ndarray:
    """A float32 batch shaped like the record's single input (unknown dims as ``rows``)."""
    spec = record.inputs[0]
    shape = [rows if d is None else d for d in spec.shape]
    return np.random.default_rng(seed).uniform(0, 5, shape).astype(np.float32)


def register_samples(mf) -> None:
    """Register the sample models, predict with each beside raw onnxruntime, show a cache hit, update one model.

    Idempotent: run again, it changes nothing (a model already at its final bytes is left as it is), so the registry
    holds the same models and versions after every run.
    """
    import hashlib

    from ..core.errors import ModelNotFoundError

    print(f"registry: {mask_url(mf.settings.database_url)}")
    print(f"cache:    {mask_url(mf.settings.redis_url) or mf.settings.cache_dir} ({mf.cache.backend})")
    update_name, update_file = UPDATED
    final_sha256 = hashlib.sha256(sample_path(update_file).read_bytes()).hexdigest()
    for name, (filename, example) in SAMPLE_MODELS.items():
        try:
            current = mf.get(name)
        except ModelNotFoundError:
            current = None
        if name == update_name and current is not None and current.sha256 == final_sha256:
            record, changed, filename = current, False, update_file  # updated by an earlier run
        else:
            record, changed = mf.save(name, sample_path(filename))
        X = np.asarray(example, np.float32) if example else sample_input(record)
        miss = mf.predict(name, X, use_cache=False)
        mf.predict(name, X)
        hit = mf.predict(name, X)
        raw = mf.raw_session(sample_path(filename).read_bytes()).run(
            None, {record.inputs[0].name: X}
        )
        what = ("registered" if record.version == 1 else "updated") if changed else "unchanged"
        print(f"\n{name} v{record.version} ({what}, id {record.id})")
        first = record.outputs[0].name
        print(f"  {first}: {miss.output_data[first]}  raw onnxruntime: {raw[0].tolist()}")
        print(f"  computed in {miss.inference_time_ms:.3f} ms; cache hit (cached={hit.cached}) "
              f"in {hit.inference_time_ms:.3f} ms")
    updated, changed = mf.save(update_name, sample_path(update_file))
    res = mf.predict(update_name, np.asarray(SAMPLE_MODELS[update_name][1], np.float32))
    what = "updated to" if changed else "already at"
    print(f"\n{update_name} {what} v{updated.version} ({update_file}): probabilities "
          f"{res.output_data['output_probability'][0]}")
    print(f"health: {mf.health()}")


def port_taken(port: int, host: str = "127.0.0.1") -> str | None:
    """Why ``host:port`` cannot be listened on (e.g. another server holds it), or None when it is free."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado does: TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError as err:
            return err.strerror or str(err)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that no one listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class LocalServer:
    """A ``jupyter server`` this process started (``start_server``): its ``url`` (trailing ``/``) and ``token``."""

    url: str
    token: str
    proc: subprocess.Popen = field(repr=False)

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 20 s); nothing if it has stopped already."""
        stop_server(self.proc)


def start_server(port: int = 0, token: str | None = None, host: str = "127.0.0.1", timeout: float = 60.0,
                 quiet: bool = False) -> LocalServer:
    """Start ``jupyter server`` (ModelForge enabled by its installed config) on ``host:port`` (0: a free port)
    with ``token`` (default: a random one), in this process's environment, so it uses the same registry and cache.

    Returns once the server answers ``GET api/status`` with this token: the server answering is this one, not
    another holding the port. Raises ``RuntimeError`` when the port is taken, the server exits, or it is not ready
    within ``timeout`` s (the server is stopped). The server is also stopped when this process exits (``atexit``);
    ``quiet`` sends its log to /dev/null.
    """
    import atexit
    import http.client
    import os
    import secrets
    import time

    port = port or free_port(host)
    why = port_taken(port, host)
    if why:
        raise RuntimeError(f"port {port} on {host} is taken ({why}): stop what holds it, or choose another port")
    token = token or secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyter", "server", "--no-browser", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.ip={host}", f"--IdentityProvider.token={token}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    out = subprocess.DEVNULL if quiet else None
    server = LocalServer(f"http://{host}:{port}/", token, subprocess.Popen(cmd, stdout=out, stderr=out))
    atexit.register(server.stop)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with code {server.proc.returncode} (is port {port} free?)")
            try:
                conn = http.client.HTTPConnection(host, port, timeout=1)
                conn.request("GET", "/api/status", headers={"Authorization": f"token {token}"})
                if conn.getresponse().status == 200:
                    return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter server on port {port} not ready after {timeout:.0f} s")
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise


def serve(port: int, smoke: bool) -> int:
    """Start ``jupyter server`` with the extension, print its URL, token and a working curl line; wait for it.

    ``smoke``: send that /predict once over HTTP, print the answer, stop the server and return.
    """
    import http.client
    import signal

    try:
        server = start_server(port)
    except RuntimeError as err:
        print(f"modelforge-demo: {err}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM, like Ctrl-C, stops the server with us
    name = UPDATED[0]
    body = f'{{"model_id": "{name}", "input_data": [[5.1, 3.5, 1.4, 0.2]]}}'
    try:
        print(f"\nJupyter server with ModelForge: {server.url}?token={server.token}")
        print(f"token: {server.token}")
        print("predict over HTTP:")
        print(f"  curl -s -X POST -H 'Authorization: token {server.token}' -H 'Content-Type: application/json' "
              f"-d '{body}' {server.url}modelforge/predict")
        if smoke:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/modelforge/predict", body,
                         {"Authorization": f"token {server.token}", "Content-Type": "application/json"})
            answer = conn.getresponse()
            print(f"HTTP {answer.status}: {answer.read().decode()}")
            return 0 if answer.status == 200 else 1
        print("(Ctrl-C stops the server)")
        return server.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


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


def tcp_port(text: str) -> int:
    """``text`` as a TCP port (1-65535), else ``argparse.ArgumentTypeError`` (a usage error, exit status 2)."""
    port = int(text) if text.isascii() and text.isdigit() else 0  # int() also reads ' 8890' and full-width digits
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: give a whole number from 1 to 65535")
    return port


def main(argv: list[str] | None = None) -> int:
    """``modelforge-demo [--port N] [--no-server] [--smoke]``: register the sample models, predict, and start a
    Jupyter server with the extension (until Ctrl-C; ``--smoke``: one predict over HTTP, then stop). Returns the exit
    status: 0 done, 1 the port is taken or the server did not answer; argparse exits 2 on usage."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--port", type=tcp_port, default=8888, help="port of the Jupyter server (default 8888)")
    parser.add_argument("--no-server", action="store_true", help="register and predict only; start no server")
    parser.add_argument("--smoke", action="store_true", help="predict once over HTTP, then stop the server")
    args = parser.parse_args(argv)

    if not args.no_server and (why := port_taken(args.port)):  # before anything is printed or registered
        print(f"modelforge-demo: port {args.port} is taken ({why}): another server holds it; stop it, or pass "
              "--port N (or --no-server)", file=sys.stderr)
        return 1

    from ..core.api import ModelForge

    with ModelForge() as mf:
        register_samples(mf)
    return 0 if args.no_server else serve(args.port, args.smoke)


if __name__ == "__main__":
    raise SystemExit(main())
