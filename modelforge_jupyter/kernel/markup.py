"""HTML building blocks of the kernel's rich outputs, readable in JupyterLab's light and dark themes.

The HTML fits a 1,000 px output area: no fixed widths, left-aligned, ``max-width: 100%``; a wide table scrolls inside
its own ``overflow-x: auto`` div with its first column fixed (``position: sticky``). Colours are JupyterLab's CSS
variables with fallbacks (``var(--jp-ui-font-color1, inherit)``). Every table has a ``text/plain`` twin
(``text_table``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

MUTED = "var(--jp-ui-font-color2, #888)"
BORDER = "var(--jp-border-color2, rgba(128, 128, 128, 0.35))"
# Selectors outrank JupyterLab's ``.jp-RenderedHTMLCommon td`` (right-aligned, centred tables).
CSS = ("<style>"
       ".mf-out table.mf-table {margin: 0; border-collapse: collapse; table-layout: auto; width: auto}"
       f" .mf-out table.mf-table th, .mf-out table.mf-table td {{padding: 2px 8px; white-space: nowrap;"
       f" text-align: left; border-bottom: 1px solid {BORDER}; color: var(--jp-ui-font-color1, inherit)}}"
       " .mf-out table.mf-right th, .mf-out table.mf-right td {text-align: right}"
       " .mf-out table.mf-table td {font-family: var(--jp-code-font-family, monospace)}"
       # the first column stays in view while the rest of a wide table scrolls under it
       " .mf-out table.mf-table tr > :first-child {position: sticky; left: 0; z-index: 1; text-align: left;"
       " background: var(--jp-layout-color0, Canvas)}"
       "</style>")
OUTER = "max-width: 100%; text-align: left; color: var(--jp-ui-font-color1, inherit)"
SCROLL = "max-width: 100%; overflow-x: auto"


class Markup(str):
    """A table cell that is already HTML (``html_table`` does not escape it); its text is ``plain``."""

    plain: str

    def __new__(cls, markup: str, plain: str) -> Markup:
        obj = super().__new__(cls, markup)
        obj.plain = plain
        return obj


def plain(cell: Any) -> str:
    """A table cell's text: a ``Markup``'s ``plain``, else ``str(cell)``."""
    return cell.plain if isinstance(cell, Markup) else str(cell)


def with_title(text: str, title: str, tag: str = "span") -> Markup:
    """``text`` that shows ``title`` on hover."""
    return Markup(f'<{tag} title="{html.escape(title)}">{html.escape(text)}</{tag}>', text)


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], groups: Sequence[tuple[str, int]] = (),
               caption: str = "", right: bool = False) -> str:
    """An HTML table in its own horizontally scrolling div; ``groups`` adds a header row of (label, colspan) above
    ``columns``; cells are escaped unless ``Markup``; ``caption`` is HTML; ``right`` right-aligns every cell."""
    head = ""
    if groups:
        head += "<tr>" + "".join(f'<th colspan="{n}">{html.escape(g)}</th>' for g, n in groups) + "</tr>"
    head += "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{cell_html(v)}</td>" for v in row) + "</tr>" for row in rows)
    cap = f'<caption style="text-align: left">{caption}</caption>' if caption else ""
    cls = "mf-table mf-right" if right else "mf-table"
    return (f'<div class="mf-out" style="{SCROLL}">{CSS}<table class="{cls}">{cap}<thead>{head}</thead>'
            f"<tbody>{body}</tbody></table></div>")


def cell_html(v: Any) -> str:
    """A table cell's HTML: a ``Markup`` as it is, anything else escaped."""
    return v if isinstance(v, Markup) else html.escape(str(v))


def text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: columns padded to their widest cell, a rule under the header."""
    cells = [[str(c) for c in columns]] + [[plain(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def block(*parts: str) -> str:
    """The outer div of a rich output: left-aligned, never wider than the output area, the theme's text colour."""
    return f'<div class="mf-out" style="{OUTER}">{"".join(parts)}</div>'


def small(text_html: str) -> str:
    """``text_html`` as a small line in the theme's muted colour."""
    return f'<div style="font-size: smaller; color: {MUTED}">{text_html}</div>'
