"""How a batch-scoring job shows in a notebook: a live ipywidgets progress bar with rows/s and ETA, or one line of
text elsewhere. The job and its figures are the core's (``scoring.ScoreJob``, ``ScoreProgress``); this module only
draws them.

``show_job`` is IPython's display of a ``ScoreJob`` (registered by ``load_ipython_extension``): a cell ending in
``job`` or ``%mf_score ...`` shows the bar, which a daemon thread refreshes from ``job.progress()`` every
``INTERVAL_S`` until the job is over (each refresh one comm message; nothing on stdout).
"""

from __future__ import annotations

import html
import threading
from typing import Any

from IPython.display import display

from ..core.scoring import ScoreJob, ScoreProgress

INTERVAL_S = 0.25


def status_html(job: ScoreJob, p: ScoreProgress) -> str:
    """``rf v1 · running · 120,000/2,000,000 rows · 40,000 rows/s · ETA 47 s`` as HTML (errors in red)."""
    parts = [f"<b>{html.escape(job.model)}</b> v{job.version}", p.state, f"{p.rows_done:,}/{p.rows:,} rows",
             f"{p.rows_per_s:,.0f} rows/s"]
    if p.state == "running":
        parts.append("ETA …" if p.eta_s is None else f"ETA {p.eta_s:.0f} s")
    else:
        parts.append(f"{p.elapsed_s:.1f} s")
    line = " · ".join(parts)
    if p.chunks_failed:
        line += f' · <span style="color:#c62828">{p.chunks_failed} chunks with errors: job.errors()</span>'
    return f"&nbsp;{line}"


class ScoreProgressView:
    """``HBox(FloatProgress, HTML)`` following ``job``; displayed as itself (the widget view, and the progress line
    as ``text/plain``)."""

    def __init__(self, job: ScoreJob, interval: float = INTERVAL_S) -> None:
        import ipywidgets as w

        self.job, self.interval = job, interval
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="240px"))
        self.status = w.HTML()
        self.box = w.HBox([self.bar, self.status])
        self._stop = threading.Event()
        self.refresh()

    def refresh(self) -> ScoreProgress:
        """Read the job's progress once and draw it; returns it."""
        p = self.job.progress()
        self.bar.value = p.fraction
        self.bar.bar_style = "" if p.state == "running" else "success" if p.state == "done" else "danger"
        self.status.value = status_html(self.job, p)
        return p

    def follow(self) -> threading.Thread:
        """Refresh on a daemon thread until the job is over (or ``stop``)."""
        thread = threading.Thread(target=self._run, name="modelforge-score-view", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop following (the bar keeps its last state)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.refresh().state != "running":
                    return
            except Exception:  # Redis away for a moment, or the widget closed: try again next tick
                continue

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        view = getattr(self.box, "_repr_mimebundle_", None)  # None once the widget is closed
        data = dict((view() if callable(view) else None) or {})
        data["text/plain"] = repr(self.job)
        return data


def in_kernel() -> bool:
    """True in a Jupyter kernel (a widget frontend may be there), False in terminal IPython or a script."""
    from IPython import get_ipython

    return type(get_ipython()).__name__ == "ZMQInteractiveShell"


def show_job(job: ScoreJob) -> None:
    """Display ``job``: the live bar in a kernel, its progress line elsewhere."""
    if in_kernel():
        view = ScoreProgressView(job)
        display(view)
        view.follow()
    else:
        display({"text/plain": repr(job)}, raw=True)
