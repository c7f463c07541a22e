"""Stopping a running inference: the per-run deadline (``inference_timeout``) and a caller's ``Cancellation``.

ONNX Runtime stops a running ``InferenceSession.run`` when another thread sets its ``RunOptions.terminate``: it checks
the flag between nodes and between iterations of a Loop/Scan (not inside one node: a single huge MatMul finishes
first), and the run raises. Both mechanisms here only ever set that flag; the engine maps the failure to
``InferenceTimeoutError`` (504) or ``RequestCancelledError`` (499).

Deadlines are watched by one daemon thread per process (``watchdog()``, started on first use and again in a forked
child), not a timer per run: ``threading.Timer`` costs ~250 µs a run to create, start and cancel, while registering a
run here costs about 1 µs (a lock, a set add and discard). The watchdog is woken only when a run's deadline is earlier
than its next wake-up; with one timeout for every run, that is once per busy period (see ``Watchdog``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

from .errors import RequestCancelledError

log = logging.getLogger(__name__)

# Longest single wait of the watchdog thread (s): any deadline, however far (a timeout of 1e10 or 10**30 s is valid:
# practically no limit), is waited for in steps no longer than this, under ``threading.TIMEOUT_MAX`` (a longer wait
# raises OverflowError, which would kill the thread and with it every later timeout).
MAX_WAIT = 3600.0


class Run:
    """One run being watched: its ``deadline`` (``time.monotonic()`` s), its ``RunOptions`` and whether it expired."""

    __slots__ = ("deadline", "options", "expired")

    def __init__(self, deadline: float, options: Any) -> None:
        self.deadline = deadline
        self.options = options
        self.expired = False


class Watchdog:
    """Set ``terminate`` on the ``RunOptions`` of every run still going at its deadline.

    Wake-ups: the thread sleeps until the earliest deadline of the runs in flight. With no run in flight it sleeps
    until one ``timeout`` after its last wake-up, so a run started later (deadline = start + timeout) falls after that
    wake-up and needs no notify; if nothing started meanwhile it then sleeps until notified. So a process serving a
    steady stream of predictions with one timeout wakes the thread about once per ``timeout``, and an idle one never.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._runs: set[Run] = set()
        self._wake_at = math.inf  # when the thread will next look at the runs (monotonic s)
        self._idle_for = 0.0  # the timeout of the last run started (s)
        self._started = 0  # runs started since the thread last looked
        self._thread: threading.Thread | None = None
        self.wakeups = 0  # times the thread looked at the runs, for tests and statistics

    def start(self, options: Any, timeout: float) -> Run:
        """Watch a run starting now with ``options`` that may take ``timeout`` seconds (> 0); ``finish`` it after."""
        run = Run(time.monotonic() + timeout, options)
        with self._lock:
            self._runs.add(run)
            self._started += 1
            self._idle_for = timeout
            if run.deadline < self._wake_at:
                self._wake_at = run.deadline
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._watch, name="modelforge-watchdog", daemon=True)
                    self._thread.start()
                else:
                    self._cond.notify()
        return run

    def finish(self, run: Run) -> None:
        """Stop watching ``run`` (it returned or raised)."""
        with self._lock:
            self._runs.discard(run)

    def _watch(self) -> None:
        with self._lock:
            while True:
                try:
                    self._look()
                except Exception:  # never die: a dead watchdog would silently ignore every later timeout
                    log.exception("the inference watchdog failed; it carries on")
                    self._wake_at = time.monotonic() + 1.0
                    self._cond.wait(1.0)

    def _look(self) -> None:
        """One wake-up (the lock held): stop the runs past their deadline, then wait until the next one is due."""
        self.wakeups += 1
        now = time.monotonic()
        wake_at = math.inf
        for run in self._runs:
            if run.deadline <= now:
                if not run.expired:
                    run.expired = True  # read by the engine after the run raises: a timeout, not a bug
                    run.options.terminate = True
            elif run.deadline < wake_at:
                wake_at = run.deadline
        if wake_at == math.inf and self._started:
            wake_at = now + self._idle_for  # a run starting before then has a later deadline: no notify
        self._started = 0
        self._wake_at = wake_at
        self._cond.wait(None if wake_at == math.inf else min(wake_at - now, MAX_WAIT))


_watchdog: Watchdog | None = None
_watchdog_lock = threading.Lock()


def watchdog() -> Watchdog:
    """The process's ``Watchdog`` (built on first use; a forked child builds its own, its parent's thread is gone)."""
    global _watchdog
    if _watchdog is None:
        with _watchdog_lock:
            if _watchdog is None:
                _watchdog = Watchdog()
    return _watchdog


def _after_fork() -> None:
    global _watchdog, _watchdog_lock
    _watchdog, _watchdog_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


class Cancellation:
    """A handle to stop one request's inference from another thread, e.g. a server's handler when its client leaves.

    Pass it to ``ModelForge.predict(..., cancel=...)``; ``cancel()`` then stops the run in progress (``RunOptions.
    terminate``) or, if the request has not started running yet, keeps it from starting. The predict raises
    ``RequestCancelledError`` (499) either way. Thread-safe; one per request.
    """

    __slots__ = ("_lock", "_options", "cancelled", "reason")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._options: Any = None
        self.cancelled = False
        self.reason = ""

    def cancel(self, reason: str = "the client closed the connection") -> None:
        """Stop the request: ``reason`` ends up in the ``RequestCancelledError``'s message. Idempotent."""
        with self._lock:
            if not self.cancelled:
                self.cancelled, self.reason = True, reason
            if self._options is not None:
                self._options.terminate = True

    def check(self, model_name: str) -> None:
        """Raise ``RequestCancelledError`` if cancelled (a request must not start once its caller left)."""
        if self.cancelled:
            raise self.error(model_name)

    def error(self, model_name: str) -> RequestCancelledError:
        """The ``RequestCancelledError`` (499) of this cancelled request for ``model_name``, naming the reason."""
        return RequestCancelledError(f"prediction of model {model_name!r} cancelled: {self.reason}")

    def attach(self, options: Any, model_name: str) -> None:
        """The run about to start uses ``options``: ``cancel()`` terminates it. Raises if already cancelled."""
        with self._lock:
            if self.cancelled:
                raise self.error(model_name)
            self._options = options

    def detach(self) -> None:
        """The run ended: a later ``cancel()`` no longer touches its ``RunOptions``."""
        with self._lock:
            self._options = None
