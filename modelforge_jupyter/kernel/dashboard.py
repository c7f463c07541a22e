"""What ``%mf_bench`` shows: its ipywidgets dashboard, its text fallback and its plot (tables: ``outputs``).

The dashboard is built and displayed before the first measurement, then mutated (``IntProgress.value``,
``HTML.value``, ``Output.append_display_data``): each assignment is one comm message the frontend renders while the
cell still runs, and nothing is printed to stdout (nbval compares stdout, not widget state). Its display carries,
beside the widget view, ``text/plain`` and ``text/html`` with the figures, updated (``update_display_data``) when the
run ends: what a renderer without widgets shows (``jupyter nbconvert --to markdown``, GitHub, a terminal).
"""

from __future__ import annotations

import html
import io
import sys
from collections.abc import Sequence
from typing import Any

from IPython.display import Image, display

from ..bench import HEADER, LABELS, RAW_OF, BenchResult, Row, format_row, format_table
from .outputs import block, html_table

# ModelForge paths first (each with its ratio to raw), then the raw ONNX Runtime paths they are compared with.
DISPLAY_ORDER = ("cold", "api_cache_off", "api_miss", "api_hit", "http_miss", "http_hit", "raw_ort", "raw_cold")
PENDING = "…"
# A fixed colour per path, the same in every run; raw ONNX Runtime a neutral grey (its cold path: square markers).
GREY = "#8c8c8c"
PATH_STYLES = {
    "cold": ("#9467bd", "o"), "api_cache_off": ("#1f77b4", "o"), "api_miss": ("#17becf", "o"),
    "api_hit": ("#2ca02c", "o"), "http_miss": ("#ff7f0e", "o"), "http_hit": ("#bcbd22", "o"),
    "raw_ort": (GREY, "o"), "raw_cold": (GREY, "s"),
}
# Text, ticks and grid in a mid grey on a transparent figure: readable on the light and the dark JupyterLab theme.
FIGURE_RC = {
    "text.color": GREY, "axes.labelcolor": GREY, "axes.edgecolor": GREY, "xtick.color": GREY, "ytick.color": GREY,
    "grid.color": GREY, "legend.facecolor": "none", "legend.edgecolor": GREY, "legend.labelcolor": GREY,
    "figure.facecolor": "none", "axes.facecolor": "none",
}


def fmt_ms(row: Row | None) -> str:
    return PENDING if row is None else f"{row.p50_ms:.3f} / {row.p95_ms:.3f} / {row.p99_ms:.3f}"


def bench_columns(paths: Sequence[str]) -> tuple[list[str], list[tuple[str, int]]]:
    """Column names and header groups of the wide bench table: one group per path, in ``DISPLAY_ORDER``."""
    columns, groups = ["batch"], [("", 1)]
    for path in (p for p in DISPLAY_ORDER if p in paths):
        sub = ["p50 / p95 / p99 ms", "pred/s"] + (["× raw p50"] if path in RAW_OF else [])
        columns += sub
        groups.append((LABELS[path], len(sub)))
    return columns, groups


def bench_rows(rows: Sequence[Row], batch_sizes: Sequence[int], paths: Sequence[str]) -> list[list[str]]:
    """One row per batch size; cells not measured yet (or skipped) show ``…``."""
    by = {(r.batch, r.path): r for r in rows}
    out = []
    for batch in batch_sizes:
        cells = [str(batch)]
        for path in (p for p in DISPLAY_ORDER if p in paths):
            r = by.get((batch, path))
            cells += [fmt_ms(r), PENDING if r is None else f"{r.predictions_per_s:,.0f}"]
            if path in RAW_OF:
                cells.append(PENDING if r is None or r.ratio_p50 is None else f"{r.ratio_p50:.2f}")
        out.append(cells)
    return out


def bench_table_html(rows: Sequence[Row], batch_sizes: Sequence[int], paths: Sequence[str], caption: str = "") -> str:
    """The wide bench table (one row per batch size, one column group per path) as HTML; ``caption`` is HTML."""
    columns, groups = bench_columns(paths)
    return html_table(columns, bench_rows(rows, batch_sizes, paths), groups, caption, right=True)


def bench_caption(backend: str, notes: Sequence[str]) -> str:
    return html.escape(backend) + "".join(f"<br><i>{html.escape(n)}</i>" for n in notes)


def bench_result_html(result: BenchResult) -> str:
    """``text/html`` of a ``BenchResult``: its summary line, then the wide table with the backend and notes."""
    paths = tuple(dict.fromkeys(r.path for r in result.rows))
    return block(f"<div><b>{html.escape(result.summary())}</b></div>",
                 bench_table_html(result.rows, result.batch_sizes, paths, bench_caption(result.backend, result.notes)))


def bench_figure(result: BenchResult):
    """A matplotlib ``Figure`` (no pyplot, so any backend works): latency p50/p95/p99 and throughput vs batch size.

    The figure and axes backgrounds are transparent and its text and grid a mid grey (``FIGURE_RC``), so the PNG
    reads on a light or a dark notebook; each path keeps its colour (``PATH_STYLES``) whichever paths a run has.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    with rc_context(FIGURE_RC):
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        fig.patch.set_alpha(0)
        lat, thr = fig.subplots(1, 2)
        paths = [p for p in DISPLAY_ORDER if any(r.path == p for r in result.rows)]
        for path in paths:
            rows = sorted((r for r in result.rows if r.path == path), key=lambda r: r.batch)
            x = [r.batch for r in rows]
            color, marker = PATH_STYLES[path]
            lat.plot(x, [r.p50_ms for r in rows], marker=marker, color=color, label=f"{LABELS[path]} p50")
            lat.plot(x, [r.p95_ms for r in rows], "--", color=color, alpha=0.7)
            lat.plot(x, [r.p99_ms for r in rows], ":", color=color, alpha=0.7)
            thr.plot(x, [r.predictions_per_s for r in rows], marker=marker, color=color, label=LABELS[path])
        for ax, ylabel in ((lat, "latency (ms): p50 —, p95 --, p99 ··"), (thr, "throughput (predictions/s)")):
            ax.set_facecolor("none")
            ax.set_xscale("log")
            ax.set_xticks(result.batch_sizes, [str(b) for b in result.batch_sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        lat.legend(fontsize="small")
        fig.suptitle(f"{result.model} v{result.version}: ModelForge vs raw ONNX Runtime ({result.backend})")
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


class BenchDashboard:
    """``VBox(HTML title, IntProgress, HTML table, Output plot)``, updated after every measured cell.

    Displayed as itself (``_repr_mimebundle_``): the widget view, plus ``text/plain`` and ``text/html`` with the
    figures measured so far, for renderers without widgets; that display is updated when the run ends or fails.
    """

    def __init__(self, model: str, batch_sizes: Sequence[int], paths: Sequence[str], total: int) -> None:
        import ipywidgets as w

        self.model, self.batch_sizes, self.paths, self.rows = model, list(batch_sizes), list(paths), []
        self.total, self.done, self.status, self.caption, self.notes = total, 0, "running", "", ()
        self.title = w.HTML(f"<b>%mf_bench {html.escape(model)}</b>: ModelForge beside raw ONNX Runtime")
        self.progress = w.IntProgress(value=0, min=0, max=total, description=f"0/{total}")
        self.table = w.HTML(self._table_html())
        self.plot = w.Output()
        self.box = w.VBox([self.title, self.progress, self.table, self.plot])
        self.handle = None

    def _table_html(self) -> str:
        return bench_table_html(self.rows, self.batch_sizes, self.paths, self.caption)

    def _summary(self) -> str:
        return (f"%mf_bench {self.model}: ModelForge beside raw ONNX Runtime, {self.done}/{self.total} cells, "
                f"{self.status}")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        view = getattr(self.box, "_repr_mimebundle_", None)  # ipywidgets sets it to None when the widget is closed
        data = dict((view() if callable(view) else None) or {})  # the widget view
        data["text/plain"] = "\n".join([self._summary(), format_table(self.rows), *self.notes])
        data["text/html"] = block(f"<div><b>{html.escape(self._summary())}</b></div>", self._table_html())
        return data

    def show(self) -> None:
        self.handle = display(self, display_id=True)

    def update(self, done: int, total: int, row: Row | None) -> None:
        self.done = done
        if row is not None:
            self.rows.append(row)
            self.table.value = self._table_html()
        self.progress.value = done
        self.progress.description = f"{done}/{total}"

    def _redisplay(self) -> None:
        if self.handle is not None:
            self.handle.update(self)

    def finish(self, result: BenchResult) -> None:
        self.status, self.notes = "done", (result.backend, *result.notes)
        self.caption = bench_caption(result.backend, result.notes)
        self.table.value = self._table_html()
        self.progress.bar_style = "success"
        self.plot.append_display_data(Image(data=figure_png(bench_figure(result)), format="png"))
        self._redisplay()

    def fail(self) -> None:
        self.status = "stopped"
        self.progress.bar_style = "danger"
        self._redisplay()


class TextReport:
    """The dashboard's text fallback (terminal IPython, ``--text``): the rows printed as they are measured."""

    def __init__(self, model: str, batch_sizes: Sequence[int], paths: Sequence[str], total: int,
                 plot: bool = False) -> None:
        self.model, self.total, self.plot = model, total, plot

    def show(self) -> None:
        print(f"%mf_bench {self.model}: ModelForge beside raw ONNX Runtime ({self.total} cells)")
        print(HEADER)
        print("-" * len(HEADER))

    def update(self, done: int, total: int, row: Row | None) -> None:
        if row is not None:
            print(format_row(row), flush=True)

    def finish(self, result: BenchResult) -> None:
        print(result.backend)
        for note in result.notes:
            print(note)
        if self.plot:  # a rich frontend without widgets (nbconvert): the plot as a plain image output
            alt = (f"[plot: {result.model} v{result.version}, latency p50/p95/p99 (ms) and throughput (predictions/s) "
                   "by batch size; the figures are in the table above]")
            display({"image/png": figure_png(bench_figure(result)), "text/plain": alt}, raw=True)

    def fail(self) -> None:
        sys.stdout.flush()
