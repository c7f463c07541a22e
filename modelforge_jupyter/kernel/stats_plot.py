"""``%mf_stats``' plot: requests/s and latency over the last readings per source (the server, the kernel), and the
last window's p50 to p99 per stage; transparent with mid-grey text (``bench_plot.FIGURE_RC``), so the PNG reads on
the light and the dark JupyterLab theme."""

from __future__ import annotations

from typing import Any

from ..core.live_stats import STAGE_HISTOGRAMS
from .bench_plot import FIGURE_DPI, FIGURE_RC

COLORS = {"server": "#ff7f0e", "kernel": "#1f77b4"}  # a fixed colour per source


def stats_figure(sources: list[Any], title: str):
    """A matplotlib ``Figure`` (no pyplot): requests/s and latency (request p50 solid, p99 dashed) over the last
    readings per source, and the last window's p50 to p99 per stage; 940 x 300 px, transparent
    with mid-grey text (``bench_plot.FIGURE_RC``) so it reads on the light and the dark theme."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(FIGURE_RC):
        fig = Figure(figsize=(9.4, 3.0), dpi=FIGURE_DPI, layout="constrained")
        fig.patch.set_alpha(0)
        rate, lat, split = fig.subplots(1, 3, width_ratios=(1, 1, 0.8))
        for s in sources:
            if not s.readings:
                continue
            t0 = s.readings[-1].at
            x = [r.at - t0 for r in s.readings]
            color = COLORS.get(s.label, "#8c8c8c")
            rate.plot(x, [r.requests_per_s for r in s.readings], color=color, label=s.label, marker=".")
            lat.plot(x, [r.p50_ms["request"] for r in s.readings], color=color, marker=".")
            lat.plot(x, [r.p99_ms["request"] for r in s.readings], color=color, linestyle="--", marker=".")
        _stage_bars(split, sources)
        for ax, label in ((rate, "requests/s"), (lat, "latency, ms (p50 —, p99 --)")):
            ax.set_xlabel("seconds (0: now)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        rate.set_ylim(bottom=0)
        if rate.get_legend_handles_labels()[0]:
            lat.set_yscale("log")
            rate.legend(fontsize="x-small", loc="lower left")
        fig.suptitle(title, fontsize="medium")
    return fig


def _stage_bars(ax: Any, sources: list[Any]) -> None:
    """The last window's p50 per stage and source as a dot, a line from it to the p99, on a log axis."""
    stages = [s for s in STAGE_HISTOGRAMS if s != "request"]
    live = [s for s in sources if s.readings]
    step = 0.6 / max(1, len(live))
    drawn = False
    for i, s in enumerate(live):
        r = s.readings[-1]
        for j, st in enumerate(stages):
            low, high = r.p50_ms[st], r.p99_ms[st]
            if low is None:
                continue
            y = j + i * step
            ax.plot([low, high], [y, y], color=COLORS.get(s.label, "#8c8c8c"), linewidth=2)
            ax.plot([low], [y], "o", color=COLORS.get(s.label, "#8c8c8c"))
            drawn = True
    ax.set_yticks([j + 0.3 - step / 2 for j in range(len(stages))], stages)
    ax.set_ylim(-0.5, len(stages) - 0.2)
    if drawn:
        ax.set_xscale("log")
    ax.set_xlabel("ms (p50 ●, to p99)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
