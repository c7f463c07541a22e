"""``WriteBehind``: a cache miss's write made after its answer, by one thread of the process, many entries a transaction.

Why (profiled: ``modelforge serve --workers 2``, bc_rf at batch 1, 16 connections, every body distinct): writing each
miss to the disk cache on the request's thread spent 71% of a predict's wall time in ``DiskCache.set``, 50% of it
asleep in SQLite's busy handler (``usleep``: eight threads of two processes queueing for the one write lock, SQLite
polling it at 1, 2, 5, 10... ms) and 9% in the WAL checkpoint's ``fdatasync``, while the inference took 3%. The
miss served a third of the FastAPI reference's requests per second.

Redis likewise (profiled the same way, every body distinct, PostgreSQL + Redis): the SET each miss made on its
request's thread, one round trip and redis-py's call, was the miss's largest cost; without it the same server
answered 1.7-1.9x the misses per second (2,225 -> 3,778-4,222 on a 2-core box, 2026-12-01).

Here a ``put`` only files the entry in the process's memory and wakes the writer thread, which writes what was filed
meanwhile in one transaction or pipeline (one lock, one commit or round trip for the lot: a group commit, as large as
the load makes it). A quiet process (no other request of the version in flight, which the caller says: ``busy``,
and no write in progress, of any model's entry) still writes on the request's thread, so a sequential client of a
process serving nothing else finds the entry committed when its answer arrives.
What a reader sees:
- this process: ``get`` answers a filed entry from memory until it is written, so the next identical predict here
  is a hit at once;
- another process (a kernel, another worker): the entry once the writer has committed it, milliseconds later;
  meanwhile that process computes the same outputs again (a miss, the same answer);
- ``flush()`` writes what is filed now, on the calling thread; ``close()`` and the interpreter's exit (``atexit``)
  flush, so an entry is not lost when a script ends right after its predict.
The filed entries are bounded (``max_pending``): past it the putting thread writes them itself (back-pressure, never
an unbounded queue). A failed write drops its batch, as a failed write always did (the cache's breaker logs it).
Fork-safe: a forked child drops its parent's filed entries (the parent writes them) and starts its own writer.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable

from .forksafe import at_fork_in_child

log = logging.getLogger(__name__)

Entry = tuple[bytes, float, str]  # (value, expiry as time.time() seconds, model id)
Batch = dict[str, Entry]
MAX_PENDING = 4096  # entries filed at most; a predict's outputs are small (bc_rf at batch 1: ~60 bytes)
WINDOW_S = 0.005  # s the writer waits after the first entry of a batch, so that one transaction holds many
IDLE_EXIT_S = 10.0  # the writer thread ends after this long with nothing to write (a forgotten cache frees)


class WriteBehind:
    """Entries filed by ``put`` and written in batches by ``write(batch)`` on one daemon thread (module docstring).

    ``write`` gets ``{key: (value, expiry, model id)}`` (expiry: ``time.time()`` seconds) and must not raise."""

    def __init__(self, write: Callable[[Batch], None], max_pending: int = MAX_PENDING, window: float = WINDOW_S,
                 name: str = "modelforge-cache-writer") -> None:
        self._write = write
        self.max_pending = max_pending
        self.window = window
        self.name = name
        self._reset()
        _live.add(self)
        at_fork_in_child(self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # guards the two dicts' swaps and the thread's start
        self._wake = threading.Condition(self._lock)
        self._flushing = threading.Lock()  # one batch written at a time
        self._pending: Batch = {}  # filed, not yet taken by a write
        self._writing: Batch = {}  # taken by the write in progress, readable until it is committed
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, key: str, value: bytes, ttl: float, model_id: str, busy: bool = False) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (tagged ``model_id``): written now on this thread when
        the process is quiet (no write in progress, nothing filed, and not ``busy``: the caller knows of no other
        request in flight), so the entry is committed when this returns; else filed for the writer thread, woken
        for it; past ``max_pending`` filed entries (or once closed), written now."""
        with self._lock:
            self._pending[key] = (value, time.time() + ttl, model_id)
            filed = len(self._pending)
            # nothing being written nor filed before it, no other request in flight (a quiet process): written now
            quiet = filed == 1 and not busy and not self._flushing.locked()
            now = self._closed or filed >= self.max_pending or quiet
            if not now and filed == 1:  # the first behind a write in progress: wake the writer
                now = not self._started()
                self._wake.notify()
        if now:
            self.flush()

    def _started(self) -> bool:
        """Start the writer thread unless it runs (the lock held); False when no thread can start (the
        interpreter is exiting): the caller writes instead."""
        if self._thread is None:
            thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            try:
                thread.start()
            except RuntimeError:
                return False
            self._thread = thread
        return True

    def get(self, key: str) -> bytes | None:
        """The value filed under ``key`` and not yet committed (None: not filed, or expired). No lock: ``flush``
        publishes the batch it takes as ``_writing`` before it empties ``_pending``, and empties ``_writing`` only
        once the batch is committed, so an entry is always in one of them or in the cache."""
        entry = self._pending.get(key)
        if entry is None:
            entry = self._writing.get(key)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    def flush(self) -> int:
        """Write what is filed now, on this thread (after the write in progress, if any). Returns how many."""
        with self._flushing:
            with self._lock:
                batch = self._pending
                if not batch:
                    return 0
                self._writing = batch
                self._pending = {}
            try:
                self._write(batch)
            finally:
                self._writing = {}
            return len(batch)

    def close(self) -> None:
        """Write what is filed and stop the writer thread; later ``put`` calls write at once."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        self.flush()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._pending and not self._closed:
                    self._wake.wait(IDLE_EXIT_S)
                if self._closed or not self._pending:  # closed, or idle: the next ``put`` starts a writer again
                    self._thread = None
                    return
            time.sleep(self.window)  # let the batch fill: one transaction (and one wake-up) for many entries
            try:
                self.flush()
            except Exception:  # never die: a dead writer would leave every later entry filed until the bound
                log.exception("the cache writer failed; it carries on")
                time.sleep(0.1)


_live: weakref.WeakSet[WriteBehind] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    """At the interpreter's exit, write what every live ``WriteBehind`` still holds."""
    for writer in list(_live):
        try:
            writer.flush()
        except Exception:  # noqa: BLE001 - exiting anyway: the entries are lost, as an unwritten cache entry may be
            log.debug("cache entries not written at exit", exc_info=True)
