"""The registry's database: its SQLAlchemy engine, with deadlines on every connection, and its schema's migrations.

``open_engine`` builds the engine from ``DATABASE_URL`` (SQLite: WAL and a busy timeout; PostgreSQL: connect, write
and read deadlines, TCP keepalives); ``migrate`` brings the schema to Alembic's head (``migrations/``), once across
processes starting together (an advisory lock on PostgreSQL, a file lock beside a SQLite file).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, create_engine, event, text
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .pgdeadline import add_read_deadline
from .settings import check_url
from .urls import mask_url, scrub

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x6D66_6A75  # "mfju": pg_advisory_xact_lock key for concurrent first use


def open_engine(database_url: str, timeout: float) -> tuple[SqlEngine, URL]:
    """The SQLAlchemy engine of ``database_url`` (connecting lazily) and its parsed URL.

    Raises ``ValueError`` naming DATABASE_URL (its password masked) when SQLAlchemy cannot parse it, knows no such
    dialect, its driver is not installed, or a SQLite file's directory cannot be created. ``timeout`` (s), PostgreSQL:
    the connect deadline (libpq ``connect_timeout``, whole seconds, at least 2), the deadline of unacknowledged writes
    (``tcp_user_timeout``) with keepalives on idle connections, and of a call whose connection sends and receives
    nothing (``pgdeadline``).
    """
    check_url("database_url", database_url)  # unparseable: ValueError, no part of its user-info shown
    url = make_url(database_url)
    shown = shown_url(url)
    try:
        url.get_dialect().import_dbapi()  # an unknown scheme or a driver that is not installed fails here
    except (ArgumentError, ImportError) as err:
        raise ValueError(
            f"DATABASE_URL {shown!r} is not a database URL SQLAlchemy can use: {scrub(str(err), database_url)}"
        ) from None
    dialect = url.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if dialect == "sqlite" and url.database and url.database != ":memory:":
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # the operator's setting, but no server path in an answer: the reason alone
            raise ValueError(
                f"DATABASE_URL: the SQLite file's directory cannot be created ({err.strerror or type(err).__name__})"
            ) from None
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif dialect == "postgresql":
        kwargs["connect_args"] = {  # a host that drops packets or never answers must not hang a request
            "connect_timeout": max(2, math.ceil(timeout)),
            "tcp_user_timeout": max(1, int(timeout * 1000)),
            "keepalives": 1,
            "keepalives_idle": max(1, int(timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
        }
    engine = create_engine(url, **kwargs)
    if dialect == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif url.get_driver_name() == "psycopg":
        add_read_deadline(engine, timeout)
    return engine, url


def migrate(engine: SqlEngine) -> None:
    """Bring the schema to Alembic's head revision (no-op when already there)."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with _sqlite_file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        log.info("registry schema migrated to %s on %s", head, shown_url(engine.url))


@contextmanager
def _sqlite_file_lock(engine: SqlEngine) -> Iterator[None]:
    """Serialize migrations of one SQLite file across processes (pysqlite runs DDL outside a transaction, so
    processes starting together would race to create the tables). PostgreSQL uses an advisory lock instead."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def shown_url(url: Any) -> str:
    """A SQLAlchemy ``URL`` as messages and logs show it: its password masked, and ``?password=...`` too (which
    ``render_as_string(hide_password=True)`` leaves, and libpq takes as the password)."""
    return mask_url(url.render_as_string(hide_password=True))




def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets the server and its kernels read while one of them writes; busy_timeout waits for the writer."""
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
