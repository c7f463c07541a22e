"""What ``%mf_register`` / ``%mf_update`` show under their confirmation line for a prepared version: one row for the
model as it came, one per preparation step (``core.prepare``), with size, answers' agreement and p50 latency.

HTML in a notebook (``markup``'s table), the same table as text elsewhere (``text/plain``)."""

from __future__ import annotations

import html
from typing import Any

from .markup import block, html_table, small, text_table
from .model_list import fmt_size
from .outputs import fmt_ms


def step_label(step: dict[str, Any]) -> str:
    """A step for a glance: ``outputs: label`` (the outputs kept) or ``quantize: dynamic int8 (3 weights)``."""
    if step["step"] == "outputs":
        return f"outputs: {', '.join(step['kept'])}"
    return f"quantize: {step['mode']} int8 ({step['weights_quantized']} weights)"


def _agreement(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _error(x: float | None) -> str:
    return "" if x is None else f"{x:.2g}"


class PreparationTable:
    """A version's ``preparation`` record (``ModelRecord.preparation``) as a table: rows ``as given`` then each
    step; columns size, labels agree (share of rows whose labels are unchanged by the step), max score error (the
    step's largest change of a score, relative to ``max(1, |score|)``), and with a measurement p50 ms at each batch
    measured, for the model as given and the one registered. ``rows`` and ``columns`` hold the cells."""

    def __init__(self, preparation: dict[str, Any]) -> None:
        self.preparation = preparation
        latency = preparation.get("latency_p50_ms") or []
        self.columns = ["", "size", "labels agree", "max score error", *(f"p50 batch {r['batch']}" for r in latency)]
        steps = preparation.get("steps", [])
        first = ["as given", fmt_size(preparation["size_before"]), "", "", *(_ms(r["before"]) for r in latency)]
        self.rows = [first]
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            self.rows.append([step_label(step), fmt_size(step["size_after"]), _agreement(step["label_agreement"]),
                              _error(step["max_score_error"]), *(_ms(r["after"]) if last else "" for r in latency)])
        if latency and not steps:
            self.rows[0][0] = "as registered"

    def caption(self) -> str:
        """``checked on 300 rows of the sample`` (or ``of synthetic rows``), and the notes of runs that failed."""
        sample = self.preparation.get("sample", {})
        kind = "synthetic rows built from the inputs" if sample.get("kind") == "synthetic" else "the sample"
        return "; ".join([f"checked on {sample.get('rows', '?')} rows of {kind}", *self.preparation.get("notes", [])])

    def _repr_html_(self) -> str:
        return block(html_table(self.columns, self.rows), small(html.escape(self.caption())))

    def __repr__(self) -> str:
        return text_table(self.columns, self.rows) + "\n" + self.caption()


def _ms(ms: float | None) -> str:
    return "failed" if ms is None else f"{fmt_ms(ms)} ms"
