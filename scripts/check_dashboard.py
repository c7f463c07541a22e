"""Run the notebooks in JupyterLab in headless Chromium, as a person would, and check what every output looks like.

What a person would do: start ``jupyter lab`` (ModelForge enabled by its installed config; the embedded backend in a
temporary directory) in a 1440 x 900 window with the file browser open, open notebooks/benchmark.ipynb,
notebooks/quickstart.ipynb and a scratch notebook of every magic (``SCRATCH``), Run > Run All Cells in each, look,
switch to the dark theme (Settings > Theme > JupyterLab Dark) and look again. Checked in the page, in both themes:

- no output area is wider than its container (``scrollWidth <= clientWidth``; a wide table scrolls in its own div),
  and the notebook itself never scrolls sideways;
- no "Failed to load model class" (a kernel/frontend ipywidgets mismatch), "Error displaying widget", traceback or
  error output (the scratch notebook's one refusal excepted, checked word for word);
- every ``%mf_bench`` dashboard finished (full green progress bar, "done" in its status line, table filled in),
  followed by its plot and its table of every figure as ordinary outputs;
- the plot's background is not opaque white in the dark theme (its corner, as drawn on screen, is dark);
- the scratch notebook's live ``%mf_stats`` dashboard (the server's and the kernel's readings while the next cell
  sends requests both ways) stopped with its plot, whose background is dark in the dark theme too.

Saves a screenshot of the first dashboard per theme (``--screenshot``: docs/dashboard.png and the same name with
``-dark``) and of the ``%mf_stats`` one (docs/stats.png, light), well under 300 KB each, and prints a JSON summary of
what it saw.

    .venv/bin/python scripts/check_dashboard.py            # exit 0: as above; 1: not (the reason on stderr)

Needs Debian's Chromium (``apt-get install -y chromium``) and the Python ``playwright`` package (``[test]`` extra);
Playwright drives /usr/bin/chromium itself: no ``playwright install``. Runs as root with ``--no-sandbox``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from modelforge_jupyter.cli.demo import stop_server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1440, "height": 900}
DROPPED_ENV = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "ENVIRONMENT")
DROPPED_PREFIXES = ("JUPYTER", "JPY_", "MODELFORGE_", "CACHE_")
# JupyterLab user settings: no news or update checks (the network is closed), no notification toasts; every cell
# in the DOM (JupyterLab 4 renders only the cells in view by default, and the checks look at all of them).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
NOTEBOOKS = (ROOT / "notebooks" / "benchmark.ipynb", ROOT / "notebooks" / "quickstart.ipynb")
REFUSAL = "ModelNotFoundError: model 'nope' is not registered; %mf_models lists the registered models"
# Every magic once, in the forms a person types first; its %mf_bench the widest (--http: 7 paths x 4 batch sizes).
SCRATCH = [
    "%load_ext modelforge_jupyter\nfrom modelforge_jupyter.core.samples import sample_path\nimport numpy as np\n"
    "X = np.float32([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])",
    "%mf_register scratch_iris {sample_path('iris.onnx')}",
    "%mf_models",
    "%mf_predict scratch_iris X",
    '%%mf_predict scratch_iris\n{"input_data": [[5.1, 3.5, 1.4, 0.2]], "use_cache": false}',
    "%mf_predict nope X",
    "%mf_bench scratch_iris --http --seconds 0.05 --warmup 2",
    "stats = %mf_stats scratch_iris --interval 0.5 --seconds 6",
    "import time\nfrom modelforge_jupyter.kernel.client import connect\n\nstart, i = time.monotonic(), 0\n"
    "with connect() as server:  # 2 s of light traffic (the other notebooks are measuring), then stopped\n"
    "    while time.monotonic() - start < 2:\n        server.predict('scratch_iris', X + i % 20)\n"
    "        _ = %mf_predict scratch_iris X + i % 10\n        i += 1\n        time.sleep(0.02)\nstats.stop()",
    "%mf_update scratch_iris {sample_path('iris_v2.onnx')}",
    "%mf_bench scratch_iris --batch-sizes 1,10 --iterations 5 --warmup 1 --no-cache --text",
    "%mf_delete scratch_iris --version 1",
    "%mf_delete scratch_iris",
]
# Measured in the visible notebook: each output area against its own width, the notebook's scroller, the errors.
MEASURE_JS = """panel => {
  const outs = [...panel.querySelectorAll('.jp-OutputArea-output')].map(el => ({
    scroll: el.scrollWidth, client: el.clientWidth,
    styler: !!el.querySelector('table[id^="T_"]'),  // a pandas Styler table: the notebook's own, not ModelForge's
    mime: el.dataset.mimeType || '', text: el.innerText.slice(0, 120)}));
  const outer = panel.querySelector('.jp-WindowedPanel-outer') || panel;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
  return {outputs: outs, notebook: {scroll: outer.scrollWidth, client: outer.clientWidth}, prompts,
          stderr: [...panel.querySelectorAll(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")].map(e => e.innerText.trim()),
          text: panel.innerText};
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch_notebook() -> dict:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(src) for src in SCRATCH])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return json.loads(nbformat.writes(nb))


def start_lab(tmp: Path, notebooks: dict[str, dict]) -> tuple[subprocess.Popen, str, str]:
    """``jupyter lab`` on loopback with a token, its own Jupyter dirs, ``notebooks`` ({file name: notebook JSON},
    without their stored outputs, so that what is checked is what this run rendered) and an embedded ModelForge
    under ``tmp``. Returns (process, url, token) once ``/api/status`` answers."""
    work = tmp / "work"
    work.mkdir()
    for name, nb in notebooks.items():  # copies: Lab autosaves, never write to the repository's notebooks
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        nb["metadata"].pop("widgets", None)
        (work / name).write_text(json.dumps(nb, indent=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES) and k not in DROPPED_ENV}
    env.update(JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"),
               MODELFORGE_DATA_DIR=str(tmp / "modelforge"), CELERY_BROKER_URL="")
    for name, value in LAB_SETTINGS.items():
        path = tmp / "config" / "lab" / "user-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    token, port = secrets.token_hex(16), free_port()
    log = (tmp / "lab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.handlers.announcements.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work,
    )
    log.close()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{(tmp / 'lab.log').read_text()}")
        try:
            request = urllib.request.Request(url + "api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return proc, url, token
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"jupyter lab not ready after 90 s:\n{(tmp / 'lab.log').read_text()}")
        time.sleep(0.2)


def visible_panel(page):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")


def activate(page, name: str) -> None:
    page.locator("#jp-main-dock-panel .lm-DockPanel-tabBar .lm-TabBar-tab").filter(has_text=name).first.click()
    page.wait_for_timeout(300)


def run_all(page, name: str) -> None:
    """Open ``name`` from the file browser, wait for its kernel, Run > Run All Cells (again if the first click came
    before the kernel took requests)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.locator(".jp-DirListing-item").filter(has_text=name).first.dblclick()
    panel = visible_panel(page)
    panel.locator(".jp-Cell").first.wait_for(timeout=60_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    first = panel.locator(".jp-CodeCell .jp-InputPrompt").first
    for _ in range(3):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function("p => p.textContent.trim() !== '[ ]:'", arg=first.element_handle(),
                                   timeout=20_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"{name}: Run All did not start")


def wait_done(page, name: str, deadline: float) -> dict:
    """Wait until every code cell of the visible notebook ran (``[n]:``) and its kernel is idle; its measures."""
    panel = visible_panel(page)
    while True:
        m = panel.evaluate(MEASURE_JS)
        stderr = [e for e in m["stderr"] if not e.startswith(REFUSAL)]
        if stderr:
            raise AssertionError(f"{name}: error output: {stderr[0][:2000]}")
        if m["prompts"] and all(p[1:-2].isdigit() for p in m["prompts"]):
            panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
            page.wait_for_timeout(500)  # the last comm messages (the dashboard's final state)
            return panel.evaluate(MEASURE_JS)
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not finished in time; prompts {m['prompts']}")
        page.wait_for_timeout(500)


def inspect(page, name: str, m: dict, theme: str) -> dict:
    """What ``m`` (``MEASURE_JS`` of the visible notebook) and its dashboards show; AssertionError when wrong."""
    for bad in ("Failed to load model class", "Error displaying widget", "Traceback", "model not found"):
        assert bad not in m["text"], f"{name} ({theme}): {bad!r} in the page"
    wide = [o for o in m["outputs"] if o["scroll"] > o["client"] + 1]
    mine = [o for o in wide if not o["styler"]]
    assert not mine, f"{name} ({theme}): output areas wider than their container: {mine}"
    nb = m["notebook"]
    assert nb["scroll"] <= nb["client"] + 1, f"{name} ({theme}): the notebook scrolls sideways: {nb}"
    switch = page.locator(".widget-toggle-buttons")  # an inner locator: matched inside each candidate
    cells = visible_panel(page).locator(".jp-CodeCell").filter(has=switch)
    out = []
    for i in range(cells.count()):
        cell = cells.nth(i)
        box = cell.locator(".widget-vbox").filter(has=switch).first
        bar = box.locator(".widget-hprogress .progress-bar")
        assert "progress-bar-success" in (bar.get_attribute("class") or ""), f"{name}: progress bar not green"
        table = box.locator("table.mf-table")
        rows = [[c.strip() for c in r.split("\t")] for r in table.locator("tbody tr").all_inner_texts()]
        assert rows and all("…" not in cell for row in rows for cell in row), f"{name}: table not filled: {rows}"
        statics = cell.locator(".jp-OutputArea-output")
        # the dashboard, then the plot and the table of every figure as ordinary outputs
        assert statics.count() == 3, f"{name}: {statics.count()} outputs in a %mf_bench cell, expected 3"
        plot = statics.nth(1).locator("img")
        assert plot.evaluate("img => img.naturalWidth") > 300, f"{name}: no plot image"
        corner = plot_corner(plot)
        if theme == "dark":
            assert sum(corner[:3]) < 3 * 128, f"{name}: the plot's background is light in the dark theme: {corner}"
        out.append({
            "title": box.locator(".widget-html").first.inner_text(),
            "status": box.locator(".widget-hprogress").locator("xpath=..").inner_text().strip(),
            "switch": box.locator(".widget-toggle-buttons button").all_inner_texts(),
            "header": [c.strip() for c in table.locator("thead tr").first.inner_text().split("\t")],
            "rows": rows,
            "static_rows": statics.nth(2).locator("table").first.locator("tbody tr").count(),
            "plot_width": plot.evaluate("img => img.getBoundingClientRect().width"),
            "plot_corner": corner,
        })
    widest = max((o["scroll"] for o in m["outputs"] if not o["styler"]), default=0)
    return {"outputs": len(m["outputs"]), "widest_output": widest, "area": max((o["client"] for o in m["outputs"]),
            default=0), "wide_pandas_tables": len(wide) - len(mine), "stderr": m["stderr"], "dashboards": out,
            "stats": [stats_dashboard(stats_cells(page).nth(i), name, theme) for i in range(stats_cells(page).count())]}


def stats_cells(page):
    """The visible notebook's ``%mf_stats`` cells (a widget whose title reads "ModelForge live")."""
    live = page.locator(".widget-html", has_text="ModelForge live")
    return visible_panel(page).locator(".jp-CodeCell").filter(has=live)


def stats_dashboard(cell, name: str, theme: str) -> dict:
    """What a ``%mf_stats`` dashboard shows once stopped: its headline lines, its plot's width and corner."""
    box = cell.locator(".widget-vbox").first
    plot = box.locator("img").first
    assert plot.evaluate("img => img.naturalWidth") > 300, f"{name}: no %mf_stats plot"
    corner = plot_corner(plot)
    if theme == "dark":
        assert sum(corner[:3]) < 3 * 128, f"{name}: the %mf_stats plot is light in the dark theme: {corner}"
    return {"text": box.locator(".widget-html").first.inner_text().splitlines(),
            "stop_disabled": box.locator("button").first.is_disabled(),
            "plot_width": plot.evaluate("img => img.getBoundingClientRect().width"), "plot_corner": corner}


def plot_corner(plot) -> list[int]:
    """The RGBA of the plot's top-left corner as drawn on screen (theme background showing through, or not)."""
    from PIL import Image

    shot = Image.open(io.BytesIO(plot.screenshot())).convert("RGBA")
    return list(shot.getpixel((3, 3)))


def set_theme(page, label: str, light: bool) -> None:
    page.get_by_role("menuitem", name="Settings", exact=True).click()
    theme = page.locator(".lm-Menu-itemLabel", has_text="Theme")
    page.locator(".lm-Menu .lm-Menu-item").filter(has=theme).first.hover()
    page.locator(".lm-Menu .lm-Menu-item").filter(has=page.get_by_text(label, exact=True)).first.click()
    page.wait_for_selector(f"body[data-jp-theme-light='{str(light).lower()}']", state="attached", timeout=30_000)
    page.wait_for_timeout(1000)  # the theme's CSS applied


def screenshot(page, path: Path, cell=None) -> int:
    """The first dashboard's cell (or ``cell``), from its input to the bottom of its plot, as a PNG; returns its size
    in bytes. Taken in a window as wide as the checked one but taller, so that the dashboard and its plot fit."""
    from PIL import Image

    page.set_viewport_size({**VIEWPORT, "height": 1400})
    try:
        if cell is None:
            cell = visible_panel(page).locator(".jp-CodeCell").filter(has=page.locator(".widget-toggle-buttons")).first
        cell.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
        box = cell.bounding_box()
        plot = cell.locator(".jp-OutputArea-output img").first.bounding_box()
        clip = {**box, "height": plot["y"] + plot["height"] + 12 - box["y"]}
        png = Image.open(io.BytesIO(page.screenshot(clip=clip)))
        if os.environ.get("MF_CHECK_PAGE_SHOTS"):  # the whole window too, to look at while changing outputs
            page.set_viewport_size(VIEWPORT)
            page.screenshot(path=str(path.with_suffix(".page.png")))
    finally:
        page.set_viewport_size(VIEWPORT)
    path.parent.mkdir(parents=True, exist_ok=True)
    png.convert("RGB").save(path, optimize=True)
    return path.stat().st_size


def check(url: str, token: str, names: list[str], shots: dict[str, Path], profile: Path, timeout_s: float) -> dict:
    """Open and Run All every notebook in ``names``, inspect each in the light then the dark theme, screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT,
            device_scale_factor=1,
        )
        try:
            page = browser.new_page()
            page.goto(f"{url}lab?token={token}", wait_until="domcontentloaded")
            page.locator(".jp-DirListing-item").first.wait_for(timeout=60_000)  # the file browser, left open
            for name in names:  # every notebook runs at once: their kernels overlap
                run_all(page, name)
            deadline = time.monotonic() + timeout_s
            summary: dict = {"light": {}, "dark": {}, "screenshots": {}}
            for name in names:
                activate(page, name)
                summary["light"][name] = inspect(page, name, wait_done(page, name, deadline), "light")
            activate(page, names[0])
            summary["screenshots"][str(shots["light"])] = screenshot(page, shots["light"])
            activate(page, "scratch.ipynb")
            summary["screenshots"][str(shots["stats"])] = screenshot(page, shots["stats"], stats_cells(page).first)
            set_theme(page, "JupyterLab Dark", light=False)
            for name in names:
                activate(page, name)
                summary["dark"][name] = inspect(page, name, visible_panel(page).evaluate(MEASURE_JS), "dark")
            activate(page, names[0])
            summary["screenshots"][str(shots["dark"])] = screenshot(page, shots["dark"])
            return summary
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "dashboard.png",
                        help="light theme screenshot; the dark one is NAME-dark.png beside it, %%mf_stats' stats.png")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds for every Run All to finish")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"no {CHROMIUM}: apt-get install -y chromium", file=sys.stderr)
        return 1
    shots = {"light": args.screenshot, "dark": args.screenshot.with_name(f"{args.screenshot.stem}-dark.png"),
             "stats": args.screenshot.with_name("stats.png")}
    notebooks = {nb.name: json.loads(nb.read_text()) for nb in NOTEBOOKS} | {"scratch.ipynb": scratch_notebook()}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mf-dashboard-") as tmp_name:
        tmp = Path(tmp_name)
        proc, url, token = start_lab(tmp, notebooks)
        try:
            summary = check(url, token, list(notebooks), shots, tmp / "chromium-profile", args.timeout)
        except AssertionError as err:
            print(f"dashboard check failed: {err}", file=sys.stderr)
            return 1
        finally:
            stop_server(proc)
    summary.update(seconds=round(time.monotonic() - started, 1))
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
