"""What ``%mf_bench`` shows: its ipywidgets dashboard, its text fallback, its static result table and its plot.

While it runs, one widget display (``BenchDashboard``): the title; a progress bar naming the cell being measured,
the elapsed time and an ETA; a switch (``ToggleButtons``) between p50, p95, p99 and predictions/s; a compact table,
one row per path and one column per batch size, each ModelForge cell with its ratio to raw ONNX Runtime as a small
coloured suffix. Every update is one comm message (nothing on stdout: nbval compares stdout, not widget state).

When it ends, two ordinary outputs stay below it, so a saved, exported or reopened notebook shows the results with
no widget state: the plot (``image/png``) and the table of every figure (``text/html``, the same as the
``BenchResult`` HTML the magics register with IPython). The magic then tells IPython that the returned
``BenchResult`` is already shown (``mark_shown``): a bare ``%mf_bench iris`` shows its figures once.
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from IPython.display import display

from ..core.benchmark import HEADER, LABELS, RAW_OF, BenchResult, Row, format_row, format_table
from .outputs import Markup, block, html_table, small, text_table

# ModelForge paths first (each with its ratio to raw), then the raw ONNX Runtime paths they are compared with.
DISPLAY_ORDER = ("cold", "api_cache_off", "api_miss", "api_hit", "http_miss", "http_hit", "raw_ort", "raw_cold")
PENDING = "…"
# A fixed colour per path, the same in every run; raw ONNX Runtime a neutral grey (its cold path: squares, dashed).
GREY = "#8c8c8c"
PATH_STYLES = {
    "cold": ("#9467bd", "o"), "api_cache_off": ("#1f77b4", "o"), "api_miss": ("#17becf", "o"),
    "api_hit": ("#2ca02c", "o"), "http_miss": ("#ff7f0e", "o"), "http_hit": ("#bcbd22", "o"),
    "raw_ort": (GREY, "o"), "raw_cold": (GREY, "s"),
}
# Text, ticks and grid in a mid grey on a transparent figure: readable on the light and the dark JupyterLab theme.
FIGURE_RC = {
    "text.color": GREY, "axes.labelcolor": GREY, "axes.edgecolor": GREY, "xtick.color": GREY, "ytick.color": GREY,
    "grid.color": GREY, "legend.facecolor": "none", "legend.edgecolor": "none", "legend.labelcolor": GREY,
    "figure.facecolor": "none", "axes.facecolor": "none",
}
# The switch: its label -> (Row field, what the figure is, whether more is better).
METRICS = {
    "p50": ("p50_ms", "p50 latency, ms", False), "p95": ("p95_ms", "p95 latency, ms", False),
    "p99": ("p99_ms", "p99 latency, ms", False), "pred/s": ("predictions_per_s", "throughput, predictions/s", True),
}
FIGURE_INCHES, FIGURE_DPI = (9.4, 3.5), 100  # 940 x 350 px: inside a 1,000 px output area


def paths_in_order(paths: Sequence[str]) -> list[str]:
    return [p for p in DISPLAY_ORDER if p in paths]


def fmt_value(v: float, field: str) -> str:
    """Three significant digits for ms (``0.0123``, ``1.52``, ``21.6``, ``152``); whole predictions/s (``12,345``)."""
    return f"{v:,.0f}" if field == "predictions_per_s" else (f"{v:,.0f}" if v >= 100 else f"{v:.3g}")


def slowdown(row: Row, raw: Row | None, field: str) -> float | None:
    """How many times raw ONNX Runtime beats ``row`` on ``field``: latency / raw latency, raw throughput / ours."""
    if raw is None or row.path not in RAW_OF:
        return None
    ours, theirs = getattr(row, field), getattr(raw, field)
    if field == "predictions_per_s":
        ours, theirs = theirs, ours
    return ours / theirs if theirs > 0 else None


def fmt_ratio(r: float) -> str:
    return f"×{r:.2f}" if r < 10 else f"×{r:,.0f}"


def ratio_color(r: float) -> str:
    """Green at ×1 (or better), yellow near ×3, orange near ×10, red from ×100: hue on log10 of the ratio."""
    hue = 120 * (1 - min(max(math.log10(r), 0.0), 2.0) / 2)
    return f"hsl({hue:.0f}, 75%, 50%)"


def ratio_html(r: float, what: str) -> str:
    title = f"{fmt_ratio(r)} raw ONNX Runtime's {what}"
    return (f' <small title="{html.escape(title)}" style="color: {ratio_color(r)}; font-weight: 600">'
            f"{fmt_ratio(r)}</small>")


def compact_table(rows: Sequence[Row], batch_sizes: Sequence[int], paths: Sequence[str], metric: str = "p50",
                  skipped: dict[int, str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the dashboard's table: one row per path, one column per batch size, ``metric``'s figure
    in each cell with the ratio to raw ONNX Runtime as a coloured suffix; ``…`` not measured yet; a batch size in
    ``skipped`` ({batch: why}) an empty cell (``—``, the reason on hover)."""
    field, what, _ = METRICS[metric]
    by = {(r.batch, r.path): r for r in rows}
    sizes = sorted(set(batch_sizes) | set(skipped or {}))
    columns = [f"{metric}{'' if metric == 'pred/s' else ' ms'} · batch"] + [str(b) for b in sizes]
    out: list[list[Any]] = []
    for path in paths_in_order(paths):
        cells: list[Any] = [LABELS[path]]
        for b in sizes:
            if b in (skipped or {}):
                cells.append(Markup(f'<span title="{html.escape(skipped[b])}">—</span>', "—"))
                continue
            r = by.get((b, path))
            if r is None:
                cells.append(PENDING)
                continue
            text = fmt_value(getattr(r, field), field)
            ratio = slowdown(r, by.get((b, RAW_OF.get(path, ""))), field)
            if ratio is None:
                cells.append(text)
            else:
                cells.append(Markup(html.escape(text) + ratio_html(ratio, what), f"{text} {fmt_ratio(ratio)}"))
        out.append(cells)
    return columns, out


FULL_COLUMNS = ["path", "batch", "p50 ms", "p95 ms", "p99 ms", "pred/s", "× raw p50"]


def full_table(rows: Sequence[Row], batch_sizes: Sequence[int]) -> list[list[Any]]:
    """Every figure of ``rows``: one row per path and batch size (the path named on its first row)."""
    by = {(r.batch, r.path): r for r in rows}
    out: list[list[Any]] = []
    for path in paths_in_order({r.path for r in rows}):
        first = True
        for b in batch_sizes:
            r = by.get((b, path))
            if r is None:
                continue
            cells: list[Any] = [LABELS[path] if first else "", str(b)]
            cells += [fmt_value(getattr(r, f), f) for f in ("p50_ms", "p95_ms", "p99_ms", "predictions_per_s")]
            ratio = slowdown(r, by.get((b, RAW_OF.get(path, ""))), "p50_ms")
            cells.append("" if ratio is None else Markup(ratio_html(ratio, "p50 latency").strip(), fmt_ratio(ratio)))
            out.append(cells)
            first = False
    return out


def notes_html(notes: Sequence[str]) -> str:
    return "".join(small(html.escape(n)) for n in notes)


def bench_result_html(result: BenchResult) -> str:
    """``text/html`` of a ``BenchResult``: its summary line, every figure (p50/p95/p99 ms, predictions/s, the ratio
    to raw ONNX Runtime), the backend and the notes."""
    head = (f"<div><b>{html.escape(result.model)} v{result.version}</b>: every figure, ModelForge beside raw "
            f"ONNX Runtime</div>")
    return block(head, html_table(FULL_COLUMNS, full_table(result.rows, result.batch_sizes), right=True),
                 notes_html([result.summary(), *result.notes]))


def bench_figure(result: BenchResult):
    """A matplotlib ``Figure`` (no pyplot, so any backend works): p50 latency (line) with its p50-p95 band, and
    throughput, by batch size; one legend outside the two panels; 940 x 350 px at ``FIGURE_DPI``.

    The figure and axes backgrounds are transparent and its text and grid a mid grey (``FIGURE_RC``), so the PNG
    reads on a light or a dark notebook; each path keeps its colour (``PATH_STYLES``) whichever paths a run has.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    with rc_context(FIGURE_RC):
        fig = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
        fig.patch.set_alpha(0)
        lat, thr = fig.subplots(1, 2)
        for path in paths_in_order({r.path for r in result.rows}):
            rows = sorted((r for r in result.rows if r.path == path), key=lambda r: r.batch)
            x = [r.batch for r in rows]
            color, marker = PATH_STYLES[path]
            style = {"marker": marker, "color": color, "label": LABELS[path],
                     "linestyle": "--" if marker == "s" else "-"}
            lat.plot(x, [r.p50_ms for r in rows], **style)
            lat.fill_between(x, [r.p50_ms for r in rows], [r.p95_ms for r in rows], color=color, alpha=0.1,
                             linewidth=0)
            thr.plot(x, [r.predictions_per_s for r in rows], **style)
        for ax, ylabel in ((lat, "latency, ms (p50; band to p95)"), (thr, "throughput, predictions/s")):
            ax.set_facecolor("none")
            ax.set_xscale("log")
            ax.set_xticks(result.batch_sizes, [str(b) for b in result.batch_sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        fig.legend(*lat.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
        fig.suptitle(f"{result.model} v{result.version}: ModelForge vs raw ONNX Runtime ({result.backend})",
                     fontsize="medium")
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


def plot_bundle(result: BenchResult) -> dict[str, str]:
    """The plot as an ordinary output: base64 ``image/png`` (as nbformat stores it) and its ``text/plain`` alt."""
    return {"image/png": base64.b64encode(figure_png(bench_figure(result))).decode(), "text/plain": plot_alt(result)}


def plot_alt(result: BenchResult) -> str:
    return (f"[plot: {result.model} v{result.version}, p50 latency (ms, band to p95) and throughput (predictions/s) "
            "by batch size, per path; the figures are in the table]")


def show_results(result: BenchResult) -> None:
    """Leave the plot and the table of every figure as ordinary outputs (no widget state needed to see them)."""
    display(plot_bundle(result), raw=True)
    display({"text/html": bench_result_html(result), "text/plain": repr(result)}, raw=True)


def mark_shown(shell: Any, result: BenchResult) -> None:
    """Tell IPython that ``result`` is already shown in this cell: its display hook (``Out[n]``) shows nothing for
    that one object until the cell ends (a singleton printer of IPython's ``ipython_display_formatter``, removed by
    ``post_run_cell``); ``res`` in a later cell shows it again."""
    formatter = shell.display_formatter.ipython_display_formatter
    key = id(result)
    formatter.singleton_printers[key] = lambda obj: None

    def forget(*_: Any) -> None:
        formatter.singleton_printers.pop(key, None)
        shell.events.unregister("post_run_cell", forget)

    shell.events.register("post_run_cell", forget)


def fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


class BenchDashboard:
    """``VBox(title, HBox(IntProgress, status), ToggleButtons, table, notes)``, updated after every measured cell.

    Displayed as itself (``_repr_mimebundle_``): the widget view plus a ``text/plain`` summary (how many cells,
    running / done / stopped). The figures themselves are left by ``finish`` as ordinary outputs below it.
    """

    def __init__(self, model: str, batch_sizes: Sequence[int], paths: Sequence[str], total: int,
                 notes: Sequence[str] = (), skipped: dict[int, str] | None = None) -> None:
        import ipywidgets as w

        self.model, self.batch_sizes, self.paths, self.rows = model, list(batch_sizes), list(paths), []
        self.total, self.done, self.status, self.notes = total, 0, "running", tuple(notes)
        self.skipped = dict(skipped or {})
        self.started = time.monotonic()
        self.title = w.HTML(f"<b>%mf_bench {html.escape(model)}</b>: ModelForge beside raw ONNX Runtime")
        self.progress = w.IntProgress(value=0, min=0, max=total, layout=w.Layout(width="220px"))
        self.phase = w.HTML(self._phase())
        self.metric = w.ToggleButtons(options=list(METRICS), value="p50", tooltips=[m[1] for m in METRICS.values()],
                                      style={"button_width": "auto"})
        self.metric.observe(lambda _: self._redraw(), "value")
        self.table = w.HTML(self._table_html())
        self.foot = w.HTML(notes_html(self.notes))
        self.box = w.VBox([self.title, w.HBox([self.progress, self.phase]), self.metric, self.table, self.foot],
                          layout=w.Layout(max_width="100%"))
        self.handle = None

    def _table_html(self) -> str:
        columns, rows = compact_table(self.rows, self.batch_sizes, self.paths, self.metric.value, self.skipped)
        return block(html_table(columns, rows, right=True))

    def _redraw(self) -> None:
        self.table.value = self._table_html()

    def _phase(self) -> str:
        """``5/28 · measuring batch 10 · warm (cache off) · 3.2 s elapsed · about 14 s left``."""
        elapsed = time.monotonic() - self.started
        if self.status != "running":
            what = "done" if self.status == "done" else f"stopped after {self.done} cells"
            return f"&nbsp;{self.done}/{self.total} · {what} in {fmt_seconds(elapsed)}"
        parts = [f"{self.done}/{self.total}"]
        if self.done < self.total and self.paths:
            batch = self.batch_sizes[min(self.done // len(self.paths), len(self.batch_sizes) - 1)]
            parts.append(f"measuring batch {batch} · {LABELS[self.paths[self.done % len(self.paths)]]}")
        parts.append(f"{fmt_seconds(elapsed)} elapsed")
        if self.done:
            parts.append(f"about {fmt_seconds(elapsed / self.done * (self.total - self.done))} left")
        return "&nbsp;" + html.escape(" · ".join(parts))

    def _summary(self) -> str:
        return (f"%mf_bench {self.model}: ModelForge beside raw ONNX Runtime, {self.done}/{self.total} cells, "
                f"{self.status}")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        view = getattr(self.box, "_repr_mimebundle_", None)  # ipywidgets sets it to None when the widget is closed
        data = dict((view() if callable(view) else None) or {})  # the widget view
        columns, rows = compact_table(self.rows, self.batch_sizes, self.paths, "p50", self.skipped)
        data["text/plain"] = "\n".join([self._summary(), text_table(columns, rows), *self.notes])
        return data

    def show(self) -> None:
        self.handle = display(self, display_id=True)

    def update(self, done: int, total: int, row: Row | None) -> None:
        self.done = done
        if row is not None:
            self.rows.append(row)
            self._redraw()
        self.phase.value = self._phase()
        self.progress.value = done

    def _redisplay(self) -> None:
        if self.handle is not None:
            self.handle.update(self)

    def finish(self, result: BenchResult) -> None:
        self.status = "done"
        self.notes = (*result.notes, result.backend)
        self.foot.value = notes_html(self.notes)
        self.progress.bar_style = "success"
        self.phase.value = self._phase()
        self._redisplay()
        show_results(result)

    def fail(self) -> None:
        """The run stopped (an error, Ctrl-C): say so, and leave what was measured as an ordinary output."""
        self.status = "stopped"
        self.progress.bar_style = "danger"
        self.phase.value = self._phase()
        self._redisplay()
        if self.rows:
            head = f"%mf_bench {self.model} stopped after {self.done}/{self.total} cells: the figures measured"
            display({"text/html": block(f"<div><b>{html.escape(head)}</b></div>",
                                        html_table(FULL_COLUMNS, full_table(self.rows, self.batch_sizes), right=True)),
                     "text/plain": "\n".join([head, format_table(self.rows)])}, raw=True)


class TextReport:
    """The dashboard's text fallback (terminal IPython, ``--text``): the rows printed as they are measured."""

    def __init__(self, model: str, batch_sizes: Sequence[int], paths: Sequence[str], total: int,
                 plot: bool = False, **_: Any) -> None:
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
            display(plot_bundle(result), raw=True)

    def fail(self) -> None:
        sys.stdout.flush()
