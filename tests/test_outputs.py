"""What the kernel door shows, read at a glance: the mimebundles of a prediction, ``%mf_models``, the register and
update lines, the refusal hints and the bench plot, in a real IPython shell on the sample models."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from modelforge_jupyter.cli.bench import LABELS, BenchResult, Budget, Row
from modelforge_jupyter.core.errors import ModelExistsError
from modelforge_jupyter.kernel import bench_plot, bench_tables, markup, model_list, outputs
from modelforge_jupyter.core.records import PredictionResult

from .mf_plugin import SAMPLES, mf_raw_run, mf_run_cell

IRIS, IRIS_V2, RF, DIABETES = (SAMPLES / f for f in ("iris.onnx", "iris_v2.onnx", "breast_cancer_rf.onnx",
                                                     "diabetes.onnx"))
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
X3 = np.float32([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])
EMBEDDED = pytest.mark.parametrize("mf_backend", ["embedded"])


def bundle(shell, obj) -> tuple[str, str]:
    data, _ = shell.display_formatter.format(obj)
    return data["text/plain"], data["text/html"]


def check_fits_and_themes(page: str) -> None:
    """HTML that fits a 1,000 px output area in either JupyterLab theme: no fixed width, tables scroll in their own
    div, text in the theme's colour, every colour a theme variable (with a fallback) or semi-transparent."""
    assert "max-width: 100%" in page and "var(--jp-ui-font-color1, inherit)" in page
    assert not re.search(r"width:\s*\d+px", page) and "text-align: left" in page
    if "<table" in page:
        assert page.count('<div class="mf-out" style="max-width: 100%; overflow-x: auto">') == page.count("<table")
    for colour in re.findall(r"(?:color|background):\s*([^;\"]+)", page):
        assert colour.startswith(("var(--jp-", "rgba(", "inherit")), colour


# -- a prediction -------------------------------------------------------------------------------------------------
def test_a_prediction_leads_with_name_time_and_cache_status(mf_ip, mf_forge):
    # Given iris registered under the name the user types
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")
    mf_ip.user_ns["X"] = X3

    # When the same input is predicted twice (a miss, then a hit)
    miss = mf_run_cell(mf_ip, "%mf_predict iris X")
    hit = mf_run_cell(mf_ip, "%mf_predict iris X")

    # Then each head names the model as typed (no uuid), with its time and whether the cache answered
    assert (miss.cached, hit.cached, miss.model_name) == (False, True, "iris")
    rec = mf_forge.get("iris")
    for r, status in ((miss, "cache miss"), (hit, "cache hit")):
        text, page = bundle(mf_ip, r)
        ms = outputs.fmt_ms(r.inference_time_ms)
        head = text.splitlines()[0]
        assert head == f"iris v1 · {ms} ms · {status}" and not UUID.search(head)
        assert text.splitlines()[-1] == f"model id {rec.id} · prediction id {r.prediction_id}"  # small print
        badge = re.search(r'<span title="cached=\w+" style="background: (rgba\([^)]*\))[^>]*>([^<]*)</span>', page)
        assert badge and badge.group(2) == status and badge.group(1) == outputs.BADGES[status]
        assert f'<b title="model id {rec.id}">iris</b> v1 · <span title="{r.inference_time_ms:.3f} ms">{ms} ms' in page
        check_fits_and_themes(page)
    assert outputs.BADGES["cache hit"] != outputs.BADGES["cache miss"]

    # and the table puts the label first, emphasised, then each class probability with three fixed decimals
    label, proba = mf_raw_run(IRIS, {"float_input": X3})
    text, page = bundle(mf_ip, miss)
    lines = text.splitlines()
    assert lines[1].split() == ["row", "output_label", "P(0)", "P(1)", "P(2)"]
    want = [[str(i), str(label[i])] + [outputs.fmt_probability(proba[i][k]) for k in (0, 1, 2)] for i in range(3)]
    assert [line.split() for line in lines[3:6]] == want
    assert want[0][4] == "<0.001" and proba[0][2] < 0.001  # 1.4e-08 on the raw run
    assert all(re.fullmatch(r"<0\.001|>0\.999|\d\.\d{3}", c) for row in want for c in row[2:])
    body = page.split("<tbody>")[1]
    assert body.startswith(f"<tr><td>0</td><td><b>{label[0]}</b></td><td>{want[0][2]}</td>")
    assert "&lt;0.001" in body and "e-0" not in body


@EMBEDDED
def test_label_first_for_tensor_outputs_and_one_float_format_per_column(mf_ip):
    mf_run_cell(mf_ip, f"%mf_register rf {RF}")
    mf_run_cell(mf_ip, f"%mf_register diabetes {DIABETES}")
    mf_ip.user_ns["B"], mf_ip.user_ns["D"] = np.float32([[1.0] * 30] * 2), np.float32([[0.01] * 10, [1e-9] * 10])

    rf_text, _ = bundle(mf_ip, mf_run_cell(mf_ip, "%mf_predict rf B"))
    diabetes = mf_run_cell(mf_ip, "%mf_predict diabetes D")
    d_text, _ = bundle(mf_ip, diabetes)

    assert rf_text.splitlines()[1].split() == ["row", "label", "probabilities[0]", "probabilities[1]"]
    assert all(re.fullmatch(r"\d\.\d{3}", c) for line in rf_text.splitlines()[3:5] for c in line.split()[2:])
    values = [v[0] for v in diabetes.output_data["variable"]]
    assert [line.split()[1] for line in d_text.splitlines()[3:5]] == [f"{v:,.3f}" for v in values]


def test_a_result_without_its_name_shows_the_short_id_and_the_full_one_in_small_print():
    # an HTTP answer for a model called by its id carries no name
    r = PredictionResult("p-1", "5dccce28-1111-2222-3333-444455556666", 1, {"y": [[0.5]]}, 21.64, False)

    text = outputs.prediction_text(r)

    assert text.splitlines()[0] == "5dccce28 v1 · 21.6 ms · cache miss"
    assert "model id 5dccce28-1111-2222-3333-444455556666" in text.splitlines()[-1]
    assert "model_name" not in r.to_dict()  # the HTTP answer's fields are unchanged


def test_numbers_for_a_glance():
    assert [outputs.fmt_probability(p) for p in (1.4395e-08, 0.0, 0.0183431, 0.5, 0.99995, 1.0, None)] == [
        "<0.001", "0.000", "0.018", "0.500", ">0.999", "1.000", "null"]
    assert [outputs.fmt_ms(ms) for ms in (21.64, 1.062, 0.254, 1234.5)] == ["21.6", "1.1", "0.25", "1,234.5"]
    assert outputs.float_column([1.25e-08, 0.0183431, None]) == ["1.250e-08", "1.834e-02", "null"]
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    ago = [model_list.ago(now - timedelta(seconds=s), now) for s in (1, 42, 180, 7200, 86400, 3 * 86400, 40 * 86400)]
    assert ago == ["just now", "42 s ago", "3 min ago", "2 h ago", "1 day ago", "3 days ago", "2026-10-21"]


# -- %mf_models, %mf_register, %mf_update -------------------------------------------------------------------------
@EMBEDDED
def test_models_table_is_compact_and_to_df_has_everything(mf_ip, mf_forge, capsys):
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")
    mf_run_cell(mf_ip, f"%mf_update iris {IRIS_V2}")
    mf_run_cell(mf_ip, f"%mf_register rf {RF}")
    iris, rf = mf_forge.get("iris"), mf_forge.get("rf")

    table = mf_run_cell(mf_ip, "%mf_models")
    text, page = bundle(mf_ip, table)
    later = model_list.ModelsTable(mf_forge.models(), now=iris.updated_at + timedelta(minutes=3, seconds=5))

    # Then one line per model: name, versions, dtype and shape, outputs by name and kind, size, age, short id
    assert text == repr(table) and not UUID.search(text) and "seq(map" not in text + page
    header, _, iris_line, rf_line = text.splitlines()
    assert header.split() == ["name", "versions", "inputs", "outputs", "size", "updated", "id"]
    assert re.split(r"\s{2,}", iris_line) == [
        "iris", "1, 2", "float32 [?, 4]", "output_label int64 [?], output_probability map per row",
        f"{IRIS_V2.stat().st_size} B", "just now", iris.id[:8]]
    assert re.split(r"\s{2,}", rf_line)[2:4] == ["float32 [?, 30]", "label int64 [?], probabilities float32 [?, 2]"]
    assert later.rows[0][5].plain == "3 min ago" and "3 min ago" in later._repr_html_()
    # the HTML: the full id, input names and exact time on hover; left-aligned, scrolling, theme colours
    assert f'<code title="{iris.id}">{iris.id[:8]}</code>' in page and f'<code title="{rf.id}">' in page
    assert '<span title="float_input float32">float32 [?, 4]</span>' in page
    assert "output_label int64 [?]<br>output_probability map per row" in page
    assert f'title="{iris.updated_at:%Y-%m-%d %H:%M:%S} UTC"' in page
    check_fits_and_themes(page)
    # .to_df(): every field in full
    df = table.to_df()
    assert list(df["id"]) == [iris.id, rf.id] and list(df["sha256"]) == [iris.sha256, rf.sha256]
    assert df.loc[0, "outputs"] == "output_label int64 [?]; output_probability seq(map(int64,tensor(float))) []"
    assert df.loc[0, "versions"] == [1, 2] and df.loc[0, "size_bytes"] == IRIS_V2.stat().st_size


@EMBEDDED
def test_register_and_update_print_a_check_and_the_compact_signature(mf_ip, capsys):
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS}")
    mf_run_cell(mf_ip, f"%mf_update iris {IRIS_V2}")

    assert capsys.readouterr().out == (
        "✓ registered iris v1\n"
        "  inputs   float32 [?, 4]\n"
        "  outputs  output_label int64 [?], output_probability map per row\n"
        "✓ updated iris to v2 (versions 1, 2)\n"
        "  inputs   float32 [?, 4]\n"
        "  outputs  output_label int64 [?], output_probability map per row\n")


# -- refusal hints -----------------------------------------------------------------------------------------------
@EMBEDDED
def test_refusals_name_the_next_step(mf_ip, mf_forge, tmp_path, capsys):
    # Given an empty registry, then iris and iris_v2-like names
    empty = mf_ip.run_cell("%mf_predict iris [[1, 2, 3, 4]]")
    first = capsys.readouterr().err
    mf_forge.register("iris", IRIS)
    mf_forge.register("rf", RF)
    spaced = tmp_path / "my model.onnx"
    spaced.write_bytes(IRIS_V2.read_bytes())
    capsys.readouterr()

    cells = [
        "%mf_predict iirs [[1, 2, 3, 4]]",
        "%mf_predict zzz [[1, 2, 3, 4]]",
        f"%mf_register iris '{spaced}'",
        f"%mf_update newone {IRIS_V2}",
        "%mf_delete ris",
        "%mf_predict iris [[1, 2, 3, 4]] --version 7",
    ]
    see = "%mf_models lists the registered models\n"
    errs = []
    for src in cells:
        assert mf_ip.run_cell(src).result is None
        errs.append(capsys.readouterr().err)

    assert empty.result is None and first == (
        "ModelNotFoundError: model 'iris' is not registered; no model is registered yet: %mf_register NAME PATH "
        "adds one\n")
    assert errs == [
        "ModelNotFoundError: model 'iirs' is not registered; did you mean iris? " + see,
        "ModelNotFoundError: model 'zzz' is not registered; " + see,
        "ModelExistsError: model 'iris' is already registered (version 1); use update to add a new version; "
        f"to add this file as its next version: %mf_update iris '{spaced}'\n",
        f"ModelNotFoundError: model 'newone' is not registered; to register it: %mf_register newone {IRIS_V2}\n",
        "ModelNotFoundError: model 'ris' is not registered; did you mean iris? " + see,
        "ModelNotFoundError: model 'iris' has no version 7; versions: 1\n",
    ]
    # the line it suggests does what it says; the core's message (the HTTP door's) has no magic syntax in it
    mf_run_cell(mf_ip, errs[2].split(": ")[-1].strip())
    assert mf_forge.get("iris").versions == [1, 2]
    with pytest.raises(ModelExistsError) as err:
        mf_forge.register("iris", IRIS)
    assert "%mf_" not in str(err.value)


# -- the bench plot ------------------------------------------------------------------------------------------------
def bench_result(paths: tuple[str, ...]) -> BenchResult:
    rows = tuple(Row("iris", b, p, 0.1 * (i + 1) * b, 0.2 * (i + 1) * b, 0.3 * (i + 1) * b, 1000.0 / (i + 1))
                 for b in (1, 10) for i, p in enumerate(paths))
    return BenchResult("iris", 1, "registry sqlite, cache disk", (1, 10), Budget(iterations=2), rows)


def line_colours(fig) -> dict[str, tuple]:
    """``{path label: RGBA}`` of the throughput lines (labelled by path)."""
    from matplotlib.colors import to_rgba

    return {line.get_label(): to_rgba(line.get_color()) for line in fig.axes[1].get_lines()}


def test_bench_plot_is_transparent_grey_texted_and_keeps_each_paths_colour():
    # Given two runs measuring different paths
    every = bench_plot.bench_figure(bench_result(("raw_cold", "cold", "raw_ort", "api_cache_off", "api_hit")))
    some = bench_plot.bench_figure(bench_result(("raw_ort", "api_hit", "http_hit")))

    # Then the figure and the axes have no background, the text and ticks are the mid grey
    for fig in (every, some):
        assert fig.patch.get_alpha() == 0 and all(ax.get_facecolor()[3] == 0 for ax in fig.axes)
        assert [t.get_color() for t in fig.texts] == [bench_plot.GREY]  # the suptitle
        assert all(ax.xaxis.label.get_color() == bench_plot.GREY for ax in fig.axes)
        assert {t.get_color() for ax in fig.axes for t in ax.get_yticklabels()} <= {bench_plot.GREY}
    # and a path has the same colour in both runs; raw ONNX Runtime is the neutral grey in each
    a, b = line_colours(every), line_colours(some)
    assert a[LABELS["api_hit"]] == b[LABELS["api_hit"]] and a[LABELS["raw_ort"]] == b[LABELS["raw_ort"]]
    from matplotlib.colors import to_rgba

    assert a[LABELS["raw_ort"]] == to_rgba(bench_plot.GREY) == a[LABELS["raw_cold"]]
    assert len(set(a.values())) == len(a) - 1  # only the two raw paths share (the grey)
    # the PNG shown is see-through where nothing is drawn
    png = Image.open(io.BytesIO(bench_plot.figure_png(every)))
    assert png.mode == "RGBA" and png.getpixel((2, 2))[3] == 0


def test_a_prediction_over_http_shows_the_name_it_was_called_by(mf_live_server, mf_live_settings):
    # Given iris in the live server's registry
    from modelforge_jupyter import ModelForge
    from modelforge_jupyter.kernel.client import connect

    with ModelForge(**mf_live_settings) as forge, connect(mf_live_server.url, mf_live_server.token) as server:
        rec = forge.register("outputs_http_iris", IRIS)
        try:
            # When the client calls it by name, then by id
            by_name = server.predict("outputs_http_iris", X3)
            by_id = server.predict(rec.id, X3)
        finally:
            forge.delete("outputs_http_iris")

    # Then the answer keeps its documented fields, and the head names the model as it was called
    assert (by_name.model_name, by_id.model_name, by_id.model_id) == ("outputs_http_iris", "", rec.id)
    assert outputs.prediction_text(by_name).startswith("outputs_http_iris v1 · ")
    assert outputs.prediction_summary(by_id).startswith(f"{rec.id[:8]} v1 · ") and by_id.cached


def test_bench_plot_has_p50_lines_p95_bands_one_legend_outside_and_fits_the_output_area():
    # Given a run of every path the magic measures with --http
    paths = ("raw_cold", "cold", "raw_ort", "api_cache_off", "api_hit", "http_miss", "http_hit")
    fig = bench_plot.bench_figure(bench_result(paths))

    # Then the latency panel has one p50 line and one p50-p95 band per path (no p95/p99 lines)
    lat, thr = fig.axes
    assert [line.get_label() for line in lat.get_lines()] == [LABELS[p] for p in bench_tables.paths_in_order(paths)]
    assert len(lat.collections) == len(paths)
    # one legend, the figure's, outside both panels; none over the data
    assert len(fig.legends) == 1 and lat.get_legend() is None and thr.get_legend() is None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [LABELS[p] for p in bench_tables.paths_in_order(paths)]
    png = Image.open(io.BytesIO(bench_plot.figure_png(fig)))  # drawn: the layout is done
    legend = fig.legends[0].get_window_extent()
    assert all(legend.x0 >= ax.get_window_extent().x1 for ax in fig.axes)
    # 940 x 350 px: inside a 1,000 px output area
    assert png.size == (940, 350)


def test_bench_tables_ratio_colours_and_sizes_the_model_cannot_take():
    # Given ratios to raw ONNX Runtime of ×1, ×1.2, ×10 and ×190
    hues = [int(bench_tables.ratio_color(r).split("(")[1].split(",")[0]) for r in (0.5, 1.0, 1.2, 10, 190)]

    # Then the colour scale runs from green (×1 or better) to red (×100 and over): ×190 never looks like ×1.2
    assert hues[0] == hues[1] == 120 and hues[-1] == 0 and hues == sorted(hues, reverse=True)
    assert hues[2] - hues[4] > 100 and [bench_tables.fmt_ratio(r) for r in (1.2, 190)] == ["×1.20", "×190"]
    # and the compact table: one row per path, one column per batch size, a size the model cannot take empty
    res = bench_result(("raw_ort", "api_cache_off"))
    columns, rows = bench_tables.compact_table(res.rows, (1, 10), ("raw_ort", "api_cache_off"), "p95",
                                            {100: "one v1 takes batch 1 only"})
    assert columns == ["p95 ms · batch", "1", "10", "100"]
    assert [[markup.plain(c) for c in row] for row in rows] == [
        ["warm (cache off)", "0.4 ×2.00", "4 ×2.00", "—"], ["raw ORT", "0.2", "2", "—"]]
    assert 'title="one v1 takes batch 1 only"' in rows[0][3] and "hsl(" in rows[0][1]
    _, thr = bench_tables.compact_table(res.rows, (1, 10), ("raw_ort", "api_cache_off"), "pred/s")
    assert [markup.plain(c) for c in thr[0]] == ["warm (cache off)", "500 ×2.00", "500 ×2.00"]  # raw does 2x
    # every scrolling table keeps its first column in view
    assert "tr > :first-child {position: sticky; left: 0" in markup.html_table(["a"], [["1"]])
