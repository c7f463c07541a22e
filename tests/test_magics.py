"""The IPython magics in a real (kernel-less) IPython shell on both backends, compared to raw onnxruntime."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from sklearn.datasets import load_iris

from modelforge_jupyter import ModelForge
from modelforge_jupyter.cli.bench import LABELS, MAGIC_PATHS, BenchResult, Row, format_row
from modelforge_jupyter.core.bench_stages import format_stages
from modelforge_jupyter.core.errors import ModelForgeError
from modelforge_jupyter.kernel import bench_tables, dashboard
from modelforge_jupyter.core.records import PredictionResult

from .mf_plugin import (
    SAMPLES,
    mf_identity_model,
    mf_make_shell,
    mf_other_setting_value,
    mf_raw_outputs,
    mf_raw_run,
    mf_run_cell,
    mf_zipmap,
)

IRIS, IRIS_V2, RF = SAMPLES / "iris.onnx", SAMPLES / "iris_v2.onnx", SAMPLES / "breast_cancer_rf.onnx"
BAD_VERSION = "UsageError: argument --version: version must be a whole number >= 1, got "


def shown_ms(ms: float) -> str:
    """A time as the prediction's head shows it: one decimal from 1 ms, two below."""
    return f"{ms:,.1f}" if ms >= 1 else f"{ms:.2f}"


def registry_state(forge: ModelForge) -> list[tuple]:
    return [(m.name, m.id, m.version, m.versions) for m in forge.models()]


def test_predict_line_form_equals_raw_onnxruntime_and_displays_a_table(mf_ip, mf_forge):
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")
    X = load_iris().data[:5].astype(np.float32)

    mf_run_cell(mf_ip, "r = %mf_predict iris X --no-cache")
    second = mf_run_cell(mf_ip, '%mf_predict iris {"float_input": X}')
    third = mf_run_cell(mf_ip, "%mf_predict iris X.tolist()")

    r = mf_ip.user_ns["r"]
    assert isinstance(r, PredictionResult) and r.model_id == mf_forge.get("iris").id
    assert r.output_data == mf_raw_outputs(IRIS, {"float_input": X})
    assert (r.cached, second.cached, third.cached) == (False, False, True)
    assert third.output_data == r.output_data
    data, _ = mf_ip.display_formatter.format(r)
    assert "<table" in data["text/html"] and "<th>P(2)</th>" in data["text/html"]
    assert f'<span title="{r.inference_time_ms:.3f} ms">{shown_ms(r.inference_time_ms)} ms</span>' in data["text/html"]
    assert data["text/plain"].splitlines()[0] == f"iris v1 · {shown_ms(r.inference_time_ms)} ms · cache miss"
    assert len(data["text/plain"].splitlines()) == 2 + 1 + 5 + 1  # summary, header, rule, one line per sample, ids


def test_predict_version_and_dataframe(mf_ip):
    import pandas as pd

    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")
    mf_run_cell(mf_ip, f"%mf_update iris {IRIS_V2}")
    X = load_iris().data[:5].astype(np.float32)
    mf_ip.user_ns["df"] = pd.DataFrame(load_iris().data[:5], columns=load_iris().feature_names)

    v1 = mf_run_cell(mf_ip, "%mf_predict iris df --version 1")
    v2 = mf_run_cell(mf_ip, "%mf_predict iris df")

    assert (v1.model_version, v2.model_version) == (1, 2)
    assert v1.output_data["output_probability"] == mf_zipmap(mf_raw_run(IRIS, {"float_input": X})[1])
    assert v2.output_data["output_probability"] == mf_zipmap(mf_raw_run(IRIS_V2, {"float_input": X})[1])


def test_cell_form_takes_the_http_body_and_stores_the_result(mf_ip):
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")
    mf_run_cell(mf_ip, f"%mf_update iris {IRIS_V2}")
    sample = [[5.1, 3.5, 1.4, 0.2]]
    body = orjson.dumps({"input_data": {"float_input": sample}, "use_cache": False, "version": 1}).decode()

    out = mf_run_cell(mf_ip, f"%%mf_predict iris -o r\n{body}")
    bare = [mf_run_cell(mf_ip, f"%%mf_predict iris -o s\n{orjson.dumps(sample).decode()}") for _ in range(2)]

    assert mf_ip.user_ns["r"] is out and (out.model_version, out.cached) == (1, False)
    assert out.output_data["output_label"] == mf_raw_run(IRIS, {"float_input": np.float32(sample)})[0].tolist()
    assert mf_ip.user_ns["s"] is bare[1] and [b.cached for b in bare] == [False, True]
    assert bare[1].model_version == 2


ERRORS = [
    ("%mf_predict nope X", "ModelNotFoundError: model 'nope' is not registered"),
    ("%mf_predict iris Y -o out", "NameError: name 'Y' is not defined (evaluating 'Y')"),
    ("%mf_predict iris X[0] -o out", "InvalidInputError: input 'float_input': expected float32 [?, 4] (rank 2)"),
    ("%mf_predict iris X --versoin 2", "UsageError: unrecognized arguments: --versoin"),
    ("%mf_predict iris X --version two", BAD_VERSION + "'two'"),
    ("%mf_predict iris X --version 3", "ModelNotFoundError: model 'iris' has no version 3"),
    ("%mf_predict iris", "UsageError: give the input"),
    ("%mf_predict iris X -o 1st", "UsageError: -o takes a variable name"),
    ("%%mf_predict iris -o out\n{not json", "InvalidInputError: the cell is not valid JSON"),
    ('%%mf_predict iris -o out\n{"input_data": [[1, 2, 3, 4]], "use_cache": 1}', "InvalidInputError: use_cache"),
    ("%mf_register iris /no/such.onnx", "ModelForgeError: no model file at '/no/such.onnx'"),
    (f"%mf_register iris {IRIS_V2}", "ModelExistsError: model 'iris' is already registered"),
    (f"%mf_register 'bad name' {IRIS}", "ModelForgeError: invalid model name"),
    (f"%mf_update nope {IRIS_V2}", "ModelNotFoundError: model 'nope' is not registered"),
    ("%mf_delete iris --version 9", "ModelNotFoundError: model 'iris' has no version 9"),
    ("%mf_delete", "UsageError: the following arguments are required: name"),
    ("%mf_bench nope", "ModelNotFoundError: model 'nope' is not registered"),
    ("%mf_bench iris [[1, 2]]", "InvalidInputError: input 'float_input': expected float32 [?, 4]"),
    ("%mf_bench iris --seconds 1 --iterations 2", "UsageError: give --seconds or --iterations, not both"),
    ("%mf_bench iris --batch-sizes 1,x", "UsageError: --batch-sizes takes whole numbers"),
    ("%mf_bench iris --batch-sizes 0", "UsageError: --batch-sizes must be >= 1"),
    ("%mf_models everything", "UsageError: %mf_models takes no arguments"),
]


def test_refusals_print_one_line_and_change_nothing(mf_ip, mf_forge, capsys):
    mf_forge.register("iris", IRIS)
    before = registry_state(mf_forge)
    capsys.readouterr()

    for src, message in ERRORS:
        result = mf_ip.run_cell(src)

        out, err = capsys.readouterr()
        assert result.success and result.result is None, src
        assert err.splitlines() == [err.strip()] and err.startswith(message), (src, err)
        assert out == "" and "out" not in mf_ip.user_ns, src
    assert registry_state(mf_forge) == before


VERSION_REFUSALS = [
    ("%mf_delete iris --version ", "UsageError: argument --version: expected one argument"),
    ("%mf_delete iris --version=", BAD_VERSION + "''"),
    ("%mf_delete iris --version 0", BAD_VERSION + "'0'"),
    ("%mf_delete iris --version -1", BAD_VERSION + "'-1'"),
    ("%mf_delete iris --version x", BAD_VERSION + "'x'"),
    ("%mf_delete iris --version 1.0", BAD_VERSION + "'1.0'"),
    ("%mf_delete iris --version 1_0", BAD_VERSION + "'1_0'"),
    ("%mf_delete iris --versoin 1", "UsageError: unrecognized arguments: --versoin 1"),
    ("%mf_delete iris --vers 1", "UsageError: unrecognized arguments: --vers 1"),  # an abbreviation is not taken
    ("%mf_delete iris -version 1", "UsageError: unrecognized arguments: -version 1"),
    ("%mf_delete iris 1", "UsageError: unrecognized arguments: 1"),
    ("%mf_predict iris X --vers 1 -o out", "UsageError: unrecognized arguments: --vers 1"),
    ("%mf_predict iris X --version 0 -o out", BAD_VERSION),
    ("%%mf_predict iris --version 0 -o out\n[[1, 2, 3, 4]]", BAD_VERSION),
    ("%mf_delete iris --version 3", "ModelNotFoundError: model 'iris' has no version 3"),
    # a repeated option is refused, never "the last one wins"
    ("%mf_delete iris --version 1 --version 2", "UsageError: --version is given more than once ('1', then '2')"),
    ("%mf_delete iris --version=2 --version 2", "UsageError: --version is given more than once ('2', then '2')"),
    ("%mf_predict iris X --version 1 --version 2 -o out", "UsageError: --version is given more than once"),
    ("%mf_predict iris X -o out --output out2", "UsageError: -o/--output is given more than once ('out', then"),
    ("%mf_predict iris X --no-cache --no-cache -o out", "UsageError: --no-cache is given more than once (2 times)"),
    ("%%mf_predict iris --version 1 --version 2 -o out\n[[1, 2, 3, 4]]", "UsageError: --version is given more"),
]


def test_a_bad_or_misspelt_version_refuses_in_one_line_and_deletes_nothing(mf_ip, mf_forge, capsys):
    # Given iris at versions 1 and 2
    mf_forge.register("iris", IRIS)
    mf_forge.update("iris", IRIS_V2)
    before = registry_state(mf_forge)
    capsys.readouterr()

    for src, message in VERSION_REFUSALS:
        result = mf_ip.run_cell(src)

        # Then each call refuses in one line, returns nothing, and the registry still has every version
        out, err = capsys.readouterr()
        assert result.success and result.result is None, src
        assert err.splitlines() == [err.strip()] and err.startswith(message), (src, err)
        assert out == "" and "out" not in mf_ip.user_ns, src
        assert registry_state(mf_forge) == before and mf_forge.get("iris").versions == [1, 2], src
    # the API that %mf_delete calls holds the same rule
    for version in (0, -1, True, "1", 1.0):
        with pytest.raises(ModelForgeError, match=r"^version must be a whole number >= 1, got "):
            mf_forge.delete("iris", version)
        assert registry_state(mf_forge) == before, version


def test_a_comment_after_a_magic_is_ignored(mf_ip, mf_forge, tmp_path, capsys):
    # Given iris v1 and v2, and a model file whose path holds a '#'
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}  # first version")
    mf_run_cell(mf_ip, f"%mf_update iris {IRIS_V2}   # --version 1 stays")
    hashed = tmp_path / "rf#2.onnx"
    hashed.write_bytes(RF.read_bytes())
    mf_ip.user_ns["d"] = {"a#b": load_iris().data[:2]}
    capsys.readouterr()

    table = mf_run_cell(mf_ip, "%mf_models   # list them")
    r = mf_run_cell(mf_ip, "r = %mf_predict iris X   # try --version 1 later\nr")
    keyed = mf_run_cell(mf_ip, '%mf_predict iris d["a#b"] --no-cache  # the "#" in the key is no comment')
    cell = mf_run_cell(mf_ip, "%%mf_predict iris -o c  # as JSON\n[[5.1, 3.5, 1.4, 0.2]]")
    mf_run_cell(mf_ip, f"%mf_register rf '{hashed}'  # quoted: its '#' is the path's")
    bench = mf_run_cell(mf_ip, "%mf_bench iris X --iterations 2 --warmup 0 --no-cache --text;  # quick")
    mf_run_cell(mf_ip, "%mf_delete iris --version 1  # the old one")

    out, err = capsys.readouterr()
    assert err == ""
    assert [r.name for r in table.records] == ["iris"] and table.rows[0][1] == "1, 2"
    assert r.model_version == 2 and r.output_data["output_label"] == mf_raw_run(
        IRIS_V2, {"float_input": X5()})[0].tolist()
    assert keyed.model_version == 2 and keyed.output_data["output_label"] == mf_raw_run(
        IRIS_V2, {"float_input": X5()[:2]})[0].tolist()
    assert mf_ip.user_ns["c"] is cell and cell.model_version == 2
    assert mf_forge.get("rf").size_bytes == RF.stat().st_size
    assert bench is not None and bench.batch_sizes == (5,)
    assert mf_forge.get("iris").versions == [2]
    assert "✓ deleted iris (v1, " in out


def X5() -> np.ndarray:
    return load_iris().data[:5].astype(np.float32)


def test_magics_inside_a_function_see_its_locals(mf_ip, mf_forge, capsys):
    # Given iris, and a global `rows` that the function's local `rows` shadows
    mf_forge.register("iris", IRIS)
    mf_ip.user_ns["rows"] = [[0.0, 0.0, 0.0, 0.0]]

    mf_run_cell(mf_ip, "\n".join([
        "def f(n):",
        "    rows = X[:n]",
        "    out = %mf_predict iris rows --no-cache",
        "    comp = get_ipython().run_line_magic('mf_predict', 'iris [rows[i] for i in range(n)] --no-cache')",
        "    res = %mf_bench iris rows --iterations 2 --warmup 0 --no-cache --text",
        "    return out, comp, res",
        "out, comp, res = f(3)",
    ]))

    out, comp, res = (mf_ip.user_ns[k] for k in ("out", "comp", "res"))
    assert capsys.readouterr().err == ""
    expected = mf_raw_outputs(IRIS, {"float_input": X5()[:3]})
    for r in (out, comp):
        assert r.output_data == expected
    assert res.batch_sizes == (3,)  # the local's 3 rows, not the global's 1


def test_mf_register_refuses_a_name_that_is_another_models_id(mf_ip, mf_forge, capsys):
    rec = mf_forge.register("iris", IRIS)
    before = registry_state(mf_forge)
    capsys.readouterr()

    mf_ip.run_cell(f"%mf_register {rec.id} {IRIS_V2}")

    assert capsys.readouterr().err == (
        f"ModelForgeError: invalid model name {rec.id!r}: it has the form of a model id (a uuid), and a name must "
        "never be taken for an id; choose another name\n"
    )
    assert registry_state(mf_forge) == before


@pytest.mark.parametrize("mf_backend", ["embedded"])
def test_a_setting_out_of_range_in_the_environment_is_one_line(mf_ip, monkeypatch, capsys):
    monkeypatch.setenv("MODELFORGE_MODEL_INSTANCES", "0")

    assert mf_ip.run_line_magic("mf_models", "") is None

    assert capsys.readouterr().err == (
        "ModelForgeError: cannot start ModelForge: model_instances must be a whole number from 1 to 1024, got 0\n")


def test_register_update_delete_and_models_table(mf_ip, mf_forge, capsys):
    mf_ip.user_ns["path"] = str(SAMPLES / "diabetes.onnx")

    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")
    mf_run_cell(mf_ip, "%mf_register diabetes $path")
    mf_run_cell(mf_ip, "table = %mf_models")

    table, iris, diabetes = mf_ip.user_ns["table"], mf_forge.get("iris"), mf_forge.get("diabetes")
    assert capsys.readouterr().out.splitlines() == [
        "✓ registered iris v1",
        "  inputs   float32 [?, 4]",
        "  outputs  output_label int64 [?], output_probability map per row",
        "✓ registered diabetes v1",
        "  inputs   float32 [?, 10]",
        "  outputs  variable float32 [?, 1]",
    ]
    assert table.columns == ["name", "versions", "inputs", "outputs", "size", "updated", "id"]
    text = repr(table).splitlines()
    assert text[0].split() == table.columns and [line.split()[:4] for line in text[2:]] == [
        ["diabetes", "1", "float32", "[?,"], ["iris", "1", "float32", "[?,"]]
    assert text[3].split("  ")[-1] == iris.id[:8] and f"{IRIS.stat().st_size} B" in text[3]
    assert f'<code title="{diabetes.id}">{diabetes.id[:8]}</code>' in table._repr_html_()
    assert list(table.to_df()["id"]) == [diabetes.id, iris.id]

    mf_run_cell(mf_ip, f"%mf_update iris {IRIS_V2}")
    mf_run_cell(mf_ip, f"%mf_update iris {IRIS_V2}")
    mf_run_cell(mf_ip, "%mf_delete iris --version 1")
    assert mf_forge.get("iris").versions == [2]
    mf_run_cell(mf_ip, "%mf_delete iris")

    assert capsys.readouterr().out.splitlines() == [
        "✓ updated iris to v2 (versions 1, 2)",
        "  inputs   float32 [?, 4]",
        "  outputs  output_label int64 [?], output_probability map per row",
        "iris unchanged: v2 already has these bytes",
        f"✓ deleted iris (v1, id {iris.id})",
        f"✓ deleted iris (all versions, id {iris.id})",
    ]
    assert [m.name for m in mf_forge.models()] == ["diabetes"]
    mf_run_cell(mf_ip, "%mf_delete diabetes")
    assert repr(mf_run_cell(mf_ip, "%mf_models")) == "no models registered: %mf_register NAME PATH adds one"


def test_config_overrides_the_environment_and_rebuilds(tmp_path, monkeypatch):
    # Given the environment names registry A, and a shell without config
    env_url, cfg_url = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    monkeypatch.setenv("DATABASE_URL", env_url)
    monkeypatch.setenv("MODELFORGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("CELERY_BROKER_URL", "")
    shell = mf_make_shell()
    try:
        magics = shell.magics_manager.registry["ModelForgeMagics"]
        mf_run_cell(shell, f"%mf_register iris {IRIS}")
        first = magics.forge
        # When %config names registry B
        mf_run_cell(shell, f"%config ModelForgeMagics.database_url = '{cfg_url}'")
        assert magics._forge is None  # closed; rebuilt on next use
        assert len(mf_run_cell(shell, "%mf_models")) == 0
        mf_run_cell(shell, f"%mf_register rf {RF}")
        mf_run_cell(shell, "%config ModelForgeMagics.cache_prediction_enabled = False")
        shell.user_ns["X"] = [[5.1, 3.5, 1.4, 0.2]]
        mf_run_cell(shell, f"%mf_register iris {IRIS}")
        cached = [mf_run_cell(shell, "%mf_predict iris X").cached for _ in range(2)]
    finally:
        shell.run_line_magic("unload_ext", "modelforge_jupyter")
        InteractiveShell.clear_instance()

    # Then each registry holds what was registered while it was configured
    assert magics.forge is not first and first.settings.database_url == env_url
    assert cached == [False, False]
    with ModelForge(database_url=env_url) as a, ModelForge(database_url=cfg_url) as b:
        assert [m.name for m in a.models()] == ["iris"]
        assert [m.name for m in b.models()] == ["iris", "rf"]


def test_config_sets_every_setting_of_the_table_and_the_rebuilt_forge_uses_them(mf_redis, mf_redis_url, tmp_path,
                                                                                 monkeypatch):
    from modelforge_jupyter.core.settings import ENV_VARS, SETTINGS

    # Given a shell whose environment sets no setting, and for each setting of the table a value other than its default
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODELFORGE_DATA_DIR", str(tmp_path / "data"))
    values = {s.name: mf_other_setting_value(s.name, tmp_path, mf_redis_url) for s in SETTINGS} | {
        "cache_key_prefix": mf_redis[1]}
    shell = mf_make_shell()
    try:
        magics = shell.magics_manager.registry["ModelForgeMagics"]
        first = magics.forge
        # When each is set with %config
        for name, value in values.items():
            mf_run_cell(shell, f"%config ModelForgeMagics.{name} = {value!r}")
        forge = magics.forge
        settings = {name: getattr(forge.settings, name) for name in values}
    finally:
        shell.run_line_magic("unload_ext", "modelforge_jupyter")
        InteractiveShell.clear_instance()

    # Then the ModelForge was rebuilt with every one of them
    assert forge is not first and settings == values

def check_bench_result(res: BenchResult, batch_sizes: tuple, paths: tuple, iterations: int) -> None:
    assert isinstance(res, BenchResult) and res.batch_sizes == batch_sizes
    table = res.table
    assert list(table.columns) == list(Row.__dataclass_fields__) and len(table) == len(batch_sizes) * len(paths)
    assert list(zip(table["batch"], table["path"])) == [(b, p) for b in batch_sizes for p in paths]
    numbers = table[["p50_ms", "p95_ms", "p99_ms", "predictions_per_s", "ratio_p50"]]
    assert (numbers > 0).all().all() and (table["iterations"] == iterations).all()
    assert (table["p50_ms"] <= table["p99_ms"]).all()
    assert (table[table["path"].str.startswith("raw")]["ratio_p50"] == 1.0).all()
    d = orjson.loads(orjson.dumps(res.to_dict()))
    assert d["rows"] == table.to_dict("records") and d["budget"]["iterations"] == iterations
    assert d["model"] == res.model and d["batch_sizes"] == list(batch_sizes)


def test_bench_text_fallback_prints_rows_and_returns_a_result(mf_ip, capsys):
    mf_run_cell(mf_ip, f"%mf_register rf {RF}")
    capsys.readouterr()

    mf_run_cell(mf_ip, "res = %mf_bench rf --batch-sizes 1,10 --iterations 3 --warmup 1")

    res = mf_ip.user_ns["res"]
    check_bench_result(res, (1, 10), MAGIC_PATHS, 3)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "%mf_bench rf: ModelForge beside raw ONNX Runtime (10 cells)"
    assert "p95 ms" in lines[1] and lines[-1] == res.backend
    figures = lines[3:3 + len(res.rows)]
    assert [line.split()[:3] for line in figures] == [["rf", str(r.batch), r.path] for r in res.rows]
    assert lines[3 + len(res.rows):-1] == format_stages(res.rows)  # then where the time goes


def test_bench_dashboard_fills_in_while_it_runs(mf_ip, monkeypatch):
    shown, steps = [], []
    show = dashboard.BenchDashboard.show

    def watch(view):  # the dashboard is displayed before the first measurement
        shown.append(view)
        view.progress.observe(lambda ch: steps.append((ch.new, view.table.value.count("…"), view.phase.value)),
                              "value")
        show(view)

    monkeypatch.setattr(dashboard.BenchDashboard, "show", watch)
    mf_run_cell(mf_ip, "%config ModelForgeMagics.widgets = 'on'")
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")

    with capture_output() as captured:
        res = mf_run_cell(mf_ip, "%mf_bench iris X --batch-sizes 1,10,100 --iterations 2 --warmup 0")

    check_bench_result(res, (1, 10, 100), MAGIC_PATHS, 2)
    (view,) = shown
    box = view.box
    # the dashboard's display, its update when the run ended, then the plot and every figure as ordinary outputs
    first, last, plot, table = captured.outputs
    assert (first.update, last.update) == (False, True) and first.transient == last.transient
    for out in (first, last):
        assert out.data["application/vnd.jupyter.widget-view+json"]["model_id"] == box.model_id
        assert "text/html" not in out.data  # the figures are in the outputs below it: never twice
    assert first.data["text/plain"].splitlines()[0] == (
        "%mf_bench iris: ModelForge beside raw ONNX Runtime, 0/15 cells, running")
    assert last.data["text/plain"].splitlines()[0] == (
        "%mf_bench iris: ModelForge beside raw ONNX Runtime, 15/15 cells, done")
    assert base64.b64decode(plot.data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n" and "plot" in plot.data["text/plain"]
    assert (table.data["text/plain"], table.data["text/html"]) == (repr(res), dashboard.bench_result_html(res))
    assert not any("widget-view" in k for o in (plot, table) for k in o.data)
    # the progress bar named each cell before it ran, with the elapsed time and (after the first) an ETA
    assert (view.progress.value, view.progress.max, view.progress.bar_style) == (15, 15, "success")
    assert [s[0] for s in steps] == list(range(1, 16))
    assert "3/15 · measuring batch 1 · warm (cache off)" in steps[2][2] and "left" in steps[2][2]
    assert "measuring batch 100 · cache hit" in steps[-2][2] and "15/15 · done in" in view.phase.value
    pending = [s[1] for s in steps]  # "…" until measured
    assert pending == sorted(pending, reverse=True) and pending[0] > 0 and pending[-1] == 0
    # one row per path, one column per batch size, p50 by default; the switch shows p95, p99, predictions/s
    body = view.table.value.split("<tbody>")[1]
    assert body.count("<tr>") == 5 and view.table.value.count("<th>") == 4
    assert (view.metric.options, view.metric.value) == (("p50", "p95", "p99", "pred/s"), "p50")
    for metric, field in (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"), ("pred/s", "predictions_per_s")):
        view.metric.value = metric
        for r in res.rows:
            assert f"<td>{bench_tables.fmt_value(getattr(r, field), field)}" in view.table.value
    raw = {r.batch: r for r in res.rows if r.path == "raw_ort"}
    for r in res.rows:
        if r.path == "api_cache_off":  # the ratio to raw as a coloured suffix
            assert bench_tables.fmt_ratio(raw[r.batch].predictions_per_s / r.predictions_per_s) in view.table.value
    assert res.backend in view.foot.value and len(box.children) == 5


def test_bench_result_shows_its_figures_as_text_and_html(mf_ip):
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")

    res = mf_run_cell(mf_ip, "%mf_bench iris --batch-sizes 1,4 --iterations 2 --warmup 0 --text")
    data, _ = mf_ip.display_formatter.format(res)

    lines = data["text/plain"].splitlines()
    assert lines[0] == (f"BenchResult iris v1: 10 rows over batch sizes [1, 4] ({res.backend}); .table, .to_dict()")
    assert lines[3:3 + len(res.rows)] == [format_row(r) for r in res.rows]  # the backend is in the first line
    assert lines[3 + len(res.rows):] == format_stages(res.rows)  # then where the time goes; no notes here
    assert repr(res) == data["text/plain"]
    page = data["text/html"]
    figures, split = page.split("</table>")[:2]
    body = figures.split("<tbody>")[1]
    # every figure: one row per path and batch size (the path named once), p50/p95/p99, pred/s, × raw p50
    assert body.count("<tr>") == 10 and res.backend in page
    assert figures.count("<th>") == len(bench_tables.FULL_COLUMNS) and "colspan" not in page
    # where the time goes: a row per ModelForge cell, the stages it went through (a cache hit only its lookup)
    assert "cache_hit µs" in split and "compute_infer µs" in split and split.count("<tr>") == 1 + 6
    hit = next(r for r in res.rows if r.path == "api_hit" and r.batch == 4)
    assert [s for s, _ in hit.stages_us] == ["cache_hit"]
    for r in res.rows:
        cells = [bench_tables.fmt_value(getattr(r, f), f) for f in ("p50_ms", "p95_ms", "p99_ms", "predictions_per_s")]
        assert f"<td>{r.batch}</td>" + "".join(f"<td>{c}</td>" for c in cells) in body
        if r.path in ("cold", "api_cache_off", "api_hit"):
            assert f">{bench_tables.fmt_ratio(r.ratio_p50)}</small>" in body
    assert body.count(f"<td>{LABELS['cold']}</td>") == 1


def test_a_bare_bench_shows_its_figures_once_and_the_result_again_later(mf_ip):
    # Given the widget dashboard
    mf_run_cell(mf_ip, "%config ModelForgeMagics.widgets = 'on'")
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")

    # When a cell is just the magic (its value goes to the display hook), then a later cell shows the result
    with capture_output() as bare:
        res = mf_run_cell(mf_ip, "%mf_bench iris --batch-sizes 1 --iterations 2 --warmup 0 --no-cache")
    with capture_output() as later:
        mf_run_cell(mf_ip, "_")

    # Then the cell showed the dashboard, the plot and the table once, and no Out[] repr of the BenchResult
    assert isinstance(res, BenchResult) and mf_ip.user_ns["_"] is res
    assert len(bare.outputs) == 4 and "BenchResult" not in bare.stdout
    assert sum("text/html" in o.data for o in bare.outputs) == 1
    # and the later cell shows it as any value: nothing left of the first cell's suppression
    assert later.stdout.startswith("Out[") and "BenchResult iris v1: 4 rows" in later.stdout
    assert id(res) not in mf_ip.display_formatter.ipython_display_formatter.singleton_printers


def test_a_stopped_bench_says_so_and_leaves_what_it_measured(mf_ip, monkeypatch):
    # Given a run interrupted (Ctrl-C) after its third cell
    update = dashboard.BenchDashboard.update

    def interrupted(view, done, total, row):
        update(view, done, total, row)
        if done == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(dashboard.BenchDashboard, "update", interrupted)
    mf_run_cell(mf_ip, "%config ModelForgeMagics.widgets = 'on'")
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")

    with capture_output() as captured:
        stopped = mf_ip.run_cell("%mf_bench iris --batch-sizes 1,10 --iterations 2 --warmup 0")

    # Then the dashboard says where it stopped, and the three figures measured stay as an ordinary output
    assert isinstance(stopped.error_in_exec, KeyboardInterrupt)
    first, last, partial = captured.outputs
    assert last.data["text/plain"].splitlines()[0].endswith("3/10 cells, stopped")
    head = "%mf_bench iris stopped after 3/10 cells: the figures measured"
    text = partial.data["text/plain"].splitlines()
    assert text[0] == head and [line.split()[2] for line in text[3:]] == ["raw_cold", "cold", "raw_ort"]
    assert partial.data["text/html"].split("<tbody>")[1].count("<tr>") == 3


def test_bench_of_a_fixed_batch_model_measures_only_its_batch(mf_ip, mf_forge, capsys):
    # Given a model whose input is float32 [1, 4]: one row per run
    mf_forge.register("one", mf_identity_model("float32", [1, 4]))

    res = mf_run_cell(mf_ip, "%mf_bench one --iterations 2 --warmup 0 --text")
    refused = mf_ip.run_cell("%mf_bench one --batch-sizes 10,100")

    out, err = capsys.readouterr()
    assert res.batch_sizes == (1,) and {r.batch for r in res.table.itertuples()} == {1}
    note = "batch sizes 10, 100, 1000 not measured: one v1 takes batch 1 only (input 'x' is float32 [1, 4])"
    assert res.notes == (note,) and out.splitlines()[-1] == note
    assert refused.result is None and err == (
        "InvalidInputError: batch sizes 10, 100 cannot run: one v1 takes batch 1 only (input 'x' is float32 [1, 4])\n")


def test_bench_input_expression_no_cache_and_sample_inputs_of_any_dtype(mf_ip, mf_forge):
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")
    mf_forge.register("ident", mf_identity_model("string", ["N", "T"]))
    mf_forge.register("ident8", mf_identity_model("int8", ["N", 2]))

    res = mf_run_cell(mf_ip, "%mf_bench iris X --no-cache --iterations 2 --text")
    idents = [mf_run_cell(mf_ip, f"%mf_bench {n} --batch-sizes 1,3 --iterations 2 --no-cache")
              for n in ("ident", "ident8")]

    no_hit = tuple(p for p in MAGIC_PATHS if p != "api_hit")
    check_bench_result(res, (5,), no_hit, 2)  # the batch of X
    for r in idents:
        check_bench_result(r, (1, 3), no_hit, 2)


def test_unload_closes_the_forge_and_removes_the_magics(mf_ip, monkeypatch):
    magics = mf_ip.magics_manager.registry["ModelForgeMagics"]
    forge = magics.forge
    closed, close = [], forge.close
    monkeypatch.setattr(forge, "close", lambda: (closed.append(forge), close()))

    mf_ip.run_line_magic("unload_ext", "modelforge_jupyter")

    assert closed == [forge] and magics._forge is None and magics not in mf_ip.configurables
    magic_names = mf_ip.magics_manager.magics
    assert "mf_predict" not in magic_names["line"] and "mf_predict" not in magic_names["cell"]
    assert PredictionResult not in mf_ip.display_formatter.formatters["text/html"].type_printers
    mf_ip.run_line_magic("load_ext", "modelforge_jupyter")
    assert len(mf_run_cell(mf_ip, "%mf_models")) == 0
