"""The measurement code shared by ``python -m modelforge_jupyter.bench`` and ``%mf_bench``, on real models."""

from __future__ import annotations

import sys
from dataclasses import asdict

import numpy as np
import orjson
import pytest

from modelforge_jupyter.bench import (
    MAGIC_PATHS,
    Budget,
    main,
    plan_bench,
    resize_batch,
    run_bench,
    sample_feed,
    summarize,
    timed,
)
from modelforge_jupyter.errors import InvalidInputError, ModelNotFoundError
from modelforge_jupyter.records import TensorSpec

from .mf_plugin import SAMPLES, mf_identity_model, mf_raw_run

DTYPES = ["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool", "string"]


def test_summarize_percentiles_throughput_and_ratio():
    ms = [float(i) for i in range(1, 101)]  # 1..100 ms

    row = summarize("m", 10, "api_cache_off", ms, raw_p50=25.25)

    assert (row.p50_ms, row.p95_ms, row.p99_ms) == pytest.approx((50.5, 95.05, 99.01))
    assert row.predictions_per_s == pytest.approx(10 * 100 / 5.05)  # 1000 rows in 5.05 s
    assert row.ratio_p50 == pytest.approx(2.0) and row.iterations == 100


def test_timed_runs_warmup_setup_and_exact_iterations():
    calls, setups = [], []

    ms = timed(calls.append, float("inf"), 7, warmup=3, setup=setups.append, min_iterations=1)

    assert len(ms) == 7 and all(m >= 0 for m in ms)
    assert calls == list(range(10)) and setups == list(range(10))
    assert len(Budget(iterations=4, warmup=0).timed(calls.append)) == 4
    assert 5 <= len(Budget(seconds=0.0, warmup=0).timed(calls.append)) <= 6  # at least 5 calls


@pytest.mark.parametrize("mf_backend", ["embedded"])  # sample_feed is backend-independent
@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_feed_is_valid_for_every_dtype_and_symbolic_dims(mf_forge, dtype):
    # Given an Identity model with a symbolic batch, a fixed and a symbolic inner dim
    mf_forge.register("ident", mf_identity_model(dtype, ["N", 3, "T"]))
    specs = mf_forge.get("ident").inputs

    feed = sample_feed(specs, batch=5)

    assert feed["x"].shape == (5, 3, 1)
    res = mf_forge.predict("ident", feed, use_cache=False)
    want = mf_raw_run(mf_identity_model(dtype, ["N", 3, "T"]).SerializeToString(), feed)[0]
    assert np.asarray(res.output_data["y"], dtype=want.dtype).tolist() == want.tolist()


def test_resize_batch_cycles_rows_on_symbolic_axis_only():
    specs = [TensorSpec("a", "float32", [None, 2]), TensorSpec("b", "int64", [3]), TensorSpec("c", "int64", [])]
    feed = {"a": np.array([[1, 2], [3, 4]], np.float32), "b": np.arange(3), "c": np.array(7)}

    out = resize_batch(specs, feed, 5)

    assert out["a"].tolist() == [[1, 2], [3, 4], [1, 2], [3, 4], [1, 2]]
    assert out["b"] is feed["b"] and out["c"] is feed["c"]


def test_run_bench_measures_every_path_with_ratios(mf_forge, monkeypatch):
    mf_forge.register("rf", SAMPLES / "breast_cancer_rf.onnx")
    seen = []

    plan = plan_bench(mf_forge, "rf", [1, 8])
    result = run_bench(mf_forge, plan, Budget(iterations=3, warmup=1), lambda *cell: seen.append(cell))

    assert plan.total == 10 and [c[:2] for c in seen] == [(i, 10) for i in range(1, 11)]
    assert [(r.batch, r.path) for r in result.rows] == [(b, p) for b in (1, 8) for p in MAGIC_PATHS]
    for r in result.rows:
        assert min(r.p50_ms, r.p95_ms, r.p99_ms, r.predictions_per_s) > 0 and r.p50_ms <= r.p95_ms <= r.p99_ms
        assert r.iterations == 3 and r.ratio_p50 > 0
        assert r.ratio_p50 == (1.0 if r.path.startswith("raw") else pytest.approx(
            r.p50_ms / result.row(r.batch, "raw_cold" if r.path == "cold" else "raw_ort").p50_ms))
    assert result.notes == () and mf_forge.engine.loaded() == [mf_forge.get("rf").sha256]
    assert result.table.to_dict("records") == result.to_dict()["rows"]
    monkeypatch.setitem(sys.modules, "pandas", None)  # without pandas: a list of dicts
    assert result.table == [asdict(r) for r in result.rows]


def test_plan_refuses_unknown_model_and_bad_input_before_timing(mf_forge):
    mf_forge.register("iris", SAMPLES / "iris.onnx")
    with pytest.raises(ModelNotFoundError):
        plan_bench(mf_forge, "nope")
    with pytest.raises(InvalidInputError, match="expected float32"):
        plan_bench(mf_forge, "iris", input_data=[[1, 2, 3]])
    plan = plan_bench(mf_forge, "iris", input_data=np.ones((7, 4)))
    assert plan.batch_sizes == (7,) and plan.base["float_input"].dtype == np.float32


def test_cache_paths_dropped_with_a_note_when_the_cache_is_disabled(mf_settings):
    from modelforge_jupyter import ModelForge

    with ModelForge(**mf_settings, cache_prediction_enabled=False) as forge:
        forge.register("iris", SAMPLES / "iris.onnx")
        plan = plan_bench(forge, "iris", [2])
        result = run_bench(forge, plan, Budget(iterations=2, warmup=0))

    assert "api_hit" not in plan.paths and [r.path for r in result.rows] == ["raw_cold", "cold", "raw_ort",
                                                                             "api_cache_off"]
    assert "CACHE_PREDICTION_ENABLED=false" in result.notes[0]


def test_cli_prints_the_table_with_p95_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"

    assert main(["--models", "iris", "--batch-sizes", "1,4", "--seconds", "0.01", "--json", str(out)]) == 0

    text = capsys.readouterr().out
    assert "p50 ms    p95 ms    p99 ms      pred/s  x raw p50" in text
    rows = orjson.loads(out.read_bytes())["rows"]
    assert [(r["batch"], r["path"]) for r in rows] == [
        (1, "raw_ort"), (1, "api_cache_off"), (1, "api_miss"), (1, "api_hit"),
        (4, "raw_ort"), (4, "api_cache_off"), (4, "api_miss"), (4, "api_hit"),
        (1, "raw_cold"), (1, "cold"), (1, "raw_cache_get"), (1, "api_hit"),
    ]
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["ratio_p50"] > 0 for r in rows)
    assert text.count("\niris ") == len(rows)
