"""The benchmark's plot: p50 latency (band to p95) and throughput by batch size, one fixed colour per path, text in
a mid grey on a transparent figure so the PNG reads on the light and the dark JupyterLab theme."""

from __future__ import annotations

import base64
import io

from ..core.benchmark import LABELS, BenchResult
from .bench_tables import paths_in_order

# A fixed colour per path, the same in every run; raw ONNX Runtime a neutral grey (its cold path: squares, dashed).
GREY = "#8c8c8c"
PATH_STYLES = {
    "cold": ("#9467bd", "o"), "api_cache_off": ("#1f77b4", "o"), "api_miss": ("#17becf", "o"),
    "api_hit": ("#2ca02c", "o"), "http_miss": ("#ff7f0e", "o"), "http_hit": ("#bcbd22", "o"),
    "v2_miss": ("#d62728", "o"), "v2_hit": ("#e377c2", "o"),
    "raw_ort": (GREY, "o"), "raw_cold": (GREY, "s"),
}
# Text, ticks and grid in a mid grey on a transparent figure: readable on the light and the dark JupyterLab theme.
FIGURE_RC = {
    "text.color": GREY, "axes.labelcolor": GREY, "axes.edgecolor": GREY, "xtick.color": GREY, "ytick.color": GREY,
    "grid.color": GREY, "legend.facecolor": "none", "legend.edgecolor": "none", "legend.labelcolor": GREY,
    "figure.facecolor": "none", "axes.facecolor": "none",
}
FIGURE_INCHES, FIGURE_DPI = (9.4, 3.5), 100  # 940 x 350 px: inside a 1,000 px output area


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
    """The figure as PNG bytes at ``FIGURE_DPI`` (940 x 350 px for ``bench_figure``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


def plot_bundle(result: BenchResult) -> dict[str, str]:
    """The plot as an ordinary output: base64 ``image/png`` (as nbformat stores it) and its ``text/plain`` alt."""
    return {"image/png": base64.b64encode(figure_png(bench_figure(result))).decode(), "text/plain": plot_alt(result)}


def plot_alt(result: BenchResult) -> str:
    """The plot's ``text/plain`` alternative: what it shows, for terminals and screen readers."""
    return (f"[plot: {result.model} v{result.version}, p50 latency (ms, band to p95) and throughput (predictions/s) "
            "by batch size, per path; the figures are in the table]")
