"""Batch scoring on the embedded path (no broker): a local process pool, on both backends. Results equal raw
onnxruntime row for row, in order, from arrays, DataFrames and Parquet; Parquet out with a manifest; bad rows named;
the version pinned at submit; cancel; a deletion during the job.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelforge_jupyter.core.errors import ModelForgeError, ModelNotFoundError
from modelforge_jupyter.core.score_chunks import MAX_ROW_ERRORS
from modelforge_jupyter.core.scoring import ScoringError

from .mf_plugin import SAMPLES, mf_raw_run, mf_spin_input, mf_spin_model

RF = SAMPLES / "breast_cancer_rf.onnx"  # float_input float32 [N, 30] -> label int64 [N], probabilities [N, 2]
IRIS, IRIS_V2 = SAMPLES / "iris.onnx", SAMPLES / "iris_v2.onnx"
X = np.random.default_rng(0).normal(size=(2_300, 30)).astype(np.float32) * 3 + 10
IRIS_X = np.random.default_rng(1).uniform(0.1, 8, size=(600, 4)).astype(np.float32)


def two_input_model() -> bytes:
    """``y = a * b + c`` with inputs a, b float32 [N] and c float32 [N, 2]: columns mapped by name."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Unsqueeze", ["ab", "axes"], ["ab2"]),
         helper.make_node("Add", ["ab2", "c"], ["y"])],
        "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [None]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_array_equals_raw_onnxruntime_in_order(mf_forge):
    # Given the 100-tree forest and 2,300 rows, in chunks of 500 (the last one 300) over 2 worker processes
    mf_forge.register("rf", RF)
    job = mf_forge.score("rf", X, chunk_rows=500, workers=2)
    outputs = job.result(timeout=60)
    # Then every row equals raw onnxruntime's, in order, and the job says so
    label, proba = mf_raw_run(RF, {"float_input": X})
    assert np.array_equal(outputs["label"], label) and np.array_equal(outputs["probabilities"], proba)
    progress = job.progress()
    assert (progress.state, progress.rows_done, progress.chunks, progress.chunks_done) == ("done", 2_300, 5, 5)
    assert job.errors() == [] and job.version == 1 and len(job.id) == 32
    table = job.table()
    assert table.column("row").to_pylist() == list(range(2_300))
    assert np.array_equal(table.column("probabilities_1").to_numpy(), proba[:, 1])
    assert mf_forge.score_job(job.id) is job
    # forget() drops the outputs held for result(): the job keeps its last progress reading and refuses the rest
    assert job.forget() == 5 and job.progress().rows_done == 2_300
    with pytest.raises(ModelForgeError, match="was forgotten"):
        job.table()


def test_dataframe_columns_by_name_for_a_multi_input_model(mf_forge):
    mf_forge.register("abc", two_input_model())
    rng = np.random.default_rng(2)
    a, b, c = (rng.normal(size=90).astype(np.float32) for _ in range(3))
    frame = pd.DataFrame({"c": list(np.stack([c, -c], axis=1)), "b": b, "a": a, "ignored": "x"})
    outputs = mf_forge.score("abc", frame, chunk_rows=40, workers=1).result(timeout=60)
    (expected,) = mf_raw_run(two_input_model(), {"a": a, "b": b, "c": np.stack([c, -c], axis=1)})
    assert np.array_equal(outputs["y"], expected)
    # Columns that name no input of a multi-input model are refused at submit, naming the inputs
    with pytest.raises(ModelForgeError, match="the model has inputs 'a', 'b', 'c': name the columns after them "
                                              r"\(missing: 'a'; expected 'a' float32 \[\?\], "):
        mf_forge.score("abc", frame.rename(columns={"a": "x"}))


def test_a_dataframe_short_of_a_column_is_refused_at_submit(mf_forge):
    # Given the forest (one input, [N, 30]) and 20,000 rows as a DataFrame, one column dropped
    mf_forge.register("rf", RF)
    mf_forge.register("abc", two_input_model())
    frame = pd.DataFrame(np.tile(X, (9, 1))[:20_000], columns=[f"f{i}" for i in range(30)])
    start = time.perf_counter()
    # Then score refuses at once (no chunk split down to single rows), naming what is given and what is expected
    with pytest.raises(ModelForgeError, match=r"the DataFrame's 29 columns \('f0', .*\) make rows of 29 values side "
                                              r"by side and the model takes 30 \('float_input' float32 \[\?, 30\]\): 1 missing"):
        mf_forge.score("rf", frame.drop(columns=["f7"]))
    with pytest.raises(ModelForgeError, match=r"the array's rows have shape \[29\]; the model takes 'float_input'"):
        mf_forge.score("rf", frame.to_numpy()[:, :29])
    with pytest.raises(ModelForgeError, match="the array feeds a single-input model only; this one takes 'a'"):
        mf_forge.score("abc", X)
    with pytest.raises(ModelForgeError, match=r"the array holds <U\d+ values and input 'float_input' takes float32: "
                                              r"convert it first \(e.g. X.astype\(np.float32\)\)"):
        mf_forge.score("rf", np.tile(X, (9, 1))[:20_000].astype(str))
    assert time.perf_counter() - start < 5
    # While a column of lists of the right width, and a Parquet file of the right columns, are taken
    listed = pd.DataFrame({"features": list(X[:50])})
    assert np.array_equal(mf_forge.score("rf", listed, workers=1).result(timeout=60)["label"],
                          mf_raw_run(RF, {"float_input": X[:50]})[0])


def test_parquet_directory_in_parquet_parts_and_manifest_out(mf_embedded_settings, tmp_path):
    from modelforge_jupyter import ModelForge

    # Given the rows as two Parquet files of 30 columns (row groups of 256 rows), the second named first in order
    source = tmp_path / "in"
    source.mkdir()
    names = [f"f{i}" for i in range(30)]
    pq.write_table(pa.table(dict(zip(names, X[:1_000].T))), source / "a.parquet", row_group_size=256)
    pq.write_table(pa.table(dict(zip(names, X[1_000:].T))), source / "b.parquet", row_group_size=256)
    with ModelForge(**mf_embedded_settings) as mf:
        mf.register("rf", RF)
        job = mf.score("rf", source, chunk_rows=400, output=tmp_path / "out", workers=2)
        manifest = job.result(timeout=60)
        # Then chunks never span files (1000 rows: 400+400+200; 1300: 400+400+400+100), one part each
        assert [p["rows"] for p in manifest["parts"]] == [400, 400, 200, 400, 400, 400, 100]
        assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert (manifest["state"], manifest["version"], manifest["rows"]) == ("done", 1, 2_300)
        table = pa.concat_tables([pq.read_table(tmp_path / "out" / p["file"]) for p in manifest["parts"]])
        label, proba = mf_raw_run(RF, {"float_input": X})
        assert table.column("row").to_pylist() == list(range(2_300))
        assert np.array_equal(table.column("label").to_numpy(), label)
        assert np.array_equal(table.column("probabilities_0").to_numpy(), proba[:, 0])
        assert job.table().equals(table)
        # An output directory holding a job's files is refused, before anything runs
        with pytest.raises(ModelForgeError, match="already holds a job's files"):
            mf.score("rf", source, output=tmp_path / "out")
        # and so is one holding other files (the parts would mix with them), which stays as it was
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "keep.txt").write_text("mine")
        with pytest.raises(ModelForgeError, match="output directory 'mine' is not empty; give a new or empty one"):
            mf.score("rf", source, output=tmp_path / "mine")
        assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]


def test_bad_rows_reported_by_index_the_others_scored(mf_forge):
    # Given iris rows as a DataFrame (columns labelled 0-3) whose rows 7 and 523 hold text where numbers belong
    mf_forge.register("iris", IRIS)
    frame = pd.DataFrame(IRIS_X.astype(object))
    frame.iloc[7, 1] = "seven"
    frame.iloc[523, 3] = None
    job = mf_forge.score("iris", frame, chunk_rows=100, workers=2)
    assert job.wait(60)
    # Then those rows are named with the reason, and every other row is scored as raw onnxruntime scores it
    errors = job.errors()
    assert [(e.chunk, e.bad_rows, [r for r, _ in e.rows]) for e in errors] == [(0, 1, [7]), (5, 1, [523])]
    assert all(e.status == 400 and "numbers are needed" in e.rows[0][1] for e in errors)
    assert job.progress().state == "failed" and job.progress().rows_done == 598
    with pytest.raises(ScoringError, match="2 of 600 rows not scored"):
        job.result()
    table = job.table()
    kept = np.setdiff1d(np.arange(600), [7, 523])
    assert table.column("row").to_pylist() == kept.tolist()
    label, _ = mf_raw_run(IRIS, {"float_input": IRIS_X[kept]})
    assert np.array_equal(table.column("output_label").to_numpy(), label)


def test_every_bad_row_counted_the_first_hundred_named(mf_forge):
    # Given a chunk of 300 iris rows of which 150 (every other one) hold text where numbers belong
    mf_forge.register("iris", IRIS)
    frame = pd.DataFrame(IRIS_X[:300].astype(object))
    frame.iloc[::2, 0] = "n/a"
    job = mf_forge.score("iris", frame, chunk_rows=300, workers=1)
    assert job.wait(120)
    # Then the chunk's error counts all 150, names the first MAX_ROW_ERRORS (100) in order, and the job's count agrees
    (error,) = job.errors()
    assert (error.bad_rows, len(error.rows), error.rows[0][0], error.rows[-1][0]) == (150, MAX_ROW_ERRORS, 0, 198)
    assert job.progress().rows_done == 150 and job.progress().bad_rows == 150


def test_version_pinned_at_submit(mf_forge):
    mf_forge.register("iris", IRIS)
    job = mf_forge.score("iris", IRIS_X, chunk_rows=5, workers=1)  # 120 chunks
    mf_forge.update("iris", IRIS_V2)  # while it runs (or, on a fast day, after: the answer must not depend on it)
    outputs = job.result(timeout=60)
    v1, v2 = (mf_raw_run(p, {"float_input": IRIS_X})[0] for p in (IRIS, IRIS_V2))
    assert not np.array_equal(v1, v2)  # the versions answer differently on these rows
    assert np.array_equal(outputs["output_label"], v1) and job.version == 1


@pytest.fixture
def spinning(mf_embedded_settings):
    """A ModelForge with the spin model, and 40 one-row chunks: the first two ~0.4 s each, the others ~4 ms."""
    from modelforge_jupyter import ModelForge

    with ModelForge(**mf_embedded_settings) as mf:
        mf.register("spin", mf_spin_model().SerializeToString())
        x = np.repeat(mf_spin_input(300), 40, axis=0)
        x[:2, 0] = 30_000
        yield mf, x


def test_cancel_stops_the_remaining_chunks(spinning):
    mf, x = spinning
    job = mf.score("spin", x, chunk_rows=1, workers=1)
    job.cancel()
    assert job.wait(30)
    progress = job.progress()
    assert progress.state == "cancelled" and progress.chunks_cancelled >= 30 and progress.rows_done <= 10
    with pytest.raises(ScoringError, match="cancelled"):
        job.result()


def test_a_deletion_fails_the_remaining_chunks_naming_it(spinning):
    mf, x = spinning
    job = mf.score("spin", x, chunk_rows=1, workers=1)
    mf.delete("spin")
    assert job.wait(30)
    errors = job.errors()
    assert len(errors) >= 30 and errors[-1].status == 404
    assert "model 'spin' version 1 was deleted after the job was submitted" in errors[-1].message
    with pytest.raises(ModelNotFoundError):
        mf.score("spin", x)


@pytest.mark.parametrize("data, message", [
    ([[1.0, 2.0]], "takes a NumPy array, a pandas DataFrame, a Parquet file"),
    (np.empty((0, 4), np.float32), "has no rows"),
    ("no-such.parquet", "no file or directory 'no-such.parquet'"),
])
def test_unreadable_data_refused_at_submit(mf_embedded_settings, data, message):
    from modelforge_jupyter import ModelForge

    with ModelForge(**mf_embedded_settings) as mf:
        mf.register("iris", IRIS)
        with pytest.raises(ModelForgeError, match=message):
            mf.score("iris", data)
        with pytest.raises(ModelForgeError, match="chunk_rows must be"):
            mf.score("iris", IRIS_X, chunk_rows=0)


@pytest.mark.parametrize("workers", [0, -1, True, 2.5, "2", 10**6])
def test_a_pool_size_out_of_bounds_is_refused_before_any_process_starts(mf_forge, workers):
    # Given a registered model and this process's children
    mf_forge.register("iris", IRIS)
    children = _children()
    # When a job asks for a pool of a size that is not a whole number from 1 to 4 per CPU (a million forked at once)
    with pytest.raises(ModelForgeError) as err:
        mf_forge.score("iris", IRIS_X, workers=workers)
    # Then it is refused naming the bound and what was given, and no process was started
    assert f"workers must be a whole number from 1 to {4 * os.cpu_count()}" in str(err.value)
    assert f"got {workers!r}" in str(err.value)
    assert _children() == children


def _children() -> set[int]:
    """The pids of this process's child processes (from /proc)."""
    mine, found = str(os.getpid()), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[1] == mine:
            found.add(int(pid))
    return found


def test_a_model_that_declares_no_input_shape_scores_any_rows(mf_forge):
    from .mf_plugin import mf_unshaped_model

    # Given a model whose input declares no shape at all, and rows of 3 values as an array and as a DataFrame
    model = mf_unshaped_model().SerializeToString()
    mf_forge.register("any", model)
    x = np.linspace(-2, 2, 60, dtype=np.float32).reshape(20, 3)
    # Then both score as raw ONNX Runtime runs them, in order
    want = mf_raw_run(model, {"x": x})[0]
    assert np.array_equal(mf_forge.score("any", x, chunk_rows=7, workers=1).result(timeout=60)["y"], want)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    assert np.array_equal(mf_forge.score("any", frame, chunk_rows=7, workers=1).result(timeout=60)["y"], want)
