"""The test plugin's own promises: a process a test starts never outlives it, and the raw reference is raw
onnxruntime's answer in ModelForge's JSON shape."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris

from .mf_plugin import SAMPLES, mf_launch, mf_raw_outputs, mf_raw_run, mf_wait_until


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_process_that_never_gets_ready_is_stopped_and_the_error_shows_its_log(tmp_path):
    # Given a process that prints and then never becomes ready
    sleeper = mf_launch([sys.executable, "-c", "import time; print('booting', flush=True); time.sleep(60)"],
                        tmp_path / "sleeper.log")

    assert mf_wait_until(lambda: "booting" in sleeper.log, 10)

    # When its readiness is awaited for 1 s, Then the error names it and shows its log, and it is stopped
    with pytest.raises(RuntimeError, match=r"^the sleeper not ready after 1 s:\nbooting\n"):
        sleeper.wait_ready(lambda: False, 1, "the sleeper")
    assert sleeper.proc.returncode is not None and not alive(sleeper.pid)


def test_stopping_a_process_group_stops_the_shell_and_what_it_started(tmp_path):
    # Given a shell (in a session of its own) that started a child and waits for it
    shell = mf_launch(["bash", "-c", "sleep 60 & echo $! > child.pid; wait"], tmp_path / "shell.log", cwd=tmp_path,
                      group=True)
    pid_file = tmp_path / "child.pid"
    assert mf_wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 10)
    child = int(pid_file.read_text())
    assert alive(child)

    # When the shell is stopped, Then its child stops too
    shell.stop(10)
    assert shell.proc.returncode is not None
    assert mf_wait_until(lambda: not alive(child), 10), f"pid {child} outlived its process group's stop"


def test_raw_outputs_are_raw_onnxruntime_in_the_json_shape_of_output_data():
    X = load_iris().data[:3].astype(np.float32)

    outputs = mf_raw_outputs(SAMPLES / "iris.onnx", {"float_input": X})

    label, proba = mf_raw_run(SAMPLES / "iris.onnx", {"float_input": X})
    assert list(outputs) == ["output_label", "output_probability"]
    assert outputs["output_label"] == label.tolist()
    assert outputs["output_probability"] == [{str(k): v for k, v in row.items()} for row in proba]
    assert all(isinstance(v, float) for row in outputs["output_probability"] for v in row.values())
