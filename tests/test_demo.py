"""The README's main job (``modelforge-demo``) on embedded defaults, through to a real /predict over HTTP."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .mf_plugin import mf_free_port, mf_isolated_env


def run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m modelforge_jupyter.cli.demo *args`` run to its end; ``env``: a fresh clone's (``mf_isolated_env``:
    embedded defaults, Jupyter's directories under the test's tmp_path)."""
    return subprocess.run([sys.executable, "-m", "modelforge_jupyter.cli.demo", *args], env=env, capture_output=True,
                          text=True, timeout=100)


def test_main_job_registers_samples_starts_server_and_predicts_over_http(tmp_path):
    port = mf_free_port()
    env = mf_isolated_env(tmp_path)

    proc = run_demo(env, "--smoke", "--port", str(port))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "demo_iris v1 (registered" in out and "raw onnxruntime: [0, 2]" in out and "cache hit (cached=True)" in out
    assert "demo_iris updated to v2 (iris_v2.onnx)" in out
    assert f"http://127.0.0.1:{port}/?token=" in out and "curl -s -X POST -H 'Authorization: token " in out
    assert 'HTTP 200: {"prediction_id"' in out and '"output_label":[0]' in out and '"model_version":2' in out

    # Run again (the README's first command, twice): nothing changes, so the registry the README's examples start
    # from is the same after every run.
    again = run_demo(env, "--no-server")

    assert again.returncode == 0, again.stdout + again.stderr
    for name, version in (("demo_iris", 2), ("demo_breast_cancer_rf", 1), ("demo_diabetes", 1)):
        assert f"{name} v{version} (unchanged" in again.stdout
    assert "demo_iris already at v2" in again.stdout and "registered" not in again.stdout


class _AnyOK(BaseHTTPRequestHandler):
    """Another server on the port: answers 200 to every GET (a health check included), 403 to the rest."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status": "healthy"}')

    def do_POST(self):
        self.send_response(403)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_port_held_by_another_server_stops_the_demo_before_it_prints_or_registers(tmp_path):
    # Given another HTTP server on the demo's port, answering health checks
    other = ThreadingHTTPServer(("127.0.0.1", 0), _AnyOK)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    port = other.server_address[1]
    try:
        # When the demo starts on that port
        proc = run_demo(mf_isolated_env(tmp_path), "--port", str(port))
    finally:
        other.shutdown()
        other.server_close()

    # Then it says the port is taken and stops: no token, no curl line, nothing registered
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert f"port {port} is taken" in proc.stderr and "--port N" in proc.stderr
    assert not (tmp_path / "data" / "modelforge").exists()


@pytest.mark.parametrize("port", ["70000", "-1", "0", "http", " 8890", "８８９１"])
def test_a_port_out_of_range_is_a_usage_error_not_a_traceback(tmp_path, port):
    proc = run_demo(mf_isolated_env(tmp_path), f"--port={port}")

    assert proc.returncode == 2 and proc.stdout == ""
    assert f"argument --port: {port!r} is not a TCP port: give a whole number from 1 to 65535" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "modelforge").exists()
