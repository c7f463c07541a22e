"""The measurement code shared by ``python -m modelforge_jupyter.cli.bench`` and ``%mf_bench``, on real models."""

from __future__ import annotations

import sys

import numpy as np
import orjson
import pytest

from modelforge_jupyter.cli.bench import (
    MAGIC_PATHS,
    BenchPlan,
    Budget,
    Row,
    budget,
    main,
    plan_bench,
    resize_batch,
    run_bench,
    sample_feed,
    summarize,
    timed,
)
from modelforge_jupyter.core.errors import InvalidInputError, ModelNotFoundError
from modelforge_jupyter.core.records import TensorSpec

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
    # where the time goes, from ModelForge's own counters: each path through the stages it takes
    stages = {r.path: [s for s, _ in r.stages_us] for r in result.rows if r.batch == 8}
    assert stages == {"raw_cold": [], "raw_ort": [], "api_hit": ["cache_hit"],
                      "cold": ["compute_input", "queue", "compute_infer", "compute_output"],
                      "api_cache_off": ["compute_input", "queue", "compute_infer", "compute_output"]}
    assert all(us > 0 for r in result.rows for _, us in r.stages_us)
    cold, warm = dict(result.row(8, "cold").stages_us), dict(result.row(8, "api_cache_off").stages_us)
    assert cold["queue"] > warm["queue"]  # a cold call waits for its session to be built
    assert "where the time goes, mean µs per call by stage" in repr(result)
    assert result.table.to_dict("records") == result.to_dict()["rows"]
    monkeypatch.setitem(sys.modules, "pandas", None)  # without pandas: a list of dicts
    assert result.table == result.to_dict()["rows"]


def test_plan_refuses_unknown_model_and_bad_input_before_timing(mf_forge):
    mf_forge.register("iris", SAMPLES / "iris.onnx")
    with pytest.raises(ModelNotFoundError):
        plan_bench(mf_forge, "nope")
    with pytest.raises(InvalidInputError, match="expected float32"):
        plan_bench(mf_forge, "iris", input_data=[[1, 2, 3]])
    plan = plan_bench(mf_forge, "iris", input_data=np.ones((7, 4)))
    assert plan.batch_sizes == (7,) and plan.base["float_input"].dtype == np.float32


@pytest.mark.parametrize("mf_backend", ["embedded"])  # planning reads the model's declared shapes only
def test_a_model_with_a_fixed_batch_runs_only_that_batch(mf_forge):
    # Given models whose input fixes axis 0 at 1 and at 8, and one taking scalars only
    mf_forge.register("one", mf_identity_model("float32", [1, 4]))
    mf_forge.register("eight", mf_identity_model("float32", [8, 4]))
    mf_forge.register("scalar", mf_identity_model("int64", []))
    budget_ = Budget(iterations=3, warmup=1)

    one = run_bench(mf_forge, plan_bench(mf_forge, "one"), budget_)
    eight = run_bench(mf_forge, plan_bench(mf_forge, "eight", [1, 8, 10], paths=("raw_ort", "api_cache_off")),
                      budget_)
    default8 = plan_bench(mf_forge, "eight")
    scalar = plan_bench(mf_forge, "scalar", [1, 2])

    # Then only the batch each model takes is measured, and a note says why the others were not
    assert one.batch_sizes == (1,) and {r.batch for r in one.rows} == {1} and len(one.rows) == len(MAGIC_PATHS)
    assert one.notes == ("batch sizes 10, 100, 1000 not measured: one v1 takes batch 1 only "
                         "(input 'x' is float32 [1, 4])",)
    assert eight.batch_sizes == (8,) and [(r.batch, r.path) for r in eight.rows] == [(8, "raw_ort"),
                                                                                    (8, "api_cache_off")]
    assert eight.notes == ("batch sizes 1, 10 not measured: eight v1 takes batch 8 only "
                           "(input 'x' is float32 [8, 4])",)
    assert default8.batch_sizes == (8,) and default8.notes[0].startswith("batch sizes 1, 10, 100, 1000 not measured")
    assert scalar.batch_sizes == (1,) and scalar.notes == (
        "batch 2 not measured: scalar v1 takes batch 1 only (its inputs are scalars)",)
    # asked only for batch sizes it cannot take: refused, before anything is timed
    with pytest.raises(InvalidInputError, match=r"^batch sizes 1, 10 cannot run: eight v1 takes batch 8 only"):
        plan_bench(mf_forge, "eight", [1, 10])


@pytest.mark.parametrize("mf_backend", ["embedded"])
def test_run_bench_refuses_to_time_a_batch_the_feed_does_not_have(mf_forge):
    # Given a plan claiming batch 10 for a model fed 8 rows per run (as the old planning made)
    mf_forge.register("eight", mf_identity_model("float32", [8, 4]))
    plan = BenchPlan("eight", mf_forge.get("eight"), (8, 10), ("raw_ort",), None)
    cells = []

    with pytest.raises(AssertionError, match="batch 10 planned but the input of 'eight' has 8 rows per run"):
        run_bench(mf_forge, plan, Budget(iterations=2, warmup=0), lambda *cell: cells.append(cell))

    # Then batch 8 was measured and nothing was computed for batch 10
    assert [(row.batch, row.path) for _, _, row in cells] == [(8, "raw_ort")]


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
    report = orjson.loads(out.read_bytes())
    rows = report["rows"]
    warm = ["raw_ort", "raw_ort_default", "api_cache_off", "api_miss", "api_hit", "json_floor"]
    assert [(r["batch"], r["path"]) for r in rows] == [(b, p) for b in (1, 4) for p in warm] + [
        (1, "raw_cold"), (1, "cold"), (1, "consistency_check"), (1, "raw_cache_get"), (1, "api_hit"),
    ]
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in rows)
    assert all(r["ratio_p50"] > 0 for r in rows if r["path"] != "consistency_check")
    assert text.count("\niris ") == len(rows)
    # the budget lines of the embedded backend (no Redis GET line), printed and in the JSON
    assert [v["line"] for v in report["budget"]] == [
        "cache off, batch 1: p50 <= raw + 25 µs", "cache off, batch 4: >= 0.8x raw predictions/s",
        "cold: p50 <= 1.5x raw creation + first run + 2 ms"]
    for v in report["budget"]:
        assert f"{'holds' if v['holds'] else 'FAILS':<6} iris              {v['line']}: {v['measured']}" in text


def _row(model, batch, path, p50_ms, per_s=0.0, ratio=None):
    return Row(model, batch, path, p50_ms, p50_ms, p50_ms, per_s, ratio)


def test_budget_checks_each_line_on_the_figures():
    rows = [
        _row("m", 1, "raw_ort", 0.010), _row("m", 1, "api_cache_off", 0.040),  # +30 µs, 4 µs of them the check
        _row("m", 1, "http_miss", 0.49), _row("m", 1, "http_hit", 0.51),
        _row("m", 1000, "raw_ort", 1.0, per_s=1_000_000), _row("m", 1000, "api_cache_off", 1.2, per_s=790_000),
        _row("m", 1000, "json_floor", 3.0, per_s=300_000), _row("m", 1000, "http_miss", 4.0, per_s=240_000),
        _row("m", 1, "raw_cold", 1.0), _row("m", 1, "cold", 3.6),
        _row("m", 1, "consistency_check", 0.004),
        _row("m", 1, "raw_cache_get", 0.050), _row("m", 1, "api_hit", 0.101, ratio=2.02),
    ]

    verdicts = {v.line: v for v in budget(rows, "redis")}

    assert {line: v.holds for line, v in verdicts.items()} == {
        "cache off, batch 1: p50 <= raw + 25 µs": False,  # 40 - 10 - 4 (the check, its own line) = 26 µs
        "cache off, batch 1000: >= 0.8x raw predictions/s": False,
        "cold: p50 <= 1.5x raw creation + first run + 2 ms": False,
        "HTTP cache off, batch 1: p50 <= 0.5 ms": True,
        "HTTP cache hit, batch 1: p50 <= 0.5 ms": False,
        "HTTP cache off, batch 1000: >= 0.8x JSON floor predictions/s": True,
        "cache hit: p50 <= 2x raw Redis GET": False,
    }
    assert verdicts["cache off, batch 1: p50 <= raw + 25 µs"].measured == (
        "raw 10.0 µs + 26.0 µs (+ consistency check 4.0 µs) = 40.0 µs")
    assert verdicts["cache off, batch 1000: >= 0.8x raw predictions/s"].measured == "790,000 / 1,000,000 = 0.79x"
    assert [v.line for v in budget(rows, "disk")] == list(verdicts)[:-1]  # no Redis: no GET line


@pytest.mark.parametrize("args, message", [
    (["--models", "iris,nosuch"], "argument --models: nosuch: the sample models are iris, breast_cancer_rf, diabetes"),
    (["--batch-sizes", "0"], "argument --batch-sizes: '0': comma-separated whole numbers >= 1"),
    (["--batch-sizes", "abc"], "argument --batch-sizes: 'abc': comma-separated whole numbers >= 1"),
    (["--seconds", "-1"], "argument --seconds: '-1': a number of seconds > 0"),
    (["--database-url", "nosuch://x"], "ValueError: DATABASE_URL 'nosuch://x' is not a database URL"),
    (["--models", "iris", "--batch-sizes", "1", "--redis-url", "redis://127.0.0.1:1/0"],
     "ServiceUnavailableError: cannot reach Redis at redis://127.0.0.1:1/0"),
])
def test_cli_refuses_bad_arguments_in_one_line_before_measuring(args, message, capsys):
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own refusal
        code = exit_.code

    out = capsys.readouterr()
    assert code == 2 and message in out.err
    assert "Traceback" not in out.err and out.out == ""
