"""Every code block of README.md, run as written after the README's first command, as a user would run it.

The convention (README.md points here; it is defined here only):

- A fenced block whose language is ``bash`` runs with ``bash -e -o pipefail -c BLOCK``. One whose language is
  ``python`` runs with ``.venv/bin/python``, or, when it uses an IPython magic (a line that starts with ``%`` or
  ``name = %``), as one cell in a Jupyter kernel of that Python (nbclient). A fence with no language is output, never
  run.
- Each runs from the repository root, in a user's environment: embedded defaults (no ``DATABASE_URL``,
  ``REDIS_URL``... and no ``MODELFORGE_*``), Jupyter's config, data and runtime directories fresh under a temporary
  directory, and a ``PATH`` without the venv's ``bin`` (the README assumes no activated venv: commands name
  ``.venv/bin/...``). As root, that Jupyter config allows root, as the README tells root to (``--allow-root``).
- Before each block, the Jupyter data directory is a fresh copy of the state the first command leaves
  (``.venv/bin/modelforge-demo --no-server``: the demo's models in the embedded registry). After it, the registry must
  hold exactly the demo's models at their versions: an example leaves no model behind and leaves the demo's alone.
- ``<!-- readme-test: background, ready: URL -->`` on the line before a block: it starts a long-running process (a
  server), run in the background in its own process group; it is ready when ``URL`` answers 200 (its port must be
  free before it starts: the README's lines call that port, so a taken port fails the test, naming it).
  ``ready-log: TEXT`` instead: ready when the process's output shows ``TEXT`` (a worker). The process serves the
  blocks after it up to the next heading, which run on the same data directory, then it is stopped (SIGTERM to its
  group, SIGKILL after 20 s). It must still be running then.
- ``<!-- readme-test: not run: REASON -->``: a block that cannot run here (the set-up itself; infrastructure this
  machine has not, such as a Kubernetes cluster). Not collected as a run; such blocks are few, and the one there is
  (the set-up) is checked to be what ``.ci/run`` runs.
- A block naming a service URL (``redis://``, ``amqp://``, ``postgresql...://`` with host and port) needs it to
  answer: skipped locally when it does not, failed under CI, as the other service tests are.
- ``EXPECT`` below: for some blocks, patterns their output must show, in order (the documented answers).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelforge_jupyter.cli.demo import port_taken

from .mf_plugin import MfProcess, mf_embedded, mf_isolated_env, mf_launch, mf_skip_unless_ci

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
VENV = REPO / ".venv"
RUN_LANGS = {"bash": "bash", "sh": "bash", "python": "python"}
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
MARK = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
HEADING = re.compile(r"^#{1,6} ")
MAGIC = re.compile(r"^\s*(?:[A-Za-z_]\w*\s*=\s*)?%", re.M)
SERVICE = re.compile(r"\b(?:redis|amqp|postgresql[\w+]*)://(?:[^@/\s]*@)?([\w.-]+):(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Documented answers: {a substring naming one block: regexes its output shows, in that order (re.M)}.
EXPECT = {
    "%mf_score demo_breast_cancer_rf X": [r"^\(20000,\)$"],
    "demo_breast_cancer_rf\", X, chunk_rows": [  # batch scoring
        r"^\[[01]( [01]){4}\] done: 50,000/50,000 rows \(100%\), [\d,]+ rows/s, [\d.]+ s$",
        r"^done \['part-00000.parquet', 'part-00001.parquet'\]$",
        r"^\(\(42, \"input 'float_input': expected float32 \[\?, 30\], got mixed or non-numeric values",
    ],
    "server extension list": [r"modelforge_jupyter\s+enabled", r"modelforge_jupyter \S+ OK"],
    "ONNXService().run_inference": [r"^Inference time: \d+\.\d\dms$"],
    "modelforge/models/iris/unload": [
        r'^\{"status":\s*"healthy".* 200$',  # health
        r'^\{"status":\s*"alive"\} 200$',  # health/live
        r'^\{"status":\s*"ready"\} 200$',  # health/ready
        r'^\{.*"name":\s*"iris".*"version":\s*1\b.* 201$',  # first PUT: created, version 1
        r'^\{.*"name":\s*"iris".*"version":\s*2\b.* 200$',  # second PUT: version 2
        r'^\[.*"iris".* 200$',  # the list
        r'^\{.*"version":\s*1\b.* 200$',  # ?version=1
        r'^\{"prediction_id".*"model_version":\s*2\b.*"output_label":\s*\[0,\s*2\].* 200$',
        r'^\{"prediction_id".*"model_version":\s*1\b.*"cached":\s*false\} 200$',
        r'^\{"prediction_id".*"model_version":\s*2\b.*"output_label":\s*\[0\].* 200$',  # the gzip body
        r'^\{"message":\s*"unknown query parameter \'versoin\'.* 400$',  # nothing deleted
        r'^\{"name":\s*"iris",\s*"unloaded":\s*true\} 200$',
        r"^ 204$",
        r"^ 204$",
    ],
    "modelforge/models/demo_iris/stats": [  # metrics and statistics: a miss, then a hit
        r'^modelforge_inference_request_success_total\{model="demo_iris",version="\d+"\} 2\.0$',
        r'^modelforge_cache_num_hits_per_model_total\{model="demo_iris",version="\d+"\} 1\.0$',
        r'^\{"model_stats":\[\{"name":"demo_iris","version":"\d+".*"execution_count":1,.*"success":\{"count":2,.*'
        r'"cache_hit":\{"count":1,',
    ],
    "%mf_stats demo_iris --text": [  # the live counters, read from the server's /metrics and the kernel's own
        r"^ModelForge live: demo_iris$",
        r"^server: [\d.,]+ req/s, p50 .*, cache hits .*, \d+ sessions \([\d.]+ MB\)$",
        r"^kernel: [\d.,]+ req/s, p50 .*, cache hits .*, \d+ sessions \([\d.]+ MB\)$",
    ],
    "zipmap_labels": [  # the V2 example (tritonclient)
        r"^True \{'name': 'modelforge', 'version': '[^']+', "
        r"'extensions': \['binary_tensor_data', 'statistics', 'model_repository'\]\}$",
        r"^\{'name': 'demo_iris', 'versions': \['1', '2'\], 'platform': 'onnxruntime_onnx'.*'shape': \[-1, 3\]\}\]\}$",
        r"^\[0 2\]$",
        r"^\[0,1,2\] \[\[",
        r"^400 unexpected shape for input 'float_input' for model 'demo_iris'\. Expected \[-1,4\], got \[1,3\]$",
    ],
    "%mf_register digits": [r"registered digits v1", r"^quantize: dynamic int8 \(2 weights\) .* 100\.0%",
                            r"checked on 297 rows of the sample", r"deleted digits \(all versions"],
    "%mf_register iris": [r"registered iris v1", r"updated iris to v2", r"deleted iris \(v1,",
                          r"deleted iris \(all versions", r"p50_ms"],
}


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README: where it starts (1-based line of its fence), language, code, marker."""

    line: int
    lang: str
    code: str
    mark: str = ""

    @property
    def background(self) -> bool:
        return self.mark.startswith("background")

    @property
    def not_run(self) -> str | None:
        return self.mark.partition(":")[2].strip() if self.mark.startswith("not run") else None

    @property
    def ready(self) -> tuple[str, str]:
        """(``ready`` or ``ready-log``, its value) of a background block."""
        found = re.match(r"background,\s*(ready|ready-log):\s*(.+)$", self.mark)
        if not found:
            raise ValueError(f"README line {self.line}: {self.mark!r}: expected 'background, ready: URL' or "
                             "'background, ready-log: TEXT'")
        return found.group(1), found.group(2)

    @property
    def ipython(self) -> bool:
        return self.lang == "python" and bool(MAGIC.search(self.code))

    @property
    def label(self) -> str:
        first = next((ln for ln in self.code.splitlines() if ln.strip() and not ln.startswith("#")), "")
        return f"L{self.line}-{re.sub(r'[^A-Za-z0-9_.%-]+', '_', first)[:40]}"


def marker_before(lines: list[str], i: int) -> tuple[int, str] | None:
    """(first line index, text) of the ``readme-test`` comment that ends on the line before line ``i``, if any."""
    j = i - 1
    if j < 0 or not lines[j].rstrip().endswith("-->"):
        return None
    while j > 0 and "<!--" not in lines[j]:
        j -= 1
    found = MARK.match(" ".join(line.strip() for line in lines[j:i]))
    return (j, found.group(1)) if found else None


def readme_blocks(text: str) -> list[Block | str]:
    """The README's runnable blocks, in order, with a ``"heading"`` marker where a heading (outside code) is."""
    items: list[Block | str] = []
    lines = text.splitlines()
    marks = {i for i, line in enumerate(lines) if line.startswith("<!-- readme-test")}
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            if HEADING.match(lines[i]):
                items.append("heading")
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        mark = marker_before(lines, i)
        lang = RUN_LANGS.get(fence.group(1).lower())
        if lang is not None or mark:
            block = Block(i + 1, lang or fence.group(1), "\n".join(lines[i + 1:end]) + "\n", mark[1] if mark else "")
            if block.mark and not (block.background or block.not_run):
                raise ValueError(f"README line {block.line}: unknown readme-test comment {block.mark!r}")
            if block.background:
                block.ready  # noqa: B018 (raises on a malformed one)
            items.append(block)
        if mark:
            marks.discard(mark[0])
        i = end + 1
    if marks:
        raise ValueError(f"README lines {sorted(m + 1 for m in marks)}: a readme-test comment must end on the line "
                         "right before a fence")
    return items


def readme_groups(text: str) -> list[list[Block]]:
    """Blocks as they run: each alone, or a background block with the blocks after it up to the next heading."""
    groups: list[list[Block]] = []
    open_group: list[Block] | None = None
    for item in readme_blocks(text):
        if item == "heading":
            open_group = None
        elif item.background:
            open_group = [item]
            groups.append(open_group)
        elif open_group is not None and not item.not_run:
            open_group.append(item)
        else:
            groups.append([item])
    return groups


GROUPS = readme_groups(README.read_text())


def test_readme_convention_parses_and_every_expectation_names_one_block():
    blocks = [b for g in GROUPS for b in g]
    for key in EXPECT:
        assert sum(key in b.code for b in blocks) == 1, f"EXPECT key {key!r} must name exactly one README block"
    assert 1 <= sum(bool(b.not_run) for b in blocks) <= 2, "blocks not run must stay few"
    assert any(len(g) > 1 for g in GROUPS), "the server block serves the curl block after it"


# -- the state after the first command ---------------------------------------------------------------------------


def user_env(root: Path) -> dict[str, str]:
    """A user's environment: embedded defaults, fresh Jupyter dirs under ``root``, no venv on PATH."""
    env = mf_isolated_env(root)
    env.pop("CELERY_BROKER_URL", None)
    env.pop("VIRTUAL_ENV", None)
    venv_bins = {str(VENV / "bin"), str(Path(sys.prefix) / "bin"), str(VENV.resolve() / "bin")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # the README: "as root, also --allow-root"
        (root / "config" / "jupyter_server_config.json").write_text('{"ServerApp": {"allow_root": true}}')
    return env


def registry_models(data_dir: Path) -> dict[str, int]:
    """{name: latest version} in the embedded registry under the Jupyter data directory ``data_dir``."""
    from modelforge_jupyter import ModelForge

    with ModelForge(**mf_embedded(data_dir / "modelforge")) as mf:
        return {m.name: m.version for m in mf.models()}


@pytest.fixture(scope="module")
def after_first_command(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """(Jupyter data dir holding what ``.venv/bin/modelforge-demo`` registers, {model: version} in it)."""
    if not (VENV / "bin" / "python").exists():
        mf_skip_unless_ci(f"no {VENV}: the README's blocks use it; run `bash scripts/setup.sh`")
    root = tmp_path_factory.mktemp("readme-first-command")
    proc = subprocess.run([str(VENV / "bin" / "modelforge-demo"), "--no-server"], cwd=REPO, env=user_env(root),
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    models = registry_models(root / "data")
    assert set(models) == {"demo_iris", "demo_breast_cancer_rf", "demo_diabetes"}
    return root / "data", models


# -- running blocks ----------------------------------------------------------------------------------------------

IPYTHON_CELL = """\
import sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(open(sys.argv[1]).read())])
NotebookClient(nb, timeout=200, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
for out in nb.cells[0].outputs:
    print(out.get("text") or out.get("data", {}).get("text/plain", ""))
"""


def run_block(block: Block, env: dict[str, str], scratch: Path) -> str:
    """Run ``block`` to completion from the repository root; its output (stdout + stderr, ANSI colours removed)."""
    if block.lang == "bash":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    else:
        source = scratch / f"block_{block.line}.py"
        source.write_text(block.code)
        python = str(VENV / "bin" / "python")
        cmd = [python, "-c", IPYTHON_CELL, str(source)] if block.ipython else [python, str(source)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=250)
    out = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"README block at line {block.line} failed (exit {proc.returncode}):\n{out[-6000:]}"
    return out


def start_background(block: Block, env: dict[str, str], scratch: Path) -> MfProcess:
    """Start ``block`` (a long-running command: a server) in a process group of its own, its output in ``scratch``."""
    kind, value = block.ready
    if kind == "ready":
        port = urllib.parse.urlsplit(value).port or 80
        why = port_taken(port)
        if why:
            pytest.fail(f"port {port} is taken ({why}): the README's block at line {block.line} listens there and "
                        "the blocks after it call it; stop what holds it")
    return mf_launch(["bash", "-c", block.code], scratch / f"background_{block.line}.log", env, REPO, group=True)


def background_ready(block: Block, background: MfProcess) -> bool:
    """Whether the background ``block`` is ready: its log shows its ``ready-log`` text, or its ``ready`` URL answers
    200."""
    kind, value = block.ready
    if kind == "ready-log":
        return value in ANSI.sub("", background.log)
    with urllib.request.urlopen(value, timeout=2) as answer:
        return answer.status == 200


def need_services(block: Block) -> None:
    for host, port in SERVICE.findall(block.code):
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError as err:
            mf_skip_unless_ci(f"the README block at line {block.line} needs {host}:{port}, not reachable ({err})")


def check_expected(block: Block, out: str) -> None:
    for key, patterns in EXPECT.items():
        if key not in block.code:
            continue
        at = 0
        for pattern in patterns:
            found = re.compile(pattern, re.M).search(out, at)
            assert found, f"README block at line {block.line}: no {pattern!r} in its output after:\n{out[at:][-4000:]}"
            at = found.end()


RUN = [g for g in GROUPS if not g[0].not_run]


def test_the_block_not_run_is_the_set_up_whose_test_command_ci_runs():
    # The one block this test does not run is the set-up: its first line is the main job (the state the other blocks
    # start from is made by the same demo, in after_first_command), its second is the suite, which .ci/run runs
    (not_run,) = [b for g in GROUPS for b in g if b.not_run]
    main_job, suite = not_run.code.strip().splitlines()
    assert main_job == "bash scripts/setup.sh && .venv/bin/modelforge-demo"
    assert suite in (README.parent / ".ci" / "run").read_text().splitlines()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("group", RUN, ids=["+".join(b.label for b in g) for g in RUN])
def test_readme_block_runs_as_written_after_the_first_command(group, after_first_command, tmp_path):
    first = group[0]
    for block in group:
        need_services(block)
    template, demo_models = after_first_command
    env = user_env(tmp_path)
    shutil.copytree(template, tmp_path / "data", dirs_exist_ok=True)

    background = start_background(first, env, tmp_path) if first.background else None
    try:
        if background is not None:
            background.wait_ready(lambda: background_ready(first, background), 90,
                                  f"README block at line {first.line} ({': '.join(first.ready)})")
        for block in group[1:] if background is not None else group:
            check_expected(block, run_block(block, env, tmp_path))
        if background is not None:
            log = ANSI.sub("", background.log)
            assert background.proc.poll() is None, (
                f"README block at line {first.line} stopped while its blocks ran:\n{log[-6000:]}")
    finally:
        if background is not None:
            background.stop()

    assert registry_models(tmp_path / "data") == demo_models, "the block left the registry changed"
