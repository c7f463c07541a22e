"""What the magics show: HTML/text tables, the ``%mf_bench`` ipywidgets dashboard, its text fallback and its plot.

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

# ModelForge paths first (each with its ratio to raw), then the raw ONNX Runtime paths they are compared with.
DISPLAY_ORDER = ("cold", "api_cache_off", "api_miss", "api_hit", "http_miss", "http_hit", "raw_ort", "raw_cold")
PENDING = "…"
CSS = ("<style>.mf-table th, .mf-table td {text-align: right; padding: 2px 8px; white-space: nowrap}"
       " .mf-table td {font-family: monospace}</style>")


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], groups: Sequence[tuple[str, int]] = (),
               caption: str = "") -> str:
    """An HTML table; ``groups`` adds a header row of (label, colspan) above ``columns``; cells are escaped,
    ``caption`` is HTML."""
    head = ""
    if groups:
        head += "<tr>" + "".join(f'<th colspan="{n}">{html.escape(g)}</th>' for g, n in groups) + "</tr>"
    head += "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    cap = f'<caption style="text-align: left">{caption}</caption>' if caption else ""
    return f'{CSS}<table class="mf-table">{cap}<thead>{head}</thead><tbody>{body}</tbody></table>'


def text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: columns padded to their widest cell, a rule under the header."""
    cells = [[str(c) for c in columns]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Table:
    """A table that renders as HTML in a notebook and as text in a terminal (``%mf_models`` returns one)."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "(no rows)") -> None:
        self.columns = list(columns)
        self.rows = [list(r) for r in rows]
        self.empty = empty

    def __len__(self) -> int:
        return len(self.rows)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]

    def _repr_html_(self) -> str:
        return html_table(self.columns, self.rows) if self.rows else f"<i>{html.escape(self.empty)}</i>"

    def __repr__(self) -> str:
        return text_table(self.columns, self.rows) if self.rows else self.empty


MAX_ROWS = 20  # prediction rows shown; the PredictionResult keeps them all


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    text = "null" if v is None else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def prediction_table(output_data: dict[str, Any]) -> tuple[list[str], list[list[str]], int, dict[str, str]]:
    """(columns, first ``MAX_ROWS`` rows, batch size, other outputs) of ``PredictionResult.output_data``.

    The batch is the length of the first list output; each output of that length becomes columns, one row per
    sample: ZipMap maps one column per class (``name[class]``), vectors of up to 8 values one per element
    (``name[j]``; ``name`` alone for width 1). Outputs without that batch axis are returned apart, abbreviated.
    """
    lists = [v for v in output_data.values() if isinstance(v, list)]
    n = len(lists[0]) if lists else 0
    columns, cols, other = ["row"], [list(range(n))], {}
    for name, v in output_data.items():
        if not (isinstance(v, list) and n and len(v) == n):
            other[name] = fmt_value(v)
            continue
        first = v[0]
        if isinstance(first, dict):
            for k in first:
                columns.append(f"{name}[{k}]")
                cols.append([m.get(k) if isinstance(m, dict) else None for m in v])
        elif isinstance(first, list) and 0 < len(first) <= 8 and not any(isinstance(x, list) for x in first):
            for j in range(len(first)):
                columns.append(name if len(first) == 1 else f"{name}[{j}]")
                cols.append([r[j] if isinstance(r, list) and j < len(r) else None for r in v])
        else:
            columns.append(name)
            cols.append(v)
    rows = [[fmt_value(c[i]) for c in cols] for i in range(min(n, MAX_ROWS))]
    return columns, rows, n, other


def prediction_summary(result: Any) -> str:
    """One line: model id and version, ModelForge's time in ms, whether the cache answered."""
    return (f"PredictionResult: model {result.model_id} v{result.model_version}, "
            f"{result.inference_time_ms:.3f} ms, cached={result.cached}")


def prediction_html(result: Any) -> str:
    """``text/html`` of a ``PredictionResult``: the summary line, the outputs table, the other outputs."""
    columns, rows, n, other = prediction_table(result.output_data)
    parts = [f"<div><b>{html.escape(prediction_summary(result))}</b></div>"]
    if n:
        parts.append(html_table(columns, rows))
    if n > MAX_ROWS:
        parts.append(f"<div><i>{n - MAX_ROWS} more rows in .output_data</i></div>")
    parts += [f"<div><code>{html.escape(k)}</code>: {html.escape(v)}</div>" for k, v in other.items()]
    return "".join(parts)


def prediction_text(result: Any) -> str:
    """``text/plain`` of a ``PredictionResult``: the same as ``prediction_html``, as a text table."""
    columns, rows, n, other = prediction_table(result.output_data)
    parts = [prediction_summary(result)]
    if n:
        parts.append(text_table(columns, rows))
    if n > MAX_ROWS:
        parts.append(f"... {n - MAX_ROWS} more rows in .output_data")
    parts += [f"{k}: {v}" for k, v in other.items()]
    return "\n".join(parts)


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
    return html_table(columns, bench_rows(rows, batch_sizes, paths), groups, caption)


def bench_caption(backend: str, notes: Sequence[str]) -> str:
    return html.escape(backend) + "".join(f"<br><i>{html.escape(n)}</i>" for n in notes)


def bench_result_html(result: BenchResult) -> str:
    """``text/html`` of a ``BenchResult``: its summary line, then the wide table with the backend and notes."""
    paths = tuple(dict.fromkeys(r.path for r in result.rows))
    return (f"<div><b>{html.escape(result.summary())}</b></div>"
            + bench_table_html(result.rows, result.batch_sizes, paths, bench_caption(result.backend, result.notes)))


def bench_figure(result: BenchResult):
    """A matplotlib ``Figure`` (no pyplot, so any backend works): latency p50/p95/p99 and throughput vs batch size."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    lat, thr = fig.subplots(1, 2)
    paths = [p for p in DISPLAY_ORDER if any(r.path == p for r in result.rows)]
    for i, path in enumerate(paths):
        rows = sorted((r for r in result.rows if r.path == path), key=lambda r: r.batch)
        x = [r.batch for r in rows]
        color = f"C{i}"
        lat.plot(x, [r.p50_ms for r in rows], "o-", color=color, label=f"{LABELS[path]} p50")
        lat.plot(x, [r.p95_ms for r in rows], "--", color=color, alpha=0.7)
        lat.plot(x, [r.p99_ms for r in rows], ":", color=color, alpha=0.7)
        thr.plot(x, [r.predictions_per_s for r in rows], "o-", color=color, label=LABELS[path])
    for ax, ylabel in ((lat, "latency (ms): p50 —, p95 --, p99 ··"), (thr, "throughput (predictions/s)")):
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
        data["text/html"] = f"<div><b>{html.escape(self._summary())}</b></div>{self._table_html()}"
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
