"""The options of ``modelforge serve``: its command line, checked once, and handed to every worker process.

The ModelForge settings themselves (``DATABASE_URL``, ``REDIS_URL``, ``CACHE_*``, ``MODELFORGE_*``) come from the
environment, read by the core ``Settings`` in each worker exactly as in a notebook, so the server shares the
notebooks' registry and prediction cache. The options here are the server's own: where it listens, how many
processes, its token, its body limits and threads. The supervisor passes them to the workers it starts in one
environment variable (``OPTIONS_VAR``), since uvicorn starts each worker from an import string.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass

OPTIONS_VAR = "MODELFORGE_SERVE_OPTIONS"  # JSON of ServeOptions, set by the supervisor for its workers
TOKEN_VAR = "MODELFORGE_TOKEN"  # the token's default; the kernel's HTTP client reads the same variable


@dataclass(frozen=True)
class ServeOptions:
    """Everything a worker needs besides the ModelForge settings. ``token`` None: no authentication (--no-auth)."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    token: str | None = None
    threads: int = 4  # data plane: predictions run on these threads, never on the event loop
    control_threads: int = 2  # model list/get/put/delete/unload
    max_body_size: int = 64 * 1024 * 1024  # bytes, decompressed
    max_predict_body_size: int = 8 * 1024 * 1024  # bytes, decompressed
    shutdown_timeout: float = 10.0  # s that SIGTERM waits for requests in flight
    log_level: str = "info"
    access_log: bool = False

    def to_environment(self) -> str:
        """These options as JSON, for the worker processes uvicorn starts (read back by ``from_environment``)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> ServeOptions:
        """The options the supervisor exported (``OPTIONS_VAR``); ``RuntimeError`` when started any other way."""
        raw = os.environ.get(OPTIONS_VAR)
        if not raw:
            raise RuntimeError(f"{OPTIONS_VAR} is not set: start the server with `modelforge serve`")
        return cls(**json.loads(raw))

    def predict_limit(self) -> tuple[int, str]:
        """(largest predict body in bytes, the option that says so): the smaller of the two limits."""
        if self.max_predict_body_size < self.max_body_size:
            return self.max_predict_body_size, "--max-predict-body-size"
        return self.max_body_size, "--max-body-size"


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _count(text: str) -> int:
    value = int(text) if text.isascii() and text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _port(text: str) -> int:
    port = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: give a whole number from 0 to 65535")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's options."""
    d = ServeOptions()
    parser.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}; 0.0.0.0: all)")
    parser.add_argument("--port", type=_port, default=d.port, help=f"TCP port (default {d.port}; 0: any free one)")
    parser.add_argument("--workers", type=_count, default=cores(),
                        help="worker processes sharing the port (default: the cores this process may use, "
                        f"{cores()} here)")
    parser.add_argument("--token", default=None,
                        help=f"the token clients send as 'Authorization: token <token>' (default ${TOKEN_VAR}, "
                        "which keeps it out of the process list)")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve without a token: anyone who reaches the port may predict and change models")
    parser.add_argument("--threads", type=_count, default=d.threads,
                        help=f"prediction threads per worker (default {d.threads})")
    parser.add_argument("--control-threads", type=_count, default=d.control_threads,
                        help=f"threads per worker for model list/get/put/delete/unload (default {d.control_threads})")
    parser.add_argument("--max-body-size", type=_count, default=d.max_body_size,
                        help=f"largest request body in bytes, decompressed (default {d.max_body_size}: 64 MiB)")
    parser.add_argument("--max-predict-body-size", type=_count, default=d.max_predict_body_size,
                        help="largest predict body in bytes, decompressed (default "
                        f"{d.max_predict_body_size}: 8 MiB; JSON decodes to up to ~32x its size)")
    parser.add_argument("--shutdown-timeout", type=_seconds, default=d.shutdown_timeout,
                        help=f"seconds SIGTERM waits for requests in flight (default {d.shutdown_timeout:g})")
    parser.add_argument("--log-level", default=d.log_level,
                        choices=["critical", "error", "warning", "info", "debug"], help="default info")
    parser.add_argument("--access-log", action="store_true", help="log one line per request (off by default)")


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    """The ``ServeOptions`` of parsed arguments: the token is ``--token``, else ``$MODELFORGE_TOKEN``. Raises
    ``ValueError`` (a usage error) when there is none (or it is blank) without ``--no-auth``, or when ``--token`` is
    given with ``--no-auth``."""
    if args.no_auth and args.token is not None:
        raise ValueError("--no-auth and --token contradict each other; give one of them")
    token = (args.token if args.token is not None else os.environ.get(TOKEN_VAR, "")).strip()
    if not args.no_auth and not token:
        raise ValueError(f"no token: give --token TOKEN or set ${TOKEN_VAR} (clients send it as "
                         "'Authorization: token <token>'), or pass --no-auth to serve without one")
    return ServeOptions(
        host=args.host, port=args.port, workers=args.workers, token=None if args.no_auth else token,
        threads=args.threads, control_threads=args.control_threads, max_body_size=args.max_body_size,
        max_predict_body_size=args.max_predict_body_size, shutdown_timeout=args.shutdown_timeout,
        log_level=args.log_level, access_log=args.access_log,
    )
