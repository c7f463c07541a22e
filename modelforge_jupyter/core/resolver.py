"""Resolve a model name or id (and a version) to its record, proven current against the registry's generation.

Three operations, the only place these rules live:
- ``resolve(model, version)``: the ``ModelRecord``, from this process's memory while the registry generation is
  unchanged (and for at most ``CACHE_TTL`` s), else from the database;
- ``writing()``: the context every registry write runs in, so other processes learn of it (the stamp protocol of
  ``freshness``);
- ``generation()``: the generation a read proves its record against.

With PostgreSQL and Redis the proof rides on the cache lookup: ``resolve(..., proven=False)`` hands back the
remembered record with the generation it was read at, and ``read`` fetches the cached prediction and the Redis stamp
in one round trip (``RedisCache.get_many``); a stamp that does not match raises ``StaleRecord`` and the caller
resolves again, proven. Elsewhere ``resolve`` asks the database's clock (SQLite ``PRAGMA data_version``: no network).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import ModelForgeError
from .forksafe import at_fork_in_child
from .freshness import RedisStamp
from .records import ModelRecord

log = logging.getLogger(__name__)


class StaleRecord(Exception):
    """A remembered record could not be proven current (the registry changed since): resolve it again, proven."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """A record and, when not yet proven current, the generation it was read at (``pending``; None when proven)."""

    record: ModelRecord
    pending: int | None = None


class Resolver:
    """Name or id -> ``ModelRecord``, remembered per registry generation (see the module docstring).

    ``on_change`` runs (on the resolving thread) when this process first sees a new generation: another process
    changed the registry. ``ModelForge`` prunes sessions no version uses any more there.
    """

    def __init__(self, registry: Any, cache: Any, key_prefix: str, metadata_ttl: float,
                 on_change: Callable[[], None]) -> None:
        self.registry = registry
        self.cache = cache
        # The stamp pays off where the registry's own check is a network round trip (not SQLite).
        uses_stamp = cache.backend == "redis" and registry.dialect != "sqlite"
        self.stamp = RedisStamp(cache, key_prefix) if uses_stamp else None
        self.metadata_ttl = metadata_ttl
        self._on_change = on_change
        self._remembered: tuple[int | None, dict[tuple[str, int | None], tuple[ModelRecord, float]]] = (None, {})
        self._lock = threading.Lock()
        at_fork_in_child(self._after_fork_in_child)

    def resolve(self, model: str, version: int | None = None, *, proven: bool = True) -> Resolved:
        """The record of ``model`` (name or id) at ``version`` (None: the latest).

        ``proven=False`` (predict's fast path, with a stamp only): the remembered record without asking anyone,
        ``pending`` its generation, for ``read`` to prove. Raises ``ModelNotFoundError`` (404),
        ``ServiceUnavailableError`` (503, database down).
        """
        if not proven:
            remembered = self.remembered(model, version)
            if remembered is not None:
                return remembered
        return Resolved(self._resolve_proven(model, version))

    def remembered(self, model: str, version: int | None = None) -> Resolved | None:
        """The remembered record of ``model`` at ``version`` with the generation it was read at (``pending``), for a
        stamp to prove; None without a stamp, or when it is not remembered (or older than ``metadata_ttl``). Asks
        no one: an event loop may call it (``loop_hits``)."""
        if self.stamp is None:
            return None
        generation, records = self._remembered
        entry = records.get((model, version))
        if entry is not None and entry[1] > time.monotonic() and generation is not None:
            return Resolved(entry[0], generation)
        return None

    def known(self, model: Any, version: Any = None) -> ModelRecord | None:
        """The record remembered for ``model`` at ``version`` (as given to ``resolve``), whatever its age; None when
        there is none or they are not a valid lookup. Asks no one (``ModelForge.predict`` labels a failure with it)."""
        try:
            entry = self._remembered[1].get((model, version))
        except TypeError:  # unhashable arguments: a request refused before any lookup
            return None
        return entry[0] if entry is not None else None

    def read(self, resolved: Resolved, key: str | None) -> bytes | None:
        """The cached value at ``key`` (None: a miss, or no key), proving a pending record in the same round trip.

        Raises ``StaleRecord`` when the stamp does not prove ``resolved.pending`` (nothing is returned from a
        record that may be stale). A cache outage is a miss, never an error.
        """
        if resolved.pending is None:
            return self.cache.get(key) if key is not None else None
        stamp, value = self.stamp.read(key)
        if stamp is None or stamp != resolved.pending:
            raise StaleRecord
        return value

    def generation(self) -> int:
        """The registry generation as a read proves its record against: the Redis stamp (one GET) when one is
        published, else the database's clock. Raises ``ServiceUnavailableError`` (503) when the database is down."""
        if self.stamp is not None:
            stamp = self.stamp.read(None)[0]
            if stamp is not None:
                return stamp
        return self.registry.generation()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Wrap a registry write so other processes see it at once (the stamp protocol; a no-op without a stamp).

        Raises ``ServiceUnavailableError`` before the write when Redis cannot be told (nothing is changed then).
        """
        if self.stamp is None:
            yield
            return
        self.stamp.before_write()
        try:
            yield
        finally:
            try:
                generation = self.registry.generation()
            except ModelForgeError:  # database gone: leave the stamp absent (readers ask the database)
                log.warning("registry generation unreadable after a write; the stamp stays absent")
            else:
                self.stamp.after_write(generation)

    def forget(self) -> None:
        """Drop every remembered record: the next resolve asks the database (a forked child's first lookup)."""
        self._remembered = (None, {})

    def _resolve_proven(self, model: str, version: int | None) -> ModelRecord:
        """Remembered while the generation is unchanged, for at most ``metadata_ttl`` s. A record is filed under
        the generation read *before* the database was queried, so it is never older than its label."""
        generation = self.registry.generation()
        remembered = self._remembered
        if remembered[0] != generation:
            with self._lock:
                remembered = self._remembered = (generation, {})
            self._on_change()
        now = time.monotonic()
        entry = remembered[1].get((model, version))
        if entry is None or entry[1] <= now:
            entry = remembered[1][(model, version)] = (self.registry.resolve(model, version), now + self.metadata_ttl)
        return entry[0]

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
