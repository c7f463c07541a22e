"""Processes a test starts (a Jupyter server, a Celery worker, a redis-server, a README block): one launcher, one
readiness wait, one stop that never leaves a process running; free ports; /proc readings of a process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

MiB = 1 << 20


def mf_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that no one listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def mf_wait_until(predicate: Callable[[], bool], seconds: float = 20.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``seconds`` have passed; returns its last value (assert it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def mf_stop_process(proc: subprocess.Popen, timeout: float = 20.0, group: bool = False) -> None:
    """SIGTERM ``proc`` (its whole process group with ``group``: it was started in a session of its own), SIGKILL
    after ``timeout`` s; returns once it has exited."""
    if proc.poll() is not None:
        return

    def send(sig: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:  # gone meanwhile
            pass

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()
    except BaseException:  # the run interrupted meanwhile (Ctrl-C): never leave it running
        send(signal.SIGKILL)
        proc.wait()
        raise


@dataclass
class MfProcess:
    """A process a test started (``mf_launch``): stdout and stderr in the file ``log_path``."""

    proc: subprocess.Popen
    log_path: Path
    group: bool = False  # a session of its own: stop signals its whole process group

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 60.0, what: str = "the process") -> None:
        """Poll ``ready()`` (an ``OSError`` counts as not ready) every 0.1 s until it is true. Raises ``RuntimeError``
        with the log when the process exits first or ``timeout`` s pass; a process not ready is stopped (``stop``)
        before the error is raised."""
        deadline = time.monotonic() + timeout
        try:
            while not self._ready(ready):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{what} exited with {self.proc.returncode} before it was ready:\n"
                                       f"{self.log[-6000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{self.log[-6000:]}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _ready(ready: Callable[[], bool]) -> bool:
        try:
            return bool(ready())
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """``mf_stop_process``: SIGTERM, SIGKILL after ``timeout`` s."""
        mf_stop_process(self.proc, timeout, self.group)


def mf_launch(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
              group: bool = False) -> MfProcess:
    """Start ``cmd`` with stdout and stderr appended to ``log_path`` (a file: a full pipe would block the process);
    ``group``: in a session of its own (a shell whose children must stop with it)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=group)
    return MfProcess(proc, Path(log_path), group)


def mf_proc_status(key: str, pid: int | str = "self") -> int:
    """A memory line of /proc/<pid>/status in bytes: ``VmRSS`` (now) or ``VmHWM`` (peak)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(f"{key}:"))


def mf_reset_peak_rss() -> int:
    """Reset this process's peak RSS (``VmHWM``) to its RSS now (Linux >= 4.0); returns that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return mf_proc_status("VmRSS")


def mf_peak_rss_growth(fn: Callable[[], object]) -> int:
    """How far ``fn()`` raises this process's peak RSS above its RSS before, in bytes (the peak is reset first)."""
    before = mf_reset_peak_rss()
    fn()
    return mf_proc_status("VmHWM") - before


@pytest.fixture
def mf_warm_engine():
    """Build a first session in this process (of a model with a constant to size), so ONNX Runtime's thread pools and
    kernel registry and ONNX's operator schemas, built once per process, are not charged to a test's memory."""
    from modelforge_jupyter.core.engine import Engine

    from .models import mf_constant_of_shape_model

    Engine().inspect("warm", mf_constant_of_shape_model(10).SerializeToString())


@pytest.fixture
def mf_redis_server(tmp_path):
    """A redis-server of this test's own on a free port, so the test can stop it: (url, its ``MfProcess``)."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = mf_free_port()
    server = mf_launch([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--dir", str(tmp_path)], tmp_path / "redis-server.log")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        server.wait_ready(lambda: _pong(client, redis), 10, "redis-server")
    finally:
        client.close()
    yield url, server
    server.proc.kill()
    server.proc.wait()


def _pong(client, redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
