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

import html
import sys
import time
from collections.abc import Sequence
from typing import Any

from IPython.display import display

from ..core.bench_stages import format_stages
from ..core.benchmark import HEADER, LABELS, BenchResult, Row, format_row, format_table
from .bench_plot import plot_bundle
from .bench_tables import FULL_COLUMNS, METRICS, bench_result_html, compact_table, full_table, notes_html
from .markup import block, html_table, text_table


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
    """``3.2 s`` below a minute, ``2 min 05 s`` from one."""
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
        """Display the dashboard once (a display id: later changes update it in place)."""
        self.handle = display(self, display_id=True)

    def update(self, done: int, total: int, row: Row | None) -> None:
        """``done`` of ``total`` cells measured; ``row`` the new figures (None: the cell could not be measured)."""
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
        """The run ended: full progress bar, the notes, and the plot and table left as ordinary outputs below."""
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
        """Print the title and the header of the text table."""
        print(f"%mf_bench {self.model}: ModelForge beside raw ONNX Runtime ({self.total} cells)")
        print(HEADER)
        print("-" * len(HEADER))

    def update(self, done: int, total: int, row: Row | None) -> None:
        """Print ``row`` as a line of the text table as soon as it is measured."""
        if row is not None:
            print(format_row(row), flush=True)

    def finish(self, result: BenchResult) -> None:
        """Print where the time goes, the backend and the notes under the table."""
        for line in format_stages(result.rows):
            print(line)
        print(result.backend)
        for note in result.notes:
            print(note)
        if self.plot:  # a rich frontend without widgets (nbconvert): the plot as a plain image output
            display(plot_bundle(result), raw=True)

    def fail(self) -> None:
        """The run stopped: flush what was printed."""
        sys.stdout.flush()
