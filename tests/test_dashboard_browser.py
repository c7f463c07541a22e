"""What a person sees: the notebooks run in JupyterLab in headless Chromium by scripts/check_dashboard.py (Debian's
chromium driven by Playwright) in the light and the dark theme, and the stored benchmark.ipynb opened without
running it."""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbconvert import HTMLExporter

from modelforge_jupyter.cli.bench import LABELS
from modelforge_jupyter.kernel import bench_tables

from .mf_plugin import mf_skip_unless_ci

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
MODELS = ("bench_iris", "bench_breast_cancer_rf", "bench_diabetes")
PATHS = ("cold", "api_cache_off", "api_hit", "http_miss", "http_hit", "v2_miss", "v2_hit", "raw_ort", "raw_cold")
# benchmark.ipynb as stored was saved before the server had V2 (its rows: the JSON HTTP ones only)
STORED_PATHS = ("cold", "api_cache_off", "api_hit", "http_miss", "http_hit", "raw_ort", "raw_cold")


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; missing: skipped locally, a failure under CI (``CI`` set)."""
    if not CHROMIUM.exists():
        mf_skip_unless_ci(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return CHROMIUM


def text_of(markup: str) -> str:
    """``markup``'s text with each tag as ``|`` (nbconvert's sanitizer reorders attributes, not text or tags)."""
    return re.sub(r"<[^>]*>", "|", markup)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


@pytest.mark.timeout(300)
def test_notebooks_render_in_jupyterlab_within_the_output_area_in_both_themes(chromium, tmp_path):
    shot = tmp_path / "dashboard.png"

    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_dashboard.py"), "--screenshot", str(shot)],
        capture_output=True, text=True, timeout=280,
    )

    # Then, in both themes, no output was wider than its area, no widget error, every dashboard complete
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout)
    for theme in ("light", "dark"):
        seen = summary[theme]
        assert list(seen) == ["benchmark.ipynb", "quickstart.ipynb", "scratch.ipynb"]
        for name, nb in seen.items():
            assert nb["outputs"] >= 10 and 0 < nb["widest_output"] <= nb["area"] < 1100, (theme, name, nb)
        assert seen["quickstart.ipynb"]["stderr"] == seen["benchmark.ipynb"]["stderr"] == []
        bench = seen["benchmark.ipynb"]["dashboards"] + seen["scratch.ipynb"]["dashboards"]
        assert [d["title"] for d in bench] == [
            f"%mf_bench {m}: ModelForge beside raw ONNX Runtime" for m in (*MODELS, "scratch_iris")]
        for d in bench:
            assert d["status"].startswith("36/36 · done in ")  # 4 batch sizes x 9 paths (V2's two included)
            assert d["switch"] == ["p50", "p95", "p99", "pred/s"]
            assert d["header"] == ["p50 ms · batch", "1", "10", "100", "1000"]
            assert [row[0] for row in d["rows"]] == [LABELS[p] for p in PATHS]
            assert all("×" in cell for row in d["rows"][:7] for cell in row[1:])  # ModelForge's beside raw ORT
            assert d["static_rows"] == 36 and 600 < d["plot_width"] <= 1000
            # the plot is see-through: the theme's own background shows at its corner
            corner = d["plot_corner"]
            assert (sum(corner[:3]) > 3 * 200) if theme == "light" else (sum(corner[:3]) < 3 * 100), corner
        # the live %mf_stats dashboard: stopped, both sources read with the requests the next cell sent
        (stats,) = seen["scratch.ipynb"]["stats"]
        assert stats["stop_disabled"] and stats["text"][0] == "ModelForge live: scratch_iris (stopped)", stats
        for source in ("server", "kernel"):
            line = next(t for t in stats["text"] if t.startswith(f"{source}: "))
            pattern = rf"{source}: [\d.,]+ req/s, p50 .* ms, p99 .* ms, cache hits \d+%, \d+ sessions"
            assert re.match(pattern, line), line
        assert 600 < stats["plot_width"] <= 1000
        corner = stats["plot_corner"]
        assert (sum(corner[:3]) > 3 * 200) if theme == "light" else (sum(corner[:3]) < 3 * 100), corner
    # the screenshots the README shows, small enough to keep in the repository
    assert set(summary["screenshots"]) == {str(shot), str(shot.with_name("dashboard-dark.png")),
                                           str(shot.with_name("stats.png"))}
    for path, size in summary["screenshots"].items():
        png = Path(path).read_bytes()
        assert len(png) == size < 300_000
        width, height = png_size(png)
        assert 900 < width <= 1440 and (300 if path.endswith("stats.png") else 500) < height
    assert summary["seconds"] < 150


def test_the_stored_benchmark_notebook_shows_its_results_without_running_or_widgets():
    # Given benchmark.ipynb as stored in the repository, its widget state removed (GitHub, nbviewer, a fresh Lab)
    nb = nbformat.read(ROOT / "notebooks" / "benchmark.ipynb", as_version=4)
    nb.metadata.pop("widgets", None)

    # When nbconvert renders it to HTML
    page, _ = HTMLExporter().from_notebook_node(nb)

    # Then each %mf_bench cell left its plot and its table of every figure as ordinary outputs, and HTML shows them
    bench = [c for c in nb.cells if c.cell_type == "code" and "= %mf_bench" in c.source]
    assert len(bench) == 3
    for cell, model in zip(bench, MODELS):
        dash, plot, table = cell.outputs
        assert "application/vnd.jupyter.widget-view+json" in dash.data and "text/html" not in dash.data
        assert dash.data["text/plain"].startswith(f"%mf_bench {model}: ModelForge beside raw ONNX Runtime, 28/28")
        assert png_size(base64.b64decode(plot.data["image/png"]))[0] == 940
        assert table.data["text/plain"].startswith(f"BenchResult {model} v1: 28 rows")
        html = table.data["text/html"]
        body = html.split("<tbody>")[1].split("</tbody>")[0]
        assert body.count("<tr>") == 28 and text_of(body) in text_of(page)  # every figure, in the same cells
        for label in (LABELS[p] for p in STORED_PATHS):
            assert f"<td>{label}</td>" in html
        assert f"{model} v1</b>: every figure" in page
    assert "VBox(" not in page and page.count("<img") >= 3
    assert bench_tables.FULL_COLUMNS == ["path", "batch", "p50 ms", "p95 ms", "p99 ms", "pred/s", "× raw p50"]
