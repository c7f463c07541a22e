"""``modelforge serve``: ModelForge's HTTP routes outside Jupyter, in N worker processes on one port.

uvicorn runs it: with ``--workers`` above 1 its supervisor binds the port once and starts the workers, which
accept on that one socket, replaces a worker that dies, and on SIGTERM (or SIGINT) stops them all. Each worker, on
SIGTERM, stops accepting, lets the requests in flight finish (at most ``--shutdown-timeout`` s; idle keep-alive
connections are closed at once), then closes its ModelForge and exits.

    modelforge serve --token "$TOKEN" --port 8000 --workers 2      # or MODELFORGE_TOKEN=... modelforge serve
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from ..core.settings import mask_url
from .options import OPTIONS_VAR, ServeOptions, add_arguments, options_from_args

APP = "modelforge_jupyter.serve.app:create_app"
MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode: where each worker writes


def run(options: ServeOptions) -> None:
    """Serve until SIGTERM or SIGINT (blocking). The workers read ``options`` from the environment, and write their
    metrics under ``PROMETHEUS_MULTIPROC_DIR``: a temporary directory of this server's, removed when it stops."""
    import uvicorn

    os.environ[OPTIONS_VAR] = options.to_environment()
    metrics_dir = tempfile.mkdtemp(prefix="modelforge-metrics-")
    os.environ[MULTIPROC_VAR] = metrics_dir
    try:
        uvicorn.run(
            APP, factory=True, host=options.host, port=options.port, workers=options.workers, ws="none",
            lifespan="on", server_header=False, access_log=options.access_log, log_level=options.log_level,
            timeout_graceful_shutdown=options.shutdown_timeout,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def check_settings() -> str:
    """The registry and cache this server will use, as a line for its log. Raises ``ValueError`` naming a setting
    of the environment that cannot be read (before any worker starts)."""
    from ..core.settings import Settings

    s = Settings()
    cache = f"redis {mask_url(s.redis_url)}" if s.redis_url else f"disk {s.cache_dir}"
    return f"registry {mask_url(s.database_url)}, cache {cache}"


def main(argv: list[str] | None = None) -> int:
    """The ``modelforge serve`` command: exit status 2 for a usage error or a setting that cannot be read."""
    parser = argparse.ArgumentParser(prog="modelforge serve", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    try:
        where = check_settings()
    except ValueError as err:
        print(f"modelforge serve: ModelForge is misconfigured: {mask_url(str(err))}", file=sys.stderr)
        return 2
    auth = "token required" if options.token is not None else "NO AUTHENTICATION (--no-auth)"
    print(f"modelforge serve: {options.workers} worker(s) on http://{options.host}:{options.port}/modelforge/, "
          f"{auth}; {where}", file=sys.stderr, flush=True)
    run(options)
    return 0
