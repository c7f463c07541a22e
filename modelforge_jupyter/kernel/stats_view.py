"""What ``%mf_stats`` shows: live requests/s, p50/p99 latency split into queue / compute / cache, the cache hit ratio
and loaded sessions, for the Jupyter server the kernel runs under and for the kernel itself.

The readings are the core's (``live_stats``: two Prometheus samples ``interval`` s apart); this module takes the
samples, keeps the last ``HISTORY`` readings per source and draws them:
- ``StatsDashboard`` (widget frontends): a headline line per source, a plot (requests/s and latency over time, the
  last window's p50 by stage with its p99) refreshed every ``interval`` s by a daemon thread until its Stop button,
  ``stop()`` or ``seconds``; the cell returns at once, so the notebook stays usable while it runs;
- ``StatsText`` (terminal IPython, ``--text``): a line per source per interval for ``seconds``, blocking.
A source that cannot be read (no server found, 403 with ``authenticate_prometheus``) shows why on its line and the
others go on.
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument
from IPython.display import display

from ..core.client import ModelForgeClient, ServerNotFoundError, find_server
from ..core.live_stats import Reading, Sample, local_sample, parse_sample, reading
from .bench_plot import figure_png
from .stats_plot import stats_figure
from .dashboard import mark_shown

HISTORY = 120  # readings kept per source (two minutes at the default interval)
DAY = 86_400.0  # s; NaN fails every comparison, so the bounds refuse it too


class Source:
    """One process to read: its ``label``, how to take a ``Sample`` of it, its readings and its last error."""

    def __init__(self, label: str, take: Callable[[], Sample], close: Callable[[], None] = lambda: None) -> None:
        self.label, self.take, self.close = label, take, close
        self.readings: deque[Reading] = deque(maxlen=HISTORY)
        self.first: Sample | None = None  # the first sample read: ``whole`` runs from it
        self.last: Sample | None = None
        self.error: str | None = None

    def tick(self) -> None:
        """Take a sample; add the reading since the previous one. A failure is kept as ``error`` (one line)."""
        try:
            sample = self.take()
        except Exception as err:  # noqa: BLE001 - shown on the source's line; the other sources go on
            self.error, self.last = str(err).splitlines()[0][:200] or type(err).__name__, None
            return
        self.error = None
        if self.last is not None:
            self.readings.append(reading(self.last, sample))
        self.first = self.first or sample
        self.last = sample

    def whole(self) -> Reading | None:
        """The reading from the first sample to the last (None before a second one): a stopped dashboard's summary."""
        if self.first is None or self.last is None or self.last is self.first:
            return None
        return reading(self.first, self.last)


def kernel_source(model: str | None) -> Source:
    """This kernel's own predictions (``live_stats.local_sample``)."""
    return Source("kernel", lambda: local_sample(model))


def server_source(connect: Callable[[], Any], model: str | None) -> Source:
    """The server's ``/metrics`` (``ModelForgeClient.metrics_text``); ``connect`` builds the client when first read."""
    client: list[Any] = []

    def take() -> Sample:
        if not client:
            client.append(connect())
        return parse_sample(client[0].metrics_text(), model)

    return Source("server", take, lambda: client and client.pop().close())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def headline(source: Source, whole: bool = False) -> str:
    """One line of a source's last reading: req/s, p50/p99, cache hits, sessions (or its error, or 'waiting'); with
    ``whole``, of everything from its first sample to its last instead, ending "over N s" (a stopped dashboard)."""
    r = source.whole() if whole else source.readings[-1] if source.readings else None
    if source.error and (r is None or not whole):
        return f"{source.label}: not read ({source.error})"
    if r is None:
        return f"{source.label}: waiting for a second sample"
    hits = "-" if r.hit_ratio is None else f"{100 * r.hit_ratio:.0f}%"
    return (f"{source.label}: {r.requests_per_s:,.1f} req/s, p50 {_ms(r.p50_ms['request'])}, p99 "
            f"{_ms(r.p99_ms['request'])}, cache hits {hits}, {r.sessions} sessions ({r.session_bytes / 1e6:.1f} MB)"
            + (f", {r.failures_per_s:,.1f} failed/s" if r.failures_per_s else "")
            + (f", over {r.seconds:,.1f} s" if whole else ""))


class StatsDashboard:
    """``VBox(HTML title and headlines, Image plot, Stop button)``, refreshed every ``interval`` s by a daemon thread
    from ``start()`` until ``stop()`` (the button), or after ``seconds`` when given; once stopped, each headline sums
    the whole run (``Source.whole``). Displayed as itself: the widget view plus a ``text/plain`` of the headlines."""

    def __init__(self, sources: list[Source], title: str, interval: float, seconds: float | None) -> None:
        import ipywidgets as w

        self.sources, self.title, self.interval, self.seconds = sources, title, interval, seconds
        self.text = w.HTML()
        # its natural 940 px (the figure's), shrunk with the output area, never stretched
        self.plot = w.Image(format="png", width=940, layout=w.Layout(max_width="100%", height="auto"))
        self.button = w.Button(description="Stop", icon="stop", layout=w.Layout(width="auto"))
        self.button.on_click(lambda _: self.stop())
        self.box = w.VBox([self.text, self.plot, self.button], layout=w.Layout(max_width="100%"))
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = "starting"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        view = getattr(self.box, "_repr_mimebundle_", None)
        data = dict((view() if callable(view) else None) or {})
        whole = self.status == "stopped"
        data["text/plain"] = "\n".join([f"{self.title} ({self.status})"] + [headline(s, whole) for s in self.sources])
        return data

    def start(self) -> StatsDashboard:
        """Take the first samples and start refreshing (a daemon thread)."""
        for s in self.sources:
            s.tick()
        self.status = "live"
        self._redraw()
        self._thread = threading.Thread(target=self._run, name="mf_stats", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        end = None if self.seconds is None else time.monotonic() + self.seconds
        last = time.monotonic()
        while not self._stopped.wait(self.interval):
            last = self._tick()
            self._redraw()
            if end is not None and time.monotonic() >= end:
                break
        if time.monotonic() - last >= self.interval / 4:  # stopped between readings: the time since the last one too
            self._tick()
        for s in self.sources:
            s.close()
        self.status = "stopped"
        self.button.disabled = True
        self._redraw()

    def _tick(self) -> float:
        for s in self.sources:
            s.tick()
        return time.monotonic()

    def _redraw(self, plot: bool = True) -> None:
        whole = self.status == "stopped"  # the last reading may be an idle moment: the run's summary instead
        lines = "".join(f"<div>{html.escape(headline(s, whole))}</div>" for s in self.sources)
        self.text.value = f"<b>{html.escape(self.title)}</b> <small>({self.status})</small>{lines}"
        if plot:
            self.plot.value = figure_png(stats_figure(self.sources, self.title))

    def stop(self, wait: bool = True) -> None:
        """Stop refreshing (the last plot stays); with ``wait``, until the thread has ended."""
        self._stopped.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.interval + 5)

    @property
    def running(self) -> bool:
        """Whether it is still refreshing."""
        return self._thread is not None and self._thread.is_alive()


class StatsText:
    """The text fallback: a headline per source every ``interval`` s for ``seconds`` s, printed (blocking)."""

    def __init__(self, sources: list[Source], title: str, interval: float, seconds: float) -> None:
        self.sources, self.title, self.interval, self.seconds = sources, title, interval, seconds

    def run(self) -> None:
        """Print the title, then the headlines of each reading until ``seconds`` have passed."""
        print(self.title)
        for s in self.sources:
            s.tick()
        end = time.monotonic() + self.seconds
        try:
            while time.monotonic() < end:
                time.sleep(min(self.interval, max(0.0, end - time.monotonic())))
                for s in self.sources:
                    s.tick()
                    print(headline(s), flush=True)
        finally:
            for s in self.sources:
                s.close()


def options(magic: Any) -> Any:
    """Add ``%mf_stats``' argument and options to ``magic`` (a ``magic_arguments`` method)."""
    for option in reversed((
        argument("model", nargs="?", default=None, help="model name or id (default: every model)"),
        argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)"),
        argument("--seconds", type=float, default=None,
                 help="stop after this many seconds (default: the dashboard runs until Stop; --text: 10)"),
        argument("--no-server", action="store_true", help="only this kernel's own predictions"),
        argument("--text", action="store_true", help="print a line per reading instead of the live dashboard"),
    )):
        magic = option(magic)
    return magic


def run(magics: Any, args: Any) -> StatsDashboard | None:
    """``%mf_stats`` with its parsed ``args`` for ``magics`` (a ``ModelForgeMagics``): the sources, then the
    dashboard (returned, already shown) or the text lines (None). Raises ``UsageError`` for a bad option,
    ``ModelNotFoundError`` for an unknown model."""
    if not 0 < args.interval <= DAY or (args.seconds is not None and not 0 < args.seconds <= 365 * DAY):
        raise UsageError("--interval and --seconds must be > 0 (and --interval at most a day, --seconds a year)")
    model = magics.forge.get(args.model).name if args.model else None
    sources = [kernel_source(model)]
    title = f"ModelForge live: {model or 'every model'}"
    if not args.no_server:
        try:
            server = find_server(magics.server_url, magics.server_token)
            sources.insert(0, server_source(lambda: ModelForgeClient(server, timeout=5), model))
        except ServerNotFoundError:
            title += " (no Jupyter server found: this kernel only)"
    in_kernel = type(magics.shell).__name__ == "ZMQInteractiveShell"
    if args.text or magics.widgets == "off" or (magics.widgets == "auto" and not in_kernel):
        StatsText(sources, title, args.interval, 10.0 if args.seconds is None else args.seconds).run()
        return None
    board = StatsDashboard(sources, title, args.interval, args.seconds).start()
    display(board)
    mark_shown(magics.shell, board)
    return board
