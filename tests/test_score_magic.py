"""``%mf_score`` and a scoring job's display: the magic returns the job (outputs equal raw onnxruntime's), reads a
Parquet path as well as a variable, writes ``-o DIR``; refusals are one line; the progress view draws the job's
figures, and a job displays as one line of text outside a kernel."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from IPython.utils.capture import capture_output

from modelforge_jupyter.core.scoring import ScoreJob
from modelforge_jupyter.kernel.score_view import ScoreProgressView, status_html

from .mf_plugin import SAMPLES, mf_raw_run

IRIS = SAMPLES / "iris.onnx"


def forge_of(ip):
    return ip.magics_manager.registry["ModelForgeMagics"].forge


def test_mf_score_returns_the_job_with_outputs_equal_to_raw_onnxruntime(mf_ip):
    forge_of(mf_ip).register("iris", IRIS)
    job = mf_ip.run_line_magic("mf_score", "iris X[:4] --chunk-rows 3 --workers 1 --wait")
    assert isinstance(job, ScoreJob) and job.progress().state == "done" and job.progress().chunks == 2
    label, _ = mf_raw_run(IRIS, {"float_input": mf_ip.user_ns["X"][:4].astype(np.float32)})
    assert np.array_equal(job.result()["output_label"], label)


def test_mf_score_reads_a_parquet_path_and_writes_a_directory(mf_ip, tmp_path):
    forge_of(mf_ip).register("iris", IRIS)
    x = mf_ip.user_ns["X"].astype(np.float32)
    pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(4)}), tmp_path / "rows.parquet")
    job = mf_ip.run_line_magic("mf_score", f"iris '{tmp_path / 'rows.parquet'}' -o {tmp_path / 'out'} --workers 1")
    manifest = job.result(timeout=60)
    assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    table = pq.read_table(tmp_path / "out" / manifest["parts"][0]["file"])
    assert np.array_equal(table.column("output_label").to_numpy(), mf_raw_run(IRIS, {"float_input": x})[0])


def test_mf_score_refusals_are_one_line(mf_ip, capsys):
    forge_of(mf_ip).register("iris", IRIS)
    assert mf_ip.run_line_magic("mf_score", "iris no_such_name") is None
    assert mf_ip.run_line_magic("mf_score", "iris X --chunk-rows 0") is None
    assert mf_ip.run_line_magic("mf_score", "nosuch X") is None
    assert mf_ip.run_line_magic("mf_score", "irsi X") is None
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("UsageError: 'no_such_name' is neither a variable or expression (NameError")
    assert err[1] == "UsageError: --chunk-rows must be >= 1, got 0"
    # an unknown name ends with the next step, as the other magics' refusals do
    assert err[2] == "ModelNotFoundError: model 'nosuch' is not registered; %mf_models lists the registered models"
    assert err[3] == ("ModelNotFoundError: model 'irsi' is not registered; did you mean iris? %mf_models lists the "
                      "registered models")


def test_the_view_draws_the_jobs_progress_and_text_shows_outside_a_kernel(mf_ip):
    forge_of(mf_ip).register("iris", IRIS)
    job = mf_ip.run_line_magic("mf_score", "iris X --chunk-rows 2 --workers 1 --wait")
    view = ScoreProgressView(job)
    assert view.bar.value == 1.0 and view.bar.bar_style == "success"
    assert "<b>iris</b> v1 · done · 5/5 rows" in view.status.value
    assert view._repr_mimebundle_()["text/plain"].startswith(f"<ScoreJob {job.id} iris v1: done: 5/5 rows (100%)")
    assert "ETA" not in status_html(job, job.progress())
    with capture_output() as shown:  # terminal IPython: the job's line, no widget
        mf_ip.display_formatter.ipython_display_formatter(job)
    assert shown.outputs[0].data["text/plain"].startswith(f"<ScoreJob {job.id} iris v1: done")
