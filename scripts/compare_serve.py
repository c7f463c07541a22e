"""``modelforge serve`` beside the FastAPI reference of ``../shared/bench``, in one run, with its load generator.

Each server runs alone while it is measured: the FastAPI reference (``fastapi_ref.py`` on uvicorn, onnxruntime with
one intra-op thread, no cache; then with its Redis cache, for a miss that reads and writes it as ModelForge's does and
for the hit column) with 1 and 2 uvicorn workers, and
``modelforge serve`` with 1 and 2 workers on each backend (embedded: SQLite + disk cache; services: PostgreSQL +
Redis), ``MODELFORGE_INTRA_OP_NUM_THREADS=1``. The model is bc_rf (a 100-tree scikit-learn forest, 30 features),
registered with ``PUT``. ``loadgen.py`` (wrk, closed loop, keep-alive, loopback) measures every cell: misses are
distinct bodies (``--unique``), hits identical ones (``--cache-hit``). A miss cell is never rerun: loadgen's nonces
restart with each attempt, so a rerun on the same server would be answered from the cache the first attempt filled
(a noisy miss cell is kept and flagged instead). The table is ``summarize.py``'s; read the
ratios within one run (the box is shared and noisy).

    bash ../shared/bench/compare.sh                 # once: builds /tmp/mfbench (its venv and the models)
    .venv/bin/python scripts/compare_serve.py       # ~5 min; --duration 10 for steadier figures
    .venv/bin/python scripts/compare_serve.py --backends embedded --serve-workers 2 --fastapi-workers 2 --batches 1
    .venv/bin/python scripts/compare_serve.py --cache-off   # also ModelForge with its prediction cache off
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/14"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench-dir", type=Path, default=ROOT.parent / "shared" / "bench", help="loadgen.py's folder")
    p.add_argument("--bench-python", default="/tmp/mfbench/venv/bin/python", help="compare.sh's venv (FastAPI)")
    p.add_argument("--models", type=Path, default=Path("/tmp/mfbench/models"), help="bc_rf.onnx and its input")
    p.add_argument("--fastapi-workers", default="1,2")
    p.add_argument("--serve-workers", default="1,2")
    p.add_argument("--backends", default="embedded,services")
    p.add_argument("--batches", default="1,1000")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--duration", default="5")
    p.add_argument("--cache-off", action="store_true",
                   help="also each backend with CACHE_PREDICTION_ENABLED=false (every request runs the model: the "
                        "FastAPI reference's own setting), column serve_<backend>_w<N>_nocache")
    p.add_argument("--port", type=int, default=8731)
    p.add_argument("--out", type=Path, default=Path("/tmp/mfbench") / f"serve-{datetime.now():%Y%m%d-%H%M%S}")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.models / "bc_rf.onnx").exists():
        subprocess.run([args.bench_python, str(args.bench_dir / "make_models.py"), str(args.models)], check=True)
    for workers in csv(args.fastapi_workers):
        with fastapi(args, workers, cache=False) as pid:
            loadgen(args, pid, f"fastapi_w{workers}", "--unique")
        with fastapi(args, workers, cache=True) as pid:  # with its Redis cache: a miss reads and writes it too
            loadgen(args, pid, f"fastapi_cache_miss_w{workers}", "--unique")
            loadgen(args, pid, f"fastapi_cache_hit_w{workers}", "--cache-hit")
    for backend in csv(args.backends):
        for workers in csv(args.serve_workers):
            with serve(args, workers, backend) as pid:
                for kind, flag in (("miss", "--unique"), ("hit", "--cache-hit")):
                    loadgen(args, pid, f"serve_{backend}_w{workers}_{kind}", flag)
            if args.cache_off:
                with serve(args, workers, backend, {"CACHE_PREDICTION_ENABLED": "false"}) as pid:
                    loadgen(args, pid, f"serve_{backend}_w{workers}_nocache", "--unique")
    summary = subprocess.run([args.bench_python, str(args.bench_dir / "summarize.py"), str(args.out)],
                             capture_output=True, text=True, check=True).stdout
    (args.out / "summary.md").write_text(summary)
    print(summary.split("#### ")[0])
    print(f"full tables: {args.out / 'summary.md'}")


def csv(text: str) -> list:
    return [int(x) if x.isdigit() else x for x in text.split(",") if x]


class Server:
    """A server process in its own process group: SIGTERM to the group on exit (SIGKILL after 20 s)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, url: str, ready: str) -> None:
        self.log = log.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)
        self.url, self.ready = url, ready

    def __enter__(self) -> int:
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}: see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + self.ready, timeout=2) as answer:
                    if answer.status == 200:
                        return self.proc.pid
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready after 90 s: see {self.log.name}")
            time.sleep(0.3)

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def base_env() -> dict[str, str]:
    drop = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "MODELFORGE_", "CACHE_", "MF_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def fastapi(args: argparse.Namespace, workers: int, cache: bool) -> Server:
    env = base_env() | {"MF_MODELS_DIR": str(args.models), "MF_TOKEN": TOKEN, "MF_ORT_THREADS": "1"}
    if cache:
        prefix = f"mfserve-{uuid.uuid4().hex[:8]}"
        env |= {"REDIS_URL": REDIS, "MF_CACHE_PREFIX": prefix}
    cmd = [args.bench_python, "-m", "uvicorn", "fastapi_ref:app", "--app-dir", str(args.bench_dir), "--host",
           "127.0.0.1", "--port", str(args.port), "--workers", str(workers), "--no-access-log", "--log-level",
           "warning"]
    log = args.out / f"fastapi-w{workers}{'-cache' if cache else ''}.log"
    return Server(cmd, env, log, f"http://127.0.0.1:{args.port}/", "modelforge/health")  # it has no health/ready


def serve(args: argparse.Namespace, workers: int, backend: str, extra: dict[str, str] | None = None) -> Server:
    data = args.out / f"serve-{backend}-w{workers}{'-nocache' if extra else ''}"
    env = base_env() | {"MODELFORGE_DATA_DIR": str(data), "MODELFORGE_INTRA_OP_NUM_THREADS": "1",
                        "MODELFORGE_TOKEN": TOKEN, "CELERY_BROKER_URL": "", **(extra or {})}
    if backend == "services":
        env |= {"DATABASE_URL": fresh_database(f"mfserve_w{workers}"), "REDIS_URL": REDIS,
                "CACHE_KEY_PREFIX": f"mfserve-{uuid.uuid4().hex[:8]}"}
    cmd = [sys.executable, "-m", "modelforge_jupyter.cli.main", "serve", "--port", str(args.port), "--workers",
           str(workers), "--log-level", "warning"]
    server = Server(cmd, env, data.with_suffix(".log"), f"http://127.0.0.1:{args.port}/",
                    "modelforge/health/ready")
    return Registering(server, args.models / "bc_rf.onnx")


class Registering:
    """A ``modelforge serve`` that gets bc_rf with ``PUT`` once it is ready."""

    def __init__(self, server: Server, model: Path) -> None:
        self.server, self.model = server, model

    def __enter__(self) -> int:
        pid = self.server.__enter__()
        request = urllib.request.Request(self.server.url + "modelforge/models/bc_rf", data=self.model.read_bytes(),
                                         method="PUT", headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status in (200, 201), answer.status
        return pid

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


def fresh_database(name: str) -> str:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def loadgen(args: argparse.Namespace, pid: int, peer: str, flag: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {peer}", flush=True)
    cmd = [args.bench_python, str(args.bench_dir / "loadgen.py"), "--base", f"http://127.0.0.1:{args.port}/",
           "--model-id", "bc_rf", "--input", str(args.models / "bc_rf.input.json"), "--batches", args.batches,
           "--concurrency", args.concurrency, "--duration", args.duration, "--out", str(args.out / "loadgen.jsonl"),
           "--wait-quiet", "20", "--token", TOKEN, "--server-pid", str(pid), "--peer", peer, flag,
           # a rerun sends the same bodies again (loadgen's nonces restart): a miss cell's rerun would time cache hits
           "--retries", "0" if flag == "--unique" else "1"]
    with (args.out / "loadgen.txt").open("a") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
            print(f"  loadgen failed for {peer}: see {args.out / 'loadgen.txt'}")


if __name__ == "__main__":
    main()
