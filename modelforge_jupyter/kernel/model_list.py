"""What ``%mf_models`` and ``%mf_register`` / ``%mf_update`` show of models: a compact table (name, versions, input
and output signatures, size, age, short id; ``.to_df()`` for every field) and a two-line signature."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .markup import Markup, block, html_table, small, text_table, with_title


def spec_kind(spec: Any) -> str:
    """A declared input/output for a glance: ``float32 [?, 4]`` for a tensor, ``map per row`` for a ZipMap-style
    ``seq(map(...))``, ``sequence`` / ``map`` for other non-tensor values."""
    from ..core.tensors import shape_str

    if spec.dtype.startswith("seq(map("):
        return "map per row"
    if spec.dtype.startswith("seq("):
        return "sequence"
    if spec.dtype.startswith("map("):
        return "map"
    return f"{spec.dtype} {shape_str(spec.shape)}"


def inputs_text(specs: Sequence[Any]) -> str:
    """``float32 [?, 4]`` for a single input; ``name dtype shape, ...`` when the model takes several, an input with a
    default in the model marked ``(optional)``."""
    if len(specs) == 1 and not specs[0].optional:
        return spec_kind(specs[0])
    return ", ".join(f"{s.name} {spec_kind(s)}" + (" (optional)" if s.optional else "") for s in specs)


def outputs_text(specs: Sequence[Any]) -> str:
    """``output_label int64 [?], output_probability map per row``: each output's name and kind."""
    return ", ".join(f"{s.name} {spec_kind(s)}" for s in specs)


def fmt_size(n: float) -> str:
    """Bytes for a glance: ``690 B``, ``1.2 KB``, ``3.4 MB`` (powers of 1,024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def ago(when: datetime, now: datetime | None = None) -> str:
    """``just now``, ``42 s ago``, ``3 min ago``, ``5 h ago``, ``2 days ago``; the date after 30 days."""
    s = max(0.0, ((now or datetime.now(UTC)) - when).total_seconds())
    if s < 5:
        return "just now"
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600), (30 * 86400, "days", 86400)):
        if s < limit:
            k = int(s // size)
            return f"{k} {'day' if unit == 'days' and k == 1 else unit} ago"
    return when.strftime("%Y-%m-%d")


class ModelsTable:
    """The registry at a glance (``%mf_models``): name, versions, inputs, outputs, size, updated, short id.

    HTML in a notebook (full id, input names, exact time on hover), text in a terminal; ``.to_df()`` has every
    field in full; ``.records`` the ``ModelRecord`` of each model's latest version.
    """

    columns = ["name", "versions", "inputs", "outputs", "size", "updated", "id"]
    empty = "no models registered: %mf_register NAME PATH adds one"

    def __init__(self, records: Sequence[Any], now: datetime | None = None) -> None:
        self.records = list(records)
        now = now or datetime.now(UTC)
        self.rows = [[
            with_title(r.name, f"latest v{r.version}"),
            ", ".join(map(str, r.versions or [r.version])),
            with_title(inputs_text(r.inputs), "; ".join(f"{s.name} {s.dtype}" for s in r.inputs)),
            Markup("<br>".join(html.escape(f"{s.name} {spec_kind(s)}") for s in r.outputs), outputs_text(r.outputs)),
            fmt_size(r.size_bytes),
            with_title(ago(r.updated_at, now), r.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
            with_title(r.id[:8], r.id, "code"),
        ] for r in self.records]

    def __len__(self) -> int:
        return len(self.rows)

    def to_df(self):
        """A pandas DataFrame, one row per model: every ``ModelRecord`` field in full (id, sha256, declared
        inputs and outputs as ``name dtype shape``, size in bytes, timestamps as UTC datetimes)."""
        import pandas as pd

        from ..core.tensors import shape_str

        def specs(ss: Sequence[Any]) -> str:
            return "; ".join(f"{s.name} {s.dtype} {shape_str(s.shape)}" for s in ss)

        fields = ["name", "version", "versions", "id", "sha256", "size_bytes", "created_at", "updated_at"]
        return pd.DataFrame([{**{f: getattr(r, f) for f in fields}, "inputs": specs(r.inputs),
                              "outputs": specs(r.outputs)} for r in self.records],
                            columns=[*fields, "inputs", "outputs"])

    def _repr_html_(self) -> str:
        if not self.rows:
            return block(f"<i>{html.escape(self.empty)}</i>")
        return block(html_table(self.columns, self.rows), small("hover a cell for the full id, input names, exact "
                                                                "time; <code>.to_df()</code> for every field"))

    def __repr__(self) -> str:
        return text_table(self.columns, self.rows) if self.rows else self.empty


def signature_lines(rec: Any) -> list[str]:
    """The compact signature under a register/update line."""
    return [f"  inputs   {inputs_text(rec.inputs)}", f"  outputs  {outputs_text(rec.outputs)}"]
