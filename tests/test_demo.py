"""The README's main job (``modelforge-demo``) on embedded defaults, through to a real /predict over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def test_main_job_registers_samples_starts_server_and_predicts_over_http(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MODELFORGE_DATA_DIR": str(tmp_path / "mf"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CACHE_KEY_PREFIX", "MODELFORGE_CACHE_DIR"):
        env.pop(name, None)

    proc = subprocess.run([sys.executable, "-m", "modelforge_jupyter.demo", "--smoke", "--port", str(port)],
                          env=env, capture_output=True, text=True, timeout=110)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "raw onnxruntime: [0, 2]" in out and "cache hit (cached=True)" in out
    assert f"http://127.0.0.1:{port}/?token=" in out and "curl -s -X POST -H 'Authorization: token " in out
    assert 'HTTP 200: {"prediction_id"' in out and '"output_label":[0]' in out and '"model_version":2' in out
