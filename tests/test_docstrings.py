"""Every public module, class, function and method of the product says what it does (issue 11): read from the
source (AST), so a new public name without a docstring fails here. Private names (``_x``) and dunders are exempt;
so are the migrations (Alembic's own layout)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "modelforge_jupyter"


def undocumented(path: Path) -> list[str]:
    """Qualified names in ``path`` that are public and have no docstring (the module itself as ``<module>``)."""
    tree = ast.parse(path.read_text(), str(path))
    missing = [] if ast.get_docstring(tree) else ["<module>"]

    def visit(node: ast.AST, prefix: str) -> None:
        for child in getattr(node, "body", []):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if child.name.startswith("_"):
                continue
            if not ast.get_docstring(child):
                missing.append(prefix + child.name)
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return missing


def test_every_public_name_has_a_docstring():
    faults = [f"{path.relative_to(ROOT.parent)}: {name}"
              for path in sorted(ROOT.rglob("*.py")) if "migrations" not in path.parts
              for name in undocumented(path)]
    assert not faults, f"{len(faults)} public names without a docstring:\n" + "\n".join(faults)


def test_the_check_sees_a_missing_docstring(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('"""A module."""\n\ndef f():\n    """Documented."""\n\nclass C:\n    def g(self):\n'
                      '        pass\n\n    def _h(self):\n        pass\n')
    assert undocumented(source) == ["C", "C.g"]
