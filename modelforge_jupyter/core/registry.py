"""The model registry: names, versions and content-addressed ONNX bytes in SQLite or PostgreSQL (SQLAlchemy 2).

Every process that connects to the same database sees the same models. The engine and the migrations are
``database``'s (applied on first use, once across processes starting together).

Writes run in one transaction that first increments ``mf_registry_state.generation``; that row lock serializes
writers (version numbers cannot race) and lets ``generation()`` tell a reader whether anything changed:
``PRAGMA data_version`` on a dedicated connection for a SQLite file (µs, no query), ``SELECT generation`` on a
dedicated autocommit connection otherwise (one round trip).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, exists, func, insert, select, text, update
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from .errors import ModelExistsError, ModelForgeError, ModelNotFoundError, ServiceUnavailableError, first_line
from .forksafe import at_fork_in_child, park
from .database import migrate, open_engine
from .records import ModelRecord, TensorSpec
from .schema import blobs, model_versions, models, registry_state
from .urls import scrub

log = logging.getLogger(__name__)

# Whole-string patterns: always used with ``fullmatch`` (``match`` with ``$`` lets a trailing newline through).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def is_model_id(model: str) -> bool:
    """True when ``model`` has the form of a model id (a uuid, any case): it is then looked up as an id only, and
    anything else as a name only, so a name and an id can never be confused."""
    return isinstance(model, str) and ID_RE.fullmatch(model) is not None


def check_name(name: str) -> str:
    """Model names: 1-128 of letters, digits, '.', '_', '-', starting with a letter or digit (they go in URLs), and
    not of a model id's form (a uuid). Raises ``ModelForgeError`` (400) naming the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ModelForgeError(
            f"invalid model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if is_model_id(name):
        raise ModelForgeError(
            f"invalid model name {name!r}: it has the form of a model id (a uuid), and a name must never be taken for "
            "an id; choose another name"
        )
    return name


PREPARATION = "preparation"  # key of a version's preparation inside its ``conversion`` JSON column (no migration)
WARMUP = "warmup"  # key of a version's stored warm-up input in the same column (``lifecycle``)


def _column(conversion: dict | None, preparation: dict | None, warmup: dict | None = None) -> dict | None:
    """The ``conversion`` column of a version: its conversion record, with ``preparation`` under ``PREPARATION`` and
    the warm-up input under ``WARMUP``."""
    extra = {k: v for k, v in ((PREPARATION, preparation), (WARMUP, warmup)) if v is not None}
    return {**(conversion or {}), **extra} if extra else conversion


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Registry:
    """Models, versions and ONNX bytes in one database. Raises ``ServiceUnavailableError`` when it is unreachable."""

    def __init__(self, database_url: str, timeout: float = 5.0) -> None:
        """Connect lazily to ``database_url`` (``database.open_engine``: ``ValueError`` naming DATABASE_URL, its
        password masked, when it cannot be used). ``timeout`` (s): a database that is down, unreachable or silent
        fails a call within about that long (503) instead of hanging it; the schema is migrated now if the database
        answers, else on first use."""
        self._secret_url = database_url  # what driver errors are scrubbed of (libpq may split user-info elsewhere)
        self.engine, self.url = open_engine(database_url, timeout)
        self.dialect = self.url.get_backend_name()
        self._clock_lock = threading.Lock()
        self._clock: Any = None
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        at_fork_in_child(self._after_fork_in_child)
        try:  # migrate now when the database answers; else on first use, so a process can start (and report
            self._ensure_schema()  # itself unhealthy) while the database is down
        except ServiceUnavailableError as err:
            log.info("registry schema not checked yet: %s", err)

    def _ensure_schema(self) -> None:
        """Apply the migrations once per process, before the first query. Raises ``ServiceUnavailableError``."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                with self._unavailable_as_503():
                    migrate(self.engine)
                self._schema_ready = True

    # -- freshness -------------------------------------------------------------------------------------------------
    def generation(self) -> int:
        """A number that changes whenever any process commits a registry change (see the module docstring)."""
        with self._clock_lock:
            try:
                self._ensure_schema()
                if self._clock is None:
                    self._clock = self._open_clock()
                return self._read_clock()
            except ServiceUnavailableError:
                self._close_clock(failed=True)
                raise
            except Exception as err:  # sqlite3 / psycopg / SQLAlchemy errors alike: reconnect on the next call
                self._close_clock(failed=True)
                msg = self._scrubbed(err)
                raise ServiceUnavailableError(f"model registry database unavailable: {msg}") from None

    def _open_clock(self) -> Any:
        if self.dialect == "sqlite" and self.url.database not in (None, "", ":memory:"):
            return sqlite3.connect(self.url.database, check_same_thread=False, isolation_level=None)
        raw = self.engine.raw_connection()
        raw.driver_connection.autocommit = True
        return raw

    def _read_clock(self) -> int:
        if isinstance(self._clock, sqlite3.Connection):
            return self._clock.execute("PRAGMA data_version").fetchone()[0]
        cur = self._clock.cursor()
        cur.execute("SELECT generation FROM mf_registry_state WHERE id = 1")
        return cur.fetchone()[0]

    def _close_clock(self, failed: bool = False) -> None:
        """Close the clock connection; after a failure a pooled one is invalidated (closed without the pool's reset,
        a rollback that would wait on, or fail on, a connection already lost)."""
        clock, self._clock = self._clock, None
        if clock is not None:
            try:
                clock.invalidate() if failed and hasattr(clock, "invalidate") else clock.close()
            except Exception:  # a broken connection may fail to close; it is dropped either way
                log.debug("closing the registry clock connection failed", exc_info=True)

    # -- reads -----------------------------------------------------------------------------------------------------
    def resolve(self, model: str, version: int | None = None) -> ModelRecord:
        """Return the record of ``model`` (name or id) at ``version`` (default: the latest).

        A uuid-shaped ``model`` is an id (any case), anything else a name (``is_model_id``).
        Raises ``ModelNotFoundError`` naming the model (and version) when there is none.
        """
        self._ensure_schema()
        with self._unavailable_as_503(), self.engine.connect() as conn:
            return self._resolve(conn, model, version)

    def models(self) -> list[ModelRecord]:
        """The latest version of every model, by name."""
        self._ensure_schema()
        with self._unavailable_as_503(), self.engine.connect() as conn:
            ids = conn.execute(select(models.c.id).order_by(models.c.name)).scalars().all()
            return [self._resolve(conn, model_id, None) for model_id in ids]

    def blob(self, sha256: str) -> bytes:
        """The ONNX bytes stored under ``sha256``. Raises ``ModelNotFoundError`` if no version references them."""
        self._ensure_schema()
        with self._unavailable_as_503(), self.engine.connect() as conn:
            data = conn.execute(select(blobs.c.data).where(blobs.c.sha256 == sha256)).scalar()
        if data is None:
            raise ModelNotFoundError(f"no model bytes with sha256 {sha256} (the model was deleted)")
        return bytes(data)

    def referenced(self, sha256s: list[str]) -> set[str]:
        """Which of ``sha256s`` some registered version still uses."""
        if not sha256s:
            return set()
        self._ensure_schema()
        with self._unavailable_as_503(), self.engine.connect() as conn:
            rows = conn.execute(select(blobs.c.sha256).where(blobs.c.sha256.in_(sha256s))).scalars().all()
        return set(rows)

    def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def _resolve(self, conn: Connection, model: str, version: int | None) -> ModelRecord:
        row = self._model_row(conn, model)
        if row is None:
            raise ModelNotFoundError(f"model {model!r} is not registered")
        versions = conn.execute(
            select(model_versions.c.version).where(model_versions.c.model_id == row.id).order_by(model_versions.c.version)
        ).scalars().all()
        wanted = versions[-1] if version is None else version
        if wanted not in versions:
            raise ModelNotFoundError(
                f"model {row.name!r} has no version {version}; versions: {', '.join(map(str, versions))}"
            )
        v = conn.execute(
            select(model_versions, blobs.c.size_bytes)
            .join(blobs, blobs.c.sha256 == model_versions.c.sha256)
            .where(model_versions.c.model_id == row.id, model_versions.c.version == wanted)
        ).one()
        return ModelRecord(
            id=row.id,
            name=row.name,
            version=v.version,
            sha256=v.sha256,
            inputs=[TensorSpec.from_dict(d) for d in v.inputs],
            outputs=[TensorSpec.from_dict(d) for d in v.outputs],
            created_at=_utc(row.created_at),
            updated_at=_utc(v.created_at),
            size_bytes=v.size_bytes,
            versions=list(versions),
            conversion={k: c for k, c in (v.conversion or {}).items() if k not in (PREPARATION, WARMUP)} or None,
            preparation=(v.conversion or {}).get(PREPARATION),
            warmup=(v.conversion or {}).get(WARMUP),
        )

    @staticmethod
    def _model_row(conn: Connection, model: str) -> Any:
        if not isinstance(model, str) or not model:
            raise ModelForgeError(f"a model name or id is needed, got {model!r}")
        if "\x00" in model:  # no name or id has one (check_name); PostgreSQL text cannot even hold it
            return None
        # ids are lowercase uuids (uuid4); a name cannot look like one (check_name), and a name written by an older
        # version that does is reachable by its id only
        where = models.c.id == model.lower() if is_model_id(model) else models.c.name == model
        return conn.execute(select(models).where(where)).first()

    # -- writes ----------------------------------------------------------------------------------------------------
    def register(
        self, name: str, data: bytes, sha256: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
        conversion: dict | None = None, preparation: dict | None = None, warmup: dict | None = None,
    ) -> ModelRecord:
        """Add a new model at version 1 (``conversion``, ``preparation``, ``warmup``: ``ModelRecord``'s). Raises
        ``ModelExistsError`` if ``name`` is taken (use ``update``)."""
        check_name(name)
        now = datetime.now(UTC)
        try:
            with self._write() as conn:
                existing = self._model_row(conn, name)
                if existing is not None:
                    raise ModelExistsError(
                        f"model {name!r} is already registered (version {existing.last_version}); "
                        "use update to add a new version"
                    )
                model_id = str(uuid.uuid4())
                conn.execute(
                    insert(models).values(id=model_id, name=name, last_version=1, created_at=now, updated_at=now)
                )
                column = _column(conversion, preparation, warmup)
                self._add_version(conn, model_id, 1, data, sha256, inputs, outputs, now, column)
                record = self._resolve(conn, model_id, 1)
        except IntegrityError:  # a concurrent register of the same name won the unique constraint
            raise ModelExistsError(f"model {name!r} is already registered; use update to add a new version") from None
        log.info("registered model %r v1 (id %s, sha256 %s, %d bytes)", name, record.id, sha256[:12], len(data))
        return record

    def update(
        self, model: str, data: bytes, sha256: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
        conversion: dict | None = None, preparation: dict | None = None, warmup: dict | None = None,
    ) -> tuple[ModelRecord, bool]:
        """Add a version with new bytes (``conversion``, ``preparation``, ``warmup``: ``ModelRecord``'s); return (record,
        created). Same bytes as the latest: (latest, False), its record unchanged."""
        now = datetime.now(UTC)
        with self._write() as conn:
            row = self._model_row(conn, model)
            if row is None:
                raise ModelNotFoundError(f"model {model!r} is not registered; use register() first")
            latest = self._resolve(conn, row.id, None)
            if latest.sha256 == sha256:
                return latest, False
            version = row.last_version + 1
            conn.execute(update(models).where(models.c.id == row.id).values(last_version=version, updated_at=now))
            column = _column(conversion, preparation, warmup)
            self._add_version(conn, row.id, version, data, sha256, inputs, outputs, now, column)
            record = self._resolve(conn, row.id, version)
        log.info("updated model %r to v%d (sha256 %s, %d bytes)", record.name, version, sha256[:12], len(data))
        return record, True

    def delete(self, model: str, version: int | None = None) -> tuple[ModelRecord, list[str]]:
        """Delete a model (every version) or one version; deleting its last version deletes the model.

        Returns (the record deleted — the latest one when ``version`` is None —, the sha256 of every version
        deleted). Raises ``ModelNotFoundError``.
        """
        with self._write() as conn:
            record = self._resolve(conn, model, version)
            if version is None or record.versions == [version]:
                shas = conn.execute(
                    select(model_versions.c.sha256).where(model_versions.c.model_id == record.id)
                ).scalars().all()
                conn.execute(delete(model_versions).where(model_versions.c.model_id == record.id))
                conn.execute(delete(models).where(models.c.id == record.id))
            else:
                shas = [record.sha256]
                conn.execute(
                    delete(model_versions).where(
                        model_versions.c.model_id == record.id, model_versions.c.version == version
                    )
                )
            for sha in set(shas):
                referenced = exists().where(model_versions.c.sha256 == sha)
                conn.execute(delete(blobs).where(blobs.c.sha256 == sha, ~referenced))
        what = f"v{version}" if version is not None else "all versions"
        log.info("deleted model %r (%s, id %s)", record.name, what, record.id)
        return record, sorted(set(shas))

    def _add_version(self, conn, model_id, version, data, sha256, inputs, outputs, now, conversion=None) -> None:
        have = conn.execute(select(func.count()).select_from(blobs).where(blobs.c.sha256 == sha256)).scalar()
        if not have:
            conn.execute(insert(blobs).values(sha256=sha256, data=data, size_bytes=len(data), created_at=now))
        conn.execute(
            insert(model_versions).values(
                model_id=model_id,
                version=version,
                sha256=sha256,
                inputs=[s.to_dict() for s in inputs],
                outputs=[s.to_dict() for s in outputs],
                created_at=now,
                conversion=conversion,
            )
        )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; its first statement bumps the generation, taking the writers' lock."""
        self._ensure_schema()
        with self._unavailable_as_503(), self.engine.begin() as conn:
            conn.execute(
                update(registry_state).where(registry_state.c.id == 1).values(generation=registry_state.c.generation + 1)
            )
            yield conn

    @contextmanager
    def _unavailable_as_503(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as err:
            msg = self._scrubbed(err.orig or err)
            raise ServiceUnavailableError(f"model registry database unavailable: {msg}") from None
        except DataError as err:  # a value the database cannot store or compare: the request's fault
            msg = first_line(err.orig or err)
            raise ModelForgeError(f"the model registry refused a value of this request: {msg}") from None

    def _scrubbed(self, err: BaseException) -> str:
        """A driver's complaint without any piece of DATABASE_URL's user-info: libpq splits ``user:pa@ss@host`` at
        the first ``@`` and names ``ss@host`` as the host it could not resolve."""
        return scrub(first_line(err), self._secret_url)

    def close(self) -> None:
        """Close the generation clock's connection and dispose of the connection pool."""
        with self._clock_lock:
            self._close_clock()
        self.engine.dispose()

    def _after_fork_in_child(self) -> None:
        """In a forked child: drop the pool and the clock connection, which share their sockets with the parent,
        without closing them (``forksafe``), and the locks another thread may have held; reconnect on first use.
        An in-memory SQLite database lives in its connection: the child keeps its own copy of it."""
        if not (self.dialect == "sqlite" and self.url.database in (None, "", ":memory:")):
            park(self.engine.pool, self._clock)
            self.engine.dispose(close=False)  # a new, empty pool (SQLAlchemy's documented recipe for os.fork)
            self._clock = None
        self._clock_lock = threading.Lock()
        self._schema_lock = threading.Lock()
