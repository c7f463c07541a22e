"""The import rules of the package's layers, read from the source (AST), lazy imports inside functions included.

Layers: the core (every module with no HTTP and no IPython: api, registry, cache, engine, protocol, client,
benchmark...), the doors (``server_extension/``, ``kernel/``, ``serve/`` (``modelforge serve``), the CLI's
``bench.py`` and ``demo.py``) and the entry points (the package's ``__init__``: ``jupyter server`` and ``%load_ext``
hooks, and ``cli/main.py``: the ``modelforge`` command, each of which loads the doors lazily).

Rules: the core imports no door; a door imports no other door; only ``engine.py`` imports onnxruntime; nothing imports
the package root (its hooks import the doors); and no import cycle among the package's modules. Tests are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "modelforge_jupyter"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
DOORS = {  # module-name prefix -> door
    f"{PACKAGE}.server_extension": "server_extension",
    f"{PACKAGE}.kernel": "kernel",
    f"{PACKAGE}.cli": "cli",
    f"{PACKAGE}.serve": "serve",
}
# Entry points that route to the doors (each door imported lazily, where it is named): they may import any door.
ROUTERS = {PACKAGE, f"{PACKAGE}.cli.main"}
ENGINE = f"{PACKAGE}.core.engine"
# Import edges let stand for now, each (importer, imported) with why. Keep this list small: each entry is a debt of
# issue 11 ("Architecture: layers you can see in the folders..."), paid off in its later steps.
ALLOWED: dict[tuple[str, str], str] = {}  # edges exempt from the rules, each with its reason: none left


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Absolute names of what module ``name`` imports anywhere in its source (functions and classes included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from . import tasks` imports a module; `from .api import X`, the module api
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    return found


def product_module(imported: str) -> str | None:
    """The package module an imported name loads (the longest module prefix of it), or None when not ours."""
    parts = imported.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


GRAPH = {name: {t for t in (product_module(i) for i in imports(name)) if t is not None and t != name}
         for name in MODULES}


def door(name: str) -> str | None:
    return next((d for prefix, d in DOORS.items() if name == prefix or name.startswith(prefix + ".")), None)


def layer_faults(graph: dict[str, set[str]]) -> list[str]:
    faults = []
    for importer, targets in sorted(graph.items()):
        if importer in ROUTERS or importer in ENTRY_POINTS:
            continue  # the entry points: their hooks and subcommands load the doors (lazily), or re-export
        for target in sorted(targets):
            if (importer, target) in ALLOWED:
                continue
            if target == PACKAGE:
                faults.append(f"{importer} imports the package root (its entry points load the doors); import the "
                              f"module itself")
            elif door(target) is not None and door(importer) is None:
                faults.append(f"core module {importer} imports door {target}")
            elif door(target) is not None and door(importer) != door(target):
                faults.append(f"door {importer} imports another door, {target}")
    return faults


def onnxruntime_faults(modules: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} imports onnxruntime: only {ENGINE} may (use engine.raw_session / engine.available_providers)"
        for name, imported in modules.items()
        if name != ENGINE and any(i == "onnxruntime" or i.startswith("onnxruntime.") for i in imported)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle (one shortest loop per strongly connected component), allowed edges left out."""
    graph = {a: {b for b in bs if (a, b) not in ALLOWED} for a, bs in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is small (~40 modules), recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_loop(graph, min(c), c) for c in components]


def _loop(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no loop through {start}")


def test_every_product_module_is_read():
    assert {f"{PACKAGE}.core.api", f"{PACKAGE}.core.protocol", f"{PACKAGE}.server_extension.handlers",
            f"{PACKAGE}.kernel.magics", f"{PACKAGE}.cli.bench", ENGINE} <= set(GRAPH)
    # lazy imports count: the handlers' base imports the api inside a method only
    assert f"{PACKAGE}.core.api" in GRAPH[f"{PACKAGE}.server_extension.base"]


# Modules outside core/ and the door folders: entry points at documented import paths, each a thin re-export.
ENTRY_POINTS = {
    PACKAGE: "jupyter server / %load_ext hooks and the lazy ModelForge facade",
    f"{PACKAGE}._version": "__version__, read by the build too",
    f"{PACKAGE}.tasks": "`celery -A modelforge_jupyter.tasks worker` (re-exports core.tasks)",
    f"{PACKAGE}.bench": "`python -m modelforge_jupyter.bench`, earlier READMEs' path of cli.bench",
    f"{PACKAGE}.settings": "`modelforge_jupyter.settings.Settings`, earlier READMEs' path of core.settings",
    f"{PACKAGE}.services": "package of the documented profiling entry point",
    f"{PACKAGE}.services.onnx": "ONNXService, the performance documentation's profiling entry point",
    f"{PACKAGE}.cli.main": "the `modelforge` command: routes a subcommand (serve, demo, bench) to its door",
}


def test_every_module_lives_in_its_layers_folder():
    homeless = sorted(name for name in MODULES if name not in ENTRY_POINTS and door(name) is None
                      and not (name == f"{PACKAGE}.core" or name.startswith(f"{PACKAGE}.core.")))
    assert not homeless, f"modules outside core/ and the doors' folders: {homeless}"


def test_entry_points_outside_the_folders_stay_thin():
    # an entry point only re-exports: the rules it serves live in core
    for name in ENTRY_POINTS:
        lines = [line for line in MODULES[name].read_text().splitlines() if line.strip()]
        assert len(lines) <= 40, f"{name} has {len(lines)} lines: move its logic into core"


def test_core_imports_no_door_and_no_door_imports_another():
    faults = layer_faults(GRAPH)
    assert not faults, "\n".join(faults)


def test_only_the_engine_imports_onnxruntime():
    faults = onnxruntime_faults({name: imports(name) for name in MODULES})
    assert not faults, "\n".join(faults)


def test_no_import_cycle():
    loops = [" -> ".join(loop) for loop in cycles(GRAPH)]
    assert not loops, "import cycles:\n" + "\n".join(loops)


def test_the_allow_list_holds_only_edges_that_exist():
    # an allowed edge that no longer exists must leave the list (so that the list only shrinks)
    assert [edge for edge in ALLOWED if edge[1] not in GRAPH.get(edge[0], set())] == []


@pytest.mark.parametrize(
    ("graph", "fault"),
    [
        ({"modelforge_jupyter.core.api": {"modelforge_jupyter.kernel.magics"}},
         "core module modelforge_jupyter.core.api imports door modelforge_jupyter.kernel.magics"),
        ({"modelforge_jupyter.cli.bench": {"modelforge_jupyter.server_extension.handlers"}},
         "door modelforge_jupyter.cli.bench imports another door, modelforge_jupyter.server_extension.handlers"),
        ({"modelforge_jupyter.serve.app": {"modelforge_jupyter.server_extension.handlers"}},
         "door modelforge_jupyter.serve.app imports another door, modelforge_jupyter.server_extension.handlers"),
        ({"modelforge_jupyter.core.api": {"modelforge_jupyter"}},
         "modelforge_jupyter.core.api imports the package root (its entry points load the doors); import the module "
         "itself"),
    ],
)
def test_the_checks_catch_a_broken_rule(graph, fault):
    assert layer_faults(graph) == [fault]


def test_only_the_modelforge_command_routes_to_other_doors():
    # cli/main.py (the `modelforge` command) imports the serve door for `modelforge serve`; cli's other modules may not
    assert f"{PACKAGE}.serve.server" in GRAPH[f"{PACKAGE}.cli.main"]
    assert layer_faults({f"{PACKAGE}.cli.main": {f"{PACKAGE}.serve.server"}}) == []
    assert layer_faults({f"{PACKAGE}.cli.demo": {f"{PACKAGE}.serve.server"}}) == [
        f"door {PACKAGE}.cli.demo imports another door, {PACKAGE}.serve.server"]


def test_the_cycle_check_names_the_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert onnxruntime_faults({"x": {"onnxruntime"}, ENGINE: {"onnxruntime"}}) == [
        f"x imports onnxruntime: only {ENGINE} may (use engine.raw_session / engine.available_providers)"]


# One concern a module (``../shared/STYLE.md``): a module past its layer's size is split by concern, not let grow.
MAX_LINES = {"core": 400, "door": 260}


def test_no_module_outgrows_its_layer():
    too_long = []
    for name, path in MODULES.items():
        limit = MAX_LINES["door"] if door(name) is not None else MAX_LINES["core"]
        lines = len(path.read_text().splitlines())
        if lines > limit:
            too_long.append(f"{name}: {lines} lines (its layer's limit: {limit}); split it by concern")
    assert not too_long, "\n".join(too_long)


def test_earlier_documented_paths_still_work():
    # `python -m modelforge_jupyter.bench` and `modelforge_jupyter.settings.Settings` were in earlier READMEs
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "modelforge_jupyter.bench", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--models" in out.stdout, out.stderr
    from modelforge_jupyter import Settings
    from modelforge_jupyter.core.settings import Settings as CoreSettings
    from modelforge_jupyter.settings import Settings as OldPathSettings

    assert Settings is CoreSettings is OldPathSettings
