"""Run notebooks/benchmark.ipynb in JupyterLab in headless Chromium and check that the %mf_bench dashboards render.

What a person would do: start ``jupyter lab`` (ModelForge enabled by its installed config; the embedded backend in a
temporary directory), open the notebook, Run > Run All Cells, and look. Checked in the page: every dashboard has its
progress bar (full, green), its table and its plot; no "Failed to load model class" (a kernel/frontend ipywidgets
mismatch) nor any error output; the notebook's own threshold cell printed its verdict. Saves a screenshot of the
first dashboard (``--screenshot``, default docs/dashboard.png) and prints a JSON summary with each dashboard's table.

    .venv/bin/python scripts/check_dashboard.py            # exit 0: rendered; 1: not (the reason on stderr)

Needs Debian's Chromium (``apt-get install -y chromium``) and the Python ``playwright`` package (``[test]`` extra);
Playwright drives /usr/bin/chromium itself: no ``playwright install``. Runs as root with ``--no-sandbox``.
"""

from __future__ import annotations

import argparse
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

from modelforge_jupyter.demo import stop_server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
DROPPED_ENV = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "ENVIRONMENT")
DROPPED_PREFIXES = ("JUPYTER", "JPY_", "MODELFORGE_", "CACHE_")
# JupyterLab user settings: no news or update checks (the network is closed), no notification toasts; every cell
# in the DOM (JupyterLab 4 renders only the cells in view by default, and the checks look at all of them).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(tmp: Path, notebook: Path) -> tuple[subprocess.Popen, str, str]:
    """``jupyter lab`` on loopback with a token, its own Jupyter dirs, a copy of ``notebook`` and an embedded
    ModelForge under ``tmp``. Returns (process, url, token) once ``/api/status`` answers."""
    work = tmp / "work"
    work.mkdir()
    # a copy (Lab autosaves: never write to the repository's notebook) without the stored outputs, so that what is
    # checked is what this run rendered
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (work / notebook.name).write_text(json.dumps(nb, indent=1))
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


def check(url: str, token: str, notebook: str, screenshot: Path, profile: Path, timeout_s: float) -> dict:
    """Open, Run All, wait for the notebook's verdict, then inspect the rendered dashboards. Raises AssertionError."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 2600, "height": 1200}, device_scale_factor=1,
        )
        try:
            page = browser.new_page()
            page.goto(f"{url}lab/tree/{notebook}?token={token}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)  # kernel started
            # the whole width for the wide table: collapse the file browser (click its open tab, as a person would)
            page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
            for _ in range(3):  # Run > Run All Cells; again if the first click came before the kernel took requests
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                try:
                    page.wait_for_function("p => p.innerText.trim() !== '[ ]:'", arg=prompts.first.element_handle(),
                                           timeout=20_000)
                    break
                except PlaywrightTimeout:
                    continue
            verdict = page.get_by_text("met by bench_iris", exact=False)
            failed = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            deadline = time.monotonic() + timeout_s
            while not verdict.count():
                if failed.count():
                    raise AssertionError(f"error output in the notebook: {failed.first.inner_text()[:2000]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"the notebook did not finish within {timeout_s:.0f} s")
                page.wait_for_timeout(500)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            summary = inspect(page)
            first = page.locator(".jp-Cell").filter(has=page.locator(".widget-vbox")).first
            first.scroll_into_view_if_needed()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            cell = first.bounding_box()
            right = max(b["x"] + b["width"] for b in (first.locator("table.mf-table").bounding_box(),
                                                     first.locator(".widget-output img").bounding_box()))
            width = min(max(right - cell["x"] + 24, 900), cell["width"])  # the cell, cut after its widest output
            page.screenshot(path=str(screenshot), clip={**cell, "width": width})
            return summary
        finally:
            browser.close()


def inspect(page) -> dict:
    """Each dashboard's title, progress, table rows and plot, as rendered; AssertionError on anything missing."""
    body = page.locator("body").inner_text()
    for bad in ("Failed to load model class", "Error displaying widget", "Traceback"):
        assert bad not in body, f"{bad!r} in the page"
    assert not page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count(), \
        "error output in the notebook"
    dashboards = page.locator(".widget-vbox").filter(has=page.locator("table.mf-table"))
    assert dashboards.count() == 3, f"{dashboards.count()} dashboards rendered, expected 3"
    out = []
    for i in range(dashboards.count()):
        box = dashboards.nth(i)
        bar = box.locator(".widget-hprogress .progress-bar")
        assert bar.count() == 1, "no progress bar"
        classes = bar.get_attribute("class") or ""
        assert "progress-bar-success" in classes, f"progress bar not complete/green: {classes}"
        table = box.locator("table.mf-table")
        rows = [[c.strip() for c in r.split("\t")] for r in table.locator("tbody tr").all_inner_texts()]
        assert rows and all("…" not in cell for row in rows for cell in row), f"table not filled in: {rows}"
        plot = box.locator(".widget-output img")
        assert plot.count() == 1 and plot.evaluate("img => img.naturalWidth") > 300, "no plot image"
        out.append({
            "title": box.locator(".widget-html").first.inner_text(),
            "progress": box.locator(".widget-hprogress .widget-label").first.inner_text(),
            "header": [[c.strip() for c in r.split("\t")] for r in table.locator("thead tr").all_inner_texts()],
            "rows": rows,
            "caption": table.locator("caption").inner_text() if table.locator("caption").count() else "",
        })
    return {"dashboards": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", type=Path, default=ROOT / "notebooks" / "benchmark.ipynb")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for Run All to finish")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"no {CHROMIUM}: apt-get install -y chromium", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mf-dashboard-") as tmp_name:
        tmp = Path(tmp_name)
        proc, url, token = start_lab(tmp, args.notebook)
        try:
            summary = check(url, token, args.notebook.name, args.screenshot, tmp / "chromium-profile", args.timeout)
        except AssertionError as err:
            print(f"dashboard check failed: {err}", file=sys.stderr)
            return 1
        finally:
            stop_server(proc)
    summary.update(screenshot=str(args.screenshot), seconds=round(time.monotonic() - started, 1))
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
