"""Where a benchmarked call's time goes: the per-stage split ``%mf_bench`` shows beside its figures, read from the
counters every prediction already updates (``metrics``: Triton's stages), so the split and the latency come from
the same calls.

Around each ModelForge cell the benchmark reads the model version's statistics (``ModelForge.statistics`` for the
paths run in this process; the server's ``GET modelforge/models/{name}/stats`` for ``http_*`` and ``v2_*``: the
server's own counts) before and after; a stage's figure is its mean µs per call that went through it (Δns / Δcount,
warm-up calls included: they take the same path). Stages most calls skipped (fewer than half the cell's requests:
the one miss that fills the cache before a hit cell) are left out.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

# In the order a request meets them; "cache_hit" / "cache_miss" are the prediction cache's lookups
STAGES = ("cache_hit", "cache_miss", "compute_input", "queue", "compute_infer", "compute_output")
COUNTED_PATHS = ("cold", "api_cache_off", "api_miss", "api_hit", "json_floor")  # run by ModelForge in this process
SERVER_PATHS = ("http_miss", "http_hit", "v2_miss", "v2_hit")  # run by the server: its counts

Counts = dict[str, tuple[int, int]]  # stage (and "requests") -> (count, ns)


def counts_of(stats: dict[str, Any], version: int) -> Counts:
    """``{stage: (count, ns)}`` and ``"requests"`` (successes + failures) of ``version`` in a statistics JSON
    (``{"model_stats": [...]}``, Triton's shape); zeros when that version was never counted."""
    for entry in stats.get("model_stats", ()):
        if str(entry.get("version")) == str(version):
            inference = entry["inference_stats"]
            out = {s: (inference[s]["count"], inference[s]["ns"]) for s in STAGES if s in inference}
            out["requests"] = (inference["success"]["count"] + inference["fail"]["count"], 0)
            return out
    return {}


def reader(path: str, mf: Any, server: Any, name: str, version: int) -> Callable[[], Counts] | None:
    """How to read the counts that ``path``'s calls update: this process's (``mf``), the server's, or None for the
    raw ONNX Runtime paths (nothing of ModelForge's runs there)."""
    if path in COUNTED_PATHS:
        return lambda: counts_of(mf.statistics(name, version), version)
    if path in SERVER_PATHS and server is not None:
        where = f"models/{urllib.parse.quote(name, safe='')}/stats?version={version}"
        return lambda: counts_of(server.call("GET", where), version)
    return None


def stage_split(before: Counts, after: Counts) -> tuple[tuple[str, float], ...]:
    """``((stage, mean µs per call through it), ...)`` in ``STAGES`` order, from two readings of one cell; stages
    fewer than half of the cell's requests went through are left out."""
    requests = after.get("requests", (0, 0))[0] - before.get("requests", (0, 0))[0]
    out = []
    for stage in STAGES:
        count = after.get(stage, (0, 0))[0] - before.get(stage, (0, 0))[0]
        ns = after.get(stage, (0, 0))[1] - before.get(stage, (0, 0))[1]
        if count > 0 and 2 * count >= requests:
            out.append((stage, ns / count / 1000))
    return tuple(out)


def format_stages(rows: Any) -> list[str]:
    """Text lines of the split: a line per measured ModelForge cell that has one (``path  batch  stage µs ...``)."""
    lines = []
    for r in rows:
        if r.stages_us:
            parts = "  ".join(f"{stage} {us:,.1f}" for stage, us in r.stages_us)
            lines.append(f"  {r.path:<14}{r.batch:>6}  {parts}")
    return ["where the time goes, mean µs per call by stage (ModelForge's counters):", *lines] if lines else []
