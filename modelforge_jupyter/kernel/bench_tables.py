"""The benchmark's figures as tables: the dashboard's compact table (one row per path, one column per batch size,
ratio to raw ONNX Runtime as a coloured suffix) and the static table of every figure (``bench_result_html``)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from ..core.bench_stages import STAGES
from ..core.benchmark import LABELS, RAW_OF, BenchResult, Row
from .markup import Markup, block, html_table, small

# ModelForge paths first (each with its ratio to raw), then the raw ONNX Runtime paths they are compared with.
DISPLAY_ORDER = ("cold", "api_cache_off", "api_miss", "api_hit", "http_miss", "http_hit", "v2_miss", "v2_hit",
                 "raw_ort", "raw_cold")
PENDING = "…"
# The switch: its label -> (Row field, what the figure is, whether more is better).
METRICS = {
    "p50": ("p50_ms", "p50 latency, ms", False), "p95": ("p95_ms", "p95 latency, ms", False),
    "p99": ("p99_ms", "p99 latency, ms", False), "pred/s": ("predictions_per_s", "throughput, predictions/s", True),
}


def paths_in_order(paths: Sequence[str]) -> list[str]:
    """``paths`` in display order (``DISPLAY_ORDER``: ModelForge paths, then the raw ONNX Runtime ones)."""
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
    """``×1.20`` below 10, ``×190`` from 10."""
    return f"×{r:.2f}" if r < 10 else f"×{r:,.0f}"


def ratio_color(r: float) -> str:
    """Green at ×1 (or better), yellow near ×3, orange near ×10, red from ×100: hue on log10 of the ratio."""
    hue = 120 * (1 - min(max(math.log10(r), 0.0), 2.0) / 2)
    return f"hsl({hue:.0f}, 75%, 50%)"


def ratio_html(r: float, what: str) -> str:
    """A ratio as a small coloured suffix (``ratio_color``), with ``what`` it compares on hover."""
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


def stages_table(rows: Sequence[Row]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the stage split (``core.bench_stages``): one row per ModelForge cell that has one, mean µs
    per call in each stage it went through (blank: not through that stage)."""
    stages = [s for s in STAGES if any(s in dict(r.stages_us) for r in rows)]
    by = {(r.batch, r.path): r for r in rows if r.stages_us}
    out = [[LABELS[path], str(b)] + [f"{dict(by[b, path].stages_us)[s]:,.1f}" if s in dict(by[b, path].stages_us)
                                     else "" for s in stages]
           for path in paths_in_order({p for _, p in by}) for b in sorted(b for b, p in by if p == path)]
    return ["path", "batch", *(f"{s} µs" for s in stages)], out


def notes_html(notes: Sequence[str]) -> str:
    """Each note as a small muted line (escaped)."""
    return "".join(small(html.escape(n)) for n in notes)


def bench_result_html(result: BenchResult) -> str:
    """``text/html`` of a ``BenchResult``: its summary line, every figure (p50/p95/p99 ms, predictions/s, the ratio
    to raw ONNX Runtime), the backend and the notes."""
    head = (f"<div><b>{html.escape(result.model)} v{result.version}</b>: every figure, ModelForge beside raw "
            f"ONNX Runtime</div>")
    columns, stages = stages_table(result.rows)
    split = html_table(columns, stages, right=True, caption=small(
        "where the time goes: mean µs per call in each stage it went through (ModelForge's own counters)")) \
        if stages else ""
    return block(head, html_table(FULL_COLUMNS, full_table(result.rows, result.batch_sizes), right=True), split,
                 notes_html([result.summary(), *result.notes]))
