"""The magics in a real ipykernel, driven by nbclient as ``jupyter execute`` would, on the embedded backend."""

from __future__ import annotations

import base64
import json
import re

import nbformat
import numpy as np
import onnx
from nbclient import NotebookClient
from nbconvert import HTMLExporter, MarkdownExporter
from nbformat.v4 import new_code_cell, new_notebook

from modelforge_jupyter import ModelForge
from modelforge_jupyter.kernel import bench_tables

from .mf_plugin import SAMPLES, mf_identity_model, mf_raw_outputs, mf_raw_run

IRIS = SAMPLES / "iris.onnx"
SAMPLE = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]

# a kernel's ModelForge: the embedded backend, and one intra-op thread per core (the servers keep one per session)
KERNEL_BACKEND = ("registry sqlite, cache disk, intra-op threads 0 here (kernels 0: intra_op_num_threads, servers 1: "
                  "server_intra_op_num_threads; 0 = one per core)")


def widget_states(nb) -> dict[str, list[dict]]:
    """``{model_name: [state, ...]}`` of the widgets nbclient stored in the notebook metadata."""
    states: dict[str, list[dict]] = {}
    for w in nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"].values():
        states.setdefault(w["model_name"], []).append(w["state"])
    return states


def kernel_env(tmp_path, monkeypatch) -> str:
    """An environment with no ModelForge settings but an isolated data dir; returns the registry URL to configure."""
    for var in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CACHE_KEY_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODELFORGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return f"sqlite:///{tmp_path / 'registry.db'}"


def execute(nb, tmp_path) -> None:
    """Run ``nb`` in a real kernel (the venv's python3 kernelspec), as ``jupyter execute`` does."""
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.validate(nb)


def test_notebook_registers_predicts_and_benchmarks_in_a_kernel(tmp_path, monkeypatch):
    # Given a kernel whose environment has no ModelForge settings but an isolated data dir
    url = kernel_env(tmp_path, monkeypatch)
    nb = new_notebook(cells=[
        new_code_cell(f"%load_ext modelforge_jupyter\n%config ModelForgeMagics.database_url = '{url}'"),
        new_code_cell(f"%mf_register iris {IRIS}"),
        new_code_cell(f"import json\nX = {SAMPLE}\nr = %mf_predict iris X\nprint(json.dumps(r.output_data))\nr"),
        new_code_cell("%mf_predict nope X"),
        new_code_cell("%mf_bench iris X --batch-sizes 1,10 --iterations 3 --warmup 1"),
        new_code_cell("res = _\nprint(len(res.rows), res.batch_sizes, res.backend)"),
        new_code_cell("%mf_bench iris --batch-sizes 2 --iterations 2 --no-cache --text;"),
    ])

    # When it runs in a real kernel (the venv's python3 kernelspec), as `jupyter execute` does
    execute(nb, tmp_path)

    # Then every cell answered as in a notebook frontend
    load, register, predict, refused, bench, summary, text = (c.outputs for c in nb.cells)
    assert load == []
    with ModelForge(database_url=url) as mf:
        rec = mf.get("iris")
    assert [(o["name"], o["text"]) for o in register] == [("stdout", "✓ registered iris v1\n  inputs   float32 [?, 4]\n"
                                                          "  outputs  output_label int64 [?], output_probability "
                                                          "map per row\n")]
    printed, shown = predict
    assert json.loads(printed["text"]) == mf_raw_outputs(IRIS, {"float_input": np.float32(SAMPLE)})
    assert shown["output_type"] == "execute_result" and "<table" in shown["data"]["text/html"]
    assert re.fullmatch(r"iris v1 · [\d.,]+ ms · cache miss", shown["data"]["text/plain"].splitlines()[0])
    assert shown["data"]["text/plain"].splitlines()[-1].startswith(f"model id {rec.id} · prediction id ")
    assert [(o["name"], o["text"]) for o in refused] == [
        ("stderr", "ModelNotFoundError: model 'nope' is not registered; %mf_models lists the registered models\n")]
    # a bare %mf_bench: the dashboard (a widget view, nothing on stdout), then the plot and the table of every
    # figure as ordinary outputs; no execute_result (the returned BenchResult is not shown a second time)
    dash, plot, table = bench
    assert [o["output_type"] for o in bench] == ["display_data"] * 3
    assert "application/vnd.jupyter.widget-view+json" in dash["data"] and "text/html" not in dash["data"]
    assert dash["data"]["text/plain"].splitlines()[0].endswith("10/10 cells, done")
    assert base64.b64decode(plot["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert table["data"]["text/plain"].startswith("BenchResult iris v1: 10 rows")
    assert table["data"]["text/html"].split("<tbody>")[1].split("</tbody>")[0].count("<tr>") == 10
    states = widget_states(nb)  # the dashboard's final state, stored by nbclient
    ((progress,), (switch,)) = states["IntProgressModel"], states["ToggleButtonsModel"]
    assert (progress["value"], progress["max"], progress["bar_style"]) == (10, 10, "success")
    assert (switch["_options_labels"], switch["index"]) == (["p50", "p95", "p99", "pred/s"], 0)
    (compact,) = [s["value"] for s in states["HTMLModel"] if "<tbody>" in s["value"]]
    assert compact.split("<tbody>")[1].count("<tr>") == 5 and "…" not in compact
    assert "OutputModel" not in states  # the plot is an ordinary output, not inside the widget
    assert summary[0]["text"] == f"10 (1, 10) {KERNEL_BACKEND}\n"
    # --text in a kernel: the rows on stdout as they are measured, then the plot as a plain image output
    *rows, plot, returned = text
    assert {o["name"] for o in rows} == {"stdout"} and plot["output_type"] == "display_data"
    assert [line.split()[:3] for line in "".join(o["text"] for o in rows).splitlines()[3:7]] == [
        ["iris", "2", p] for p in ("raw_cold", "cold", "raw_ort", "api_cache_off")]
    assert base64.b64decode(plot["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot["data"]["text/plain"].startswith("[plot: iris v1, p50 latency (ms, band to p95)")
    assert returned["data"]["text/plain"].startswith("BenchResult iris v1: 4 rows")


def test_comments_function_locals_and_a_fixed_batch_bench_in_a_kernel_render_without_widgets(tmp_path, monkeypatch):
    # Given a kernel, iris, and a model whose input fixes the batch at 1 (float32 [1, 4])
    url = kernel_env(tmp_path, monkeypatch)
    one = tmp_path / "one.onnx"
    onnx.save(mf_identity_model("float32", [1, 4]), one)
    nb = new_notebook(cells=[
        new_code_cell(f"%load_ext modelforge_jupyter\n%config ModelForgeMagics.database_url = '{url}'\n"
                      f"%mf_register iris {IRIS}\n%mf_register one {one}"),
        new_code_cell("%mf_models   # list them"),
        new_code_cell("def f():\n    rows = " + repr(SAMPLE) + "\n    out = %mf_predict iris rows --no-cache\n"
                      "    return out\nprint(f().output_data['output_label'])"),
        new_code_cell("res = %mf_bench one --iterations 3 --warmup 1   # a tiny budget"),
        new_code_cell("import json\nprint(json.dumps(res.to_dict()))"),
        new_code_cell("res"),
    ])

    # When it runs in a real kernel, then `jupyter nbconvert --to markdown` renders it (no widgets there)
    execute(nb, tmp_path)
    markdown, _ = MarkdownExporter().from_notebook_node(nb)  # what `jupyter nbconvert --to markdown` writes

    # Then the comment was no argument, the function's local was seen, and only batch 1 ran
    _, models, local, bench, dumped, shown = (c.outputs for c in nb.cells)
    assert [o["output_type"] for o in models] == ["execute_result"]
    assert models[0]["data"]["text/plain"].splitlines()[2].startswith("iris ")
    label = mf_raw_run(IRIS, {"float_input": np.float32(SAMPLE)})[0]
    assert [(o["name"], o["text"]) for o in local] == [("stdout", f"{label.tolist()}\n")]
    result = json.loads(dumped[0]["text"])
    rows = result["rows"]
    assert result["batch_sizes"] == [1] and {r["batch"] for r in rows} == {1} and len(rows) == 5
    note = "batch sizes 10, 100, 1000 not measured: one v1 takes batch 1 only (input 'x' is float32 [1, 4])"
    assert result["notes"] == [note]
    # the dashboard (its text/plain: the p50 table, the batch sizes the model cannot take empty), then the plot and
    # the table of every figure as ordinary outputs; `res` in a later cell shows the result as any value
    dash, plot, table = bench
    assert "application/vnd.jupyter.widget-view+json" in dash["data"]
    header, _, *lines = dash["data"]["text/plain"].splitlines()[1:]
    assert header.split()[-4:] == ["1", "10", "100", "1000"] and lines[-2:] == [note, KERNEL_BACKEND]
    assert [line.split()[-3:] for line in lines[:-2]] == [["—"] * 3] * 5
    assert "image/png" in plot["data"] and table["data"] == shown[0]["data"]
    assert (shown[0]["output_type"], "<table" in shown[0]["data"]["text/html"]) == ("execute_result", True)
    # what nbconvert renders without widget state (markdown, HTML): every figure of the bench cell, then of `res`
    nb.metadata.pop("widgets", None)
    page, _ = HTMLExporter().from_notebook_node(nb)
    for r in rows:
        assert f"{r['p50_ms']:.4f}" in shown[0]["data"]["text/plain"]
        cells = "".join(f"<td>{bench_tables.fmt_value(r[f], f)}</td>" for f in ("p50_ms", "p95_ms", "p99_ms"))
        assert markdown.count(cells) == 2 and page.count(cells) == 2
    assert markdown.count(note.replace("'", "&#x27;")) == 2  # under the two tables of every figure
    assert "VBox(" not in markdown + page, (markdown + page)[(markdown + page).find("VBox(") - 300:][:600]


def test_config_of_any_setting_takes_effect_in_a_kernel(tmp_path, monkeypatch):
    # Given a kernel, iris registered, and answers limited by %config to 16 bytes of outputs (a setting of the core's
    # table that the magics had no trait for: %config refused it as an unknown trait)
    url = kernel_env(tmp_path, monkeypatch)
    monkeypatch.delenv("MODELFORGE_MAX_OUTPUT_BYTES", raising=False)
    nb = new_notebook(cells=[
        new_code_cell(f"%load_ext modelforge_jupyter\n%config ModelForgeMagics.database_url = '{url}'\n"
                      f"%mf_register iris {IRIS}\nX = {SAMPLE}"),
        new_code_cell("%config ModelForgeMagics.max_output_bytes = 16\nr = %mf_predict iris X --no-cache\nprint(r)"),
        new_code_cell("%config ModelForgeMagics.max_output_bytes = 0\n"
                      "r = %mf_predict iris X --no-cache\nprint(r.output_data['output_label'])"),
    ])

    # When it runs in a real kernel
    execute(nb, tmp_path)

    # Then three rows' outputs were refused (413, one line on stderr) under the limit, and served once it was lifted
    _, limited, unlimited = (c.outputs for c in nb.cells)
    streams = {o["name"]: o["text"] for o in limited}  # stdout and stderr: their order is the kernel's flushing
    assert sorted(streams) == ["stderr", "stdout"] and streams["stdout"] == "None\n"
    assert streams["stderr"].startswith("ResourceLimitError: the answer of model 'iris' would hold ")
    assert "the limit is 16 bytes (max_output_bytes" in streams["stderr"] and streams["stderr"].count("\n") == 1
    label = mf_raw_run(IRIS, {"float_input": np.float32(SAMPLE)})[0]
    assert [(o["name"], o["text"]) for o in unlimited] == [("stdout", f"{label.tolist()}\n")]
