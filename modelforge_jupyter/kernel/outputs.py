"""How the kernel door shows a prediction: a header line with its cache badge, then its outputs as a table.

Every rich output has a ``text/plain`` form with the same facts (terminal IPython, ``nbconvert --to markdown``); the
HTML is built from ``markup``'s blocks, with semi-transparent badge backgrounds so both the light and the dark theme
read them. Records stay free of IPython: the rendering lives here (the model list: ``model_list``; hints: ``refusals``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from .markup import Markup, block, html_table, small, text_table

BADGES = {  # semi-transparent backgrounds: readable under the theme's own text colour, light or dark
    "cache hit": "rgba(46, 160, 67, 0.22)",
    "cache miss": "rgba(210, 153, 34, 0.22)",
}
MAX_ROWS = 20  # prediction rows shown; the PredictionResult keeps them all


# -- predictions -------------------------------------------------------------------------------------------------
def fmt_ms(ms: float) -> str:
    """Milliseconds for a glance: one decimal from 1 ms (``21.6``), two below (``0.25``)."""
    return f"{ms:,.1f}" if ms >= 1 else f"{ms:.2f}"


def fmt_probability(p: Any) -> str:
    """A probability with three fixed decimals; ``<0.001`` and ``>0.999`` for values that would round to 0 or 1."""
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        return "null" if p is None else str(p)
    if 0 < p < 0.001:
        return "<0.001"
    if 0.999 < p < 1:
        return ">0.999"
    return f"{p:.3f}"


def float_column(values: Sequence[Any]) -> list[str]:
    """Floats of one column with the same format: three fixed decimals, or three-digit scientific when a value
    is tiny or huge (so ``1.4e-08`` and ``0.018`` never share a column in two styles)."""
    nums = [abs(v) for v in values if isinstance(v, float)]
    sci = any(n != 0 and not 1e-3 <= n < 1e9 for n in nums)
    return [("null" if v is None else str(v)) if not isinstance(v, float) else (f"{v:.3e}" if sci else f"{v:,.3f}")
            for v in values]


def fmt_other(v: Any) -> str:
    """A prediction value that is not a probability, as text: ``null`` for None, floats to 6 significant digits,
    anything else ``str``; cut to 60 characters (``...``)."""
    text = "null" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
    return text if len(text) <= 60 else text[:57] + "..."


def _is_label(v: list) -> bool:
    """Whether an output's rows are single class labels (ints, strings, bools; not floats)."""
    first = v[0]
    if isinstance(first, list) and len(first) == 1:
        first = first[0]
    return isinstance(first, (int, str, bool))


def prediction_table(output_data: dict[str, Any]) -> tuple[list[str], list[list[Any]], int, dict[str, str]]:
    """(columns, first ``MAX_ROWS`` rows, batch size, other outputs) of ``PredictionResult.output_data``.

    The batch is the length of the first list output; each output of that length becomes columns, one row per
    sample, labels (rows of one int or string) first and emphasised in HTML: ZipMap maps one column per class
    (``P(class)`` for a single map output, else ``name[class]``), vectors of up to 8 values one per element
    (``name[j]``; ``name`` alone for width 1). Map values and outputs named ``*prob*`` show as probabilities (three
    fixed decimals, ``<0.001``), other floats with one format per column. Outputs without that batch axis are
    returned apart, abbreviated.
    """
    lists = [v for v in output_data.values() if isinstance(v, list)]
    n = len(lists[0]) if lists else 0
    batched = {k: v for k, v in output_data.items() if isinstance(v, list) and n and len(v) == n}
    other = {k: fmt_other(v) for k, v in output_data.items() if k not in batched}
    order = sorted(batched, key=lambda k: not _is_label(batched[k]))
    maps = [k for k in order if isinstance(batched[k][0], dict)]
    columns, cols = ["row"], [[str(i) for i in range(n)]]
    for name in order:
        v = batched[name]
        first, label = v[0], _is_label(v)
        if isinstance(first, dict):
            for k in first:
                columns.append(f"P({k})" if len(maps) == 1 else f"{name}[{k}]")
                cols.append([fmt_probability(m.get(k) if isinstance(m, dict) else None) for m in v])
            continue
        if isinstance(first, list) and 0 < len(first) <= 8 and not any(isinstance(x, list) for x in first):
            parts = [(name if len(first) == 1 else f"{name}[{j}]",
                      [r[j] if isinstance(r, list) and j < len(r) else None for r in v]) for j in range(len(first))]
        else:
            parts = [(name, v)]
        for col, values in parts:
            columns.append(col)
            if "prob" in name.lower():
                texts = [fmt_probability(x) for x in values]
            elif any(isinstance(x, float) for x in values):
                texts = float_column(values)
            else:
                texts = [fmt_other(x) for x in values]
            cols.append([Markup(f"<b>{html.escape(t)}</b>", t) for t in texts] if label else texts)
    rows = [[c[i] for c in cols] for i in range(min(n, MAX_ROWS))]
    return columns, rows, n, other


def cache_status(result: Any) -> str:
    """``cache hit`` or ``cache miss`` (the badge's text and colour key, ``BADGES``)."""
    return "cache hit" if result.cached else "cache miss"


def model_label(result: Any) -> str:
    """The name the model was called by, else (a result built from an answer without it) its short id."""
    return getattr(result, "model_name", "") or result.model_id[:8]


def prediction_summary(result: Any) -> str:
    """One line: ``iris v1 · 21.6 ms · cache miss`` (ModelForge's time for the call; whether the cache answered)."""
    ms = fmt_ms(result.inference_time_ms)
    return f"{model_label(result)} v{result.model_version} · {ms} ms · {cache_status(result)}"


def prediction_html(result: Any) -> str:
    """``text/html`` of a ``PredictionResult``: name, version, time and a cache badge; the outputs table (labels
    first); other outputs; the model and prediction ids in small print (the exact time on hover)."""
    columns, rows, n, other = prediction_table(result.output_data)
    status = cache_status(result)
    badge = (f'<span title="cached={result.cached}" style="background: {BADGES[status]}; border-radius: 3px;'
             f' padding: 0 6px">{status}</span>')
    head = (f'<div style="margin-bottom: 4px"><b title="model id {html.escape(result.model_id)}">'
            f"{html.escape(model_label(result))}</b> v{result.model_version} · "
            f'<span title="{result.inference_time_ms:.3f} ms">{fmt_ms(result.inference_time_ms)} ms</span> · {badge}'
            "</div>")
    parts = [head]
    if n:
        parts.append(html_table(columns, rows, right=True))
    if n > MAX_ROWS:
        parts.append(f"<div><i>{n - MAX_ROWS} more rows in .output_data</i></div>")
    parts += [f"<div><code>{html.escape(k)}</code>: {html.escape(v)}</div>" for k, v in other.items()]
    parts.append(small(html.escape(ids_line(result))))
    return block(*parts)


def ids_line(result: Any) -> str:
    """The prediction and model ids, in full, for the small print under a prediction."""
    return f"model id {result.model_id} · prediction id {result.prediction_id}"


def prediction_text(result: Any) -> str:
    """``text/plain`` of a ``PredictionResult``: the same facts as ``prediction_html``, as a text table."""
    columns, rows, n, other = prediction_table(result.output_data)
    parts = [prediction_summary(result)]
    if n:
        parts.append(text_table(columns, rows))
    if n > MAX_ROWS:
        parts.append(f"... {n - MAX_ROWS} more rows in .output_data")
    parts += [f"{k}: {v}" for k, v in other.items()]
    parts.append(ids_line(result))
    return "\n".join(parts)
