"""Fork safety: what a child process must drop after ``os.fork()`` (multiprocessing's fork Pool, Celery's prefork
workers), so that it never talks on its parent's sockets nor waits on a lock no thread of its own will release.

A forked child inherits the parent's memory but only the thread that forked. So:
- connections (the SQLAlchemy pool, the registry's clock connection, Redis pub/sub, the Celery producer) are shared
  with the parent at the socket level: two processes writing one PostgreSQL protocol stream interleave their
  messages (``prepared statement "_pg3_0" already exists``, ``got no result from the query``, or a read that waits
  forever for an answer the other process consumed);
- a lock another thread held at the fork stays held forever in the child, and work in flight in other threads
  (a session load, a batch) never completes there;
- threads (the eviction listener) do not exist in the child.

Each object that owns such state registers a method with ``at_fork_in_child``; one ``os.register_at_fork`` hook runs
them in the child, right after the fork, so ``predict`` pays nothing per call (no pid check). Objects are held by
weak references, so registering never keeps a ``ModelForge`` alive. Inherited connections are ``park``-ed: kept
referenced, never closed nor garbage collected in the child, because closing would talk on the parent's socket
(psycopg's Terminate message, SQLAlchemy's reset-on-return) and their finalizers warn (psycopg's ResourceWarning).
Their file descriptors close when the child exits. Hooks do no I/O; the child reconnects on first use.
(SQLAlchemy's recipe: "Using Connection Pools with Multiprocessing or os.fork()", ``engine.dispose(close=False)``.)
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_hooks: dict[int, tuple[weakref.ref, Callable[[Any], None]]] = {}
_keys = itertools.count()
_parked: list[Any] = []


def at_fork_in_child(method: Callable[[], None]) -> None:
    """Call bound ``method`` in every child forked from now on, for as long as its object lives (weak reference).

    Hooks run in registration order, in the child only, with no other thread running; they must not do I/O.
    """
    key = next(_keys)  # atomic under the GIL, as are the dict operations: no lock a fork could leave held
    owner = weakref.ref(method.__self__, lambda _ref, key=key: _hooks.pop(key, None))  # type: ignore[attr-defined]
    _hooks[key] = (owner, method.__func__)  # type: ignore[attr-defined]


def park(*objects: Any) -> None:
    """Keep inherited connection objects referenced for the rest of this (child) process: never used, never closed."""
    _parked.extend(o for o in objects if o is not None)


def _run_hooks() -> None:
    for owner, func in list(_hooks.values()):
        obj = owner()
        if obj is None:
            continue
        try:
            func(obj)
        except Exception:  # a hook that fails must not stop the others, nor the child
            log.exception("after-fork reset of %r failed", obj)


os.register_at_fork(after_in_child=_run_hooks)
