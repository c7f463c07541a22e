"""Write the README's table of settings from the table in the code (``SETTINGS`` in ``core/settings.py``).

Run it after adding or changing a setting: ``.venv/bin/python scripts/readme_settings.py``. It replaces what lies
between the README's ``<!-- settings-table`` and ``<!-- end of settings-table -->`` comments;
``tests/test_settings.py`` fails while the two differ.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- settings-table:.*?-->\n)(.*?)(<!-- end of settings-table -->)", re.DOTALL)


def with_table(readme: str, table: str) -> str:
    """``readme`` with ``table`` (markdown) between the settings-table comments, blank lines around it."""
    found = BLOCK.search(readme)
    if found is None:
        raise SystemExit(f"{README}: no <!-- settings-table: ... --> ... <!-- end of settings-table --> block")
    return readme[: found.start(2)] + f"\n{table}\n" + readme[found.end(2):]


def main() -> int:
    sys.path.insert(0, str(README.parent))
    from modelforge_jupyter.core.settings import markdown_table

    text = README.read_text()
    new = with_table(text, markdown_table())
    if new != text:
        README.write_text(new)
        print(f"{README}: settings table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
