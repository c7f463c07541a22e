"""The performance budget (issue 6, README "Performance"), checked on one benchmark run's rows: one ``Verdict`` a
line, each figure against the raw ONNX Runtime path measured in the same run (``benchmark``)."""

from __future__ import annotations

from dataclasses import dataclass

from .benchmark import HTTP_PATHS, LABELS, Row

@dataclass(frozen=True)
class Verdict:
    """One line of the performance budget (issue 6) checked on measured rows: ``holds`` and the figures behind it."""

    line: str
    model: str
    measured: str
    holds: bool


def budget(rows: list[Row], cache_backend: str = "redis") -> list[Verdict]:
    """Check the performance budget on one run's rows (each figure against the raw path of the same run):

    - cache off, batch 1: p50 <= raw ORT p50 + 25 µs, the consistency check's p50 (its own line) not counted;
    - cache off, largest batch: predictions/s >= 0.8x raw ORT's;
    - cold: p50 <= 1.5x raw session creation + first run, + 2 ms;
    - cache hit (``cache_backend`` redis): p50 <= 2x a raw Redis GET of the same key;
    - HTTP, batch 1: p50 <= 0.5 ms, cache off and cache hit;
    - HTTP, largest batch: predictions/s >= 0.8x the in-process JSON floor (``json_floor``);
    - V2 binary cache off (issue 12): largest batch >= 0.5x raw ORT's and >= 2x HTTP JSON's predictions/s; batch 1
      p50 <= HTTP JSON's.

    Lines whose rows were not measured are left out.
    """
    at = {(r.model, r.batch, r.path): r for r in rows}  # api_hit is read below, by position, beside its raw GET
    check = next((r.p50_ms for r in rows if r.path == "consistency_check"), 0.0)
    out: list[Verdict] = []
    for model in dict.fromkeys(r.model for r in rows):
        batches = sorted({r.batch for r in rows if r.model == model and r.path == "raw_ort"})
        if not batches:
            continue
        small, large = batches[0], batches[-1]
        raw, off = at.get((model, small, "raw_ort")), at.get((model, small, "api_cache_off"))
        if raw and off:
            extra_us = (off.p50_ms - raw.p50_ms - check) * 1000
            out.append(Verdict(f"cache off, batch {small}: p50 <= raw + 25 µs", model,
                               f"raw {raw.p50_ms * 1000:.1f} µs + {extra_us:.1f} µs (+ consistency check "
                               f"{check * 1000:.1f} µs) = {off.p50_ms * 1000:.1f} µs", extra_us <= 25))
        raw, off = at.get((model, large, "raw_ort")), at.get((model, large, "api_cache_off"))
        if raw and off and large > small:
            out.append(_throughput_verdict(f"cache off, batch {large}: >= 0.8x raw predictions/s", off, raw))
        raw, cold = at.get((model, 1, "raw_cold")), at.get((model, 1, "cold"))
        if raw and cold:
            limit = 1.5 * raw.p50_ms + 2.0
            out.append(Verdict("cold: p50 <= 1.5x raw creation + first run + 2 ms", model,
                               f"{cold.p50_ms:.2f} ms (limit {limit:.2f} ms; raw {raw.p50_ms:.2f} ms)",
                               cold.p50_ms <= limit))
        for path in HTTP_PATHS:
            r = at.get((model, small, path))
            if r and small == 1:
                out.append(Verdict(f"{LABELS[path]}, batch 1: p50 <= 0.5 ms", model, f"{r.p50_ms:.3f} ms",
                                   r.p50_ms <= 0.5))
        floor, http = at.get((model, large, "json_floor")), at.get((model, large, "http_miss"))
        if floor and http and large > small:
            out.append(_throughput_verdict(f"HTTP cache off, batch {large}: >= 0.8x JSON floor predictions/s",
                                           http, floor))
        out += _v2_verdicts(at, model, small, large)
    for i, r in enumerate(rows[:-1]):
        hit = rows[i + 1]
        if r.path == "raw_cache_get" and hit.path == "api_hit" and cache_backend == "redis":
            out.append(Verdict("cache hit: p50 <= 2x raw Redis GET", r.model,
                               f"{hit.p50_ms * 1000:.1f} µs / {r.p50_ms * 1000:.1f} µs = {hit.ratio_p50:.2f}x",
                               hit.p50_ms <= 2 * r.p50_ms))
    return out


def _throughput_verdict(line: str, row: Row, reference: Row, least: float = 0.8) -> Verdict:
    """``row``'s predictions/s >= ``least`` x ``reference``'s."""
    ratio = row.predictions_per_s / reference.predictions_per_s
    return Verdict(line, row.model, f"{row.predictions_per_s:,.0f} / {reference.predictions_per_s:,.0f} = "
                   f"{ratio:.2f}x", ratio >= least)


def _v2_verdicts(at: dict, model: str, small: int, large: int) -> list[Verdict]:
    """Issue 12's lines on the V2 binary rows (cache off): at the largest batch >= 0.5x raw ORT's and >= 2x the
    JSON endpoint's predictions/s; at batch 1 a p50 no slower than the JSON endpoint's."""
    out = []
    v2, raw, http = (at.get((model, large, p)) for p in ("v2_miss", "raw_ort", "http_miss"))
    if v2 and raw and large > small:
        out.append(_throughput_verdict(f"V2 binary cache off, batch {large}: >= 0.5x raw predictions/s", v2, raw, 0.5))
    if v2 and http and large > small:
        out.append(_throughput_verdict(f"V2 binary cache off, batch {large}: >= 2x HTTP JSON predictions/s", v2, http,
                                       2.0))
    v2, http = at.get((model, 1, "v2_miss")), at.get((model, 1, "http_miss"))
    if v2 and http:
        out.append(Verdict("V2 binary cache off, batch 1: p50 <= HTTP JSON p50", model,
                           f"{v2.p50_ms:.3f} ms vs {http.p50_ms:.3f} ms", v2.p50_ms <= http.p50_ms))
    return out


def format_budget(verdicts: list[Verdict]) -> str:
    """One line per verdict: ``holds`` or ``FAILS``, the model, the budget line and the measured figure."""
    return "\n".join(f"{'holds' if v.holds else 'FAILS':<6} {v.model:<17} {v.line}: {v.measured}" for v in verdicts)

