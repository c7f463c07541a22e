"""Stopping a running inference: the per-run deadline (``inference_timeout``), the per-request memory budget
(``max_request_memory_bytes``) and a caller's ``Cancellation``; and deadlines of other waits (``Watched``).

ONNX Runtime stops a running ``InferenceSession.run`` when another thread sets its ``RunOptions.terminate``: it checks
the flag between nodes and between iterations of a Loop/Scan (not inside one node: a single huge MatMul finishes
first), and the run raises. These mechanisms only ever set that flag; the engine maps the failure to
``InferenceTimeoutError`` (504), ``ResourceLimitError`` (413) or ``RequestCancelledError`` (499).

Deadlines are watched by one daemon thread per process (``watchdog()``, started on first use and again in a forked
child), not a timer per run: ``threading.Timer`` costs ~250 µs a run to create, start and cancel, while registering a
run here costs about 1 µs (a lock, a set add and discard). The watchdog is woken only when a run's deadline is earlier
than its next wake-up; with one timeout for every run, that is once per busy period (see ``Watchdog``).

Memory: ONNX Runtime's capped arena holds a run's tensors, but not what a run allocates outside it (the characters of
strings copied by ``Concat`` or inside ``Loop``/``Scan`` bodies). While runs with a budget are in flight the watchdog
reads the process's RSS (``memory.process_rss``, 2 µs) and stops a run when the RSS stands more than its budget above
the steady state: the RSS with no run in flight, plus what sessions built since took. It looks again before the
fastest allocation it assumes (``MAX_RATE``) could have used what is left of the budget: every ~0.5 s with 1 GiB left,
every ``MIN_LOOK`` near the limit. Which run to stop: the process cannot tell which run holds memory, but the kernel
counts each thread's page faults, the pages it took: the run whose thread took the most since the watchdog first saw
it running is stopped (ties: the oldest), one at a time, if it took at least half of the rise; when none did, the rise
is not a run's (a request body being decoded, a user's array in the kernel) and becomes the steady state. A build's
pages are not a run's (``building``). A run is first
seen at the first look after it starts, before it could have used its budget at ``MAX_RATE``; reading its thread's
count then (``/proc``, ~15 µs) keeps the runs that end before any look (nearly all) at no cost but 0.05 µs. Once a stopped run has left, what
the runs still in flight did not take becomes the steady state (memory the C heap keeps after a stop is not charged to
the next request).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any, Protocol

from .errors import InferenceTimeoutError, RequestCancelledError
from .memory import PAGE, own_faults, process_rss, thread_faults

log = logging.getLogger(__name__)

# Longest single wait of the watchdog thread (s): any deadline, however far (a timeout of 1e10 or 10**30 s is valid:
# practically no limit), is waited for in steps no longer than this, under ``threading.TIMEOUT_MAX`` (a longer wait
# raises OverflowError, which would kill the thread and with it every later timeout).
MAX_WAIT = 3600.0
# The fastest a run is assumed to take memory (bytes/s): one thread of this 2-core VM took ~1 GB/s copying a
# 4,000-character string in a Loop (and numpy 0.4 GB/s filling fresh pages); a faster run overshoots the budget by
# what it takes beyond this rate between two looks.
MAX_RATE = 2 << 30
MIN_LOOK, MAX_LOOK = 0.002, 0.5  # s between two looks at the memory while budgeted runs are in flight


class Watched(Protocol):
    """Anything the watchdog stops at a deadline (``time.monotonic()`` s, ``math.inf``: none): ``expire(now)`` is
    called at it, the watchdog's lock held, and returns the next deadline (``math.inf`` once it is stopped)."""

    deadline: float
    budget: int

    def expire(self, now: float) -> float:
        """Stop the watched thing (its deadline passed); return its next deadline (``math.inf``: done)."""


class Run:
    """One run being watched: its ``deadline``, its ``RunOptions``, its memory ``budget`` (bytes, 0: none) and why it
    was stopped: ``expired`` (the deadline) or ``over`` (bytes the RSS stood above the steady state, 0: not)."""

    __slots__ = ("deadline", "options", "expired", "budget", "over", "started", "thread", "faults")

    def __init__(self, deadline: float, options: Any, budget: int = 0, started: float = 0.0) -> None:
        self.deadline = deadline
        self.options = options
        self.expired = False
        self.budget = budget
        self.over = 0
        self.started = started
        self.thread = threading.current_thread() if budget else None  # the thread that runs it (0.05 µs)
        self.faults = -1  # page faults of its thread when the watchdog first saw it running (-1: not seen yet)

    def expire(self, now: float) -> float:
        """The deadline passed: mark the run ``expired`` and set ``RunOptions.terminate`` (ONNX Runtime stops it
        between nodes). Returns ``math.inf``: nothing more to watch."""
        self.expired = True  # read by the engine after the run raises: a timeout, not a bug
        self.options.terminate = True
        return math.inf


class Build:
    """A session build in progress on one thread: its pages are the session's, not a run's."""

    __slots__ = ("thread", "faults")

    def __init__(self) -> None:
        self.thread = threading.current_thread()
        self.faults = own_faults()


class Watchdog:
    """Stop every watched run still going at its deadline, or taking the process past its memory budget.

    Wake-ups: the thread sleeps until the earliest deadline of the runs in flight. With no run in flight it sleeps
    until one ``timeout`` after its last wake-up, so a run started later (deadline = start + timeout) falls after that
    wake-up and needs no notify; if nothing started meanwhile it then sleeps until notified. So a process serving a
    steady stream of predictions with one timeout wakes the thread about once per ``timeout``, and an idle one never.
    Runs with a memory budget add a look every ``MIN_LOOK`` to ``MAX_LOOK`` while they come (see the module).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._runs: set[Watched] = set()
        self._builds: set[Build] = set()
        self._wake_at = math.inf  # when the thread will next look at the runs (monotonic s)
        self._idle_for = 0.0  # the timeout of the last run started with one (s)
        self._started = 0  # runs started since the thread last looked
        self._budgeted = False  # a run with a memory budget started since the thread last looked
        self._budget = 0  # bytes: the smallest budget of the runs started since the thread last looked at the memory
        self._look_every = MAX_LOOK  # s until the memory must be looked at again, from the last look
        self._steady: int | None = None  # bytes: the process's RSS with no run in flight (None: not read yet)
        self._victim: Run | None = None  # the run last stopped for memory, until it has left
        self._rebase = False  # a run stopped for memory has left: the steady state is read again
        self._thread: threading.Thread | None = None
        self.wakeups = 0  # times the thread looked at the runs, for tests and statistics

    def start(self, options: Any, timeout: float, budget: int = 0) -> Run:
        """Watch a run starting now on this thread with ``options`` that may take ``timeout`` seconds (0: no limit)
        and raise the process's memory by ``budget`` bytes (0: no limit); ``finish`` it after."""
        now = time.monotonic()
        run = Run(now + timeout if timeout else math.inf, options, budget, now)
        due = min(run.deadline, now + self._look_every) if budget else run.deadline
        with self._lock:
            self._runs.add(run)
            self._started += 1
            if timeout:
                self._idle_for = timeout
            if budget:
                self._budget = min(self._budget, budget) if self._budgeted else budget
                self._budgeted = True
            if due < self._wake_at:
                self._wake(due)
        return run

    def watch(self, item: Watched) -> None:
        """Watch ``item`` until ``finish(item)``: its ``expire`` is called at its deadline."""
        with self._lock:
            self._runs.add(item)
            if item.deadline < self._wake_at:
                self._wake(item.deadline)

    def finish(self, run: Watched) -> None:
        """Stop watching ``run`` (it returned or raised)."""
        with self._lock:
            self._runs.discard(run)
            if run is self._victim:
                self._victim, self._rebase = None, True

    def building(self) -> Build:
        """A session build starts on this thread: the pages it takes are not charged to the runs in flight."""
        build = Build()
        with self._lock:
            self._builds.add(build)
        return build

    def built(self, build: Build, grown: int) -> None:
        """The build is done and grew the process by ``grown`` bytes: that much more is steady state now."""
        with self._lock:
            self._builds.discard(build)
            if self._steady is not None:
                self._steady += max(0, grown)

    def _wake(self, at: float) -> None:
        self._wake_at = at
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._watch, name="modelforge-watchdog", daemon=True)
            self._thread.start()
        else:
            self._cond.notify()

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
        """One wake-up (the lock held): stop the runs past their deadline or budget, then wait until the next look."""
        self.wakeups += 1
        now = time.monotonic()
        wake_at = math.inf
        for run in self._runs:
            if run.deadline <= now:
                run.deadline = run.expire(now)
            if run.deadline < wake_at:
                wake_at = run.deadline
        if wake_at == math.inf and self._started and self._idle_for:
            wake_at = now + self._idle_for  # a run starting before then has a later deadline: no notify
        wake_at = min(wake_at, self._look_at_memory(now))
        self._started = 0
        self._wake_at = wake_at
        self._cond.wait(None if wake_at == math.inf else min(max(0.0, wake_at - now), MAX_WAIT))

    def _look_at_memory(self, now: float) -> float:
        """Read the RSS, stop a run past its budget; return when to look again (``math.inf``: no run to watch)."""
        budgeted = [run for run in self._runs if run.budget]
        started, self._budgeted = self._budgeted, False
        if not budgeted and not started:
            return math.inf
        rss = process_rss()
        if not rss:  # no /proc: nothing to read
            return math.inf
        if not budgeted:  # runs came and went: the steady state, and a look in time in case more come
            self._steady = rss - self._pages(self._builds)
            self._look_every = min(MAX_LOOK, max(MIN_LOOK, self._budget / MAX_RATE))
            return now + self._look_every
        for run in budgeted:
            if run.faults < 0:  # first seen: its pages are counted from here (looks come before a run at MAX_RATE
                run.faults = thread_faults(run.thread.native_id)  # could have used the budget, see the module)
        if self._steady is None or self._rebase:
            self._steady = rss - self._pages(budgeted) - self._pages(self._builds)
            self._rebase = False
        grown = rss - self._steady
        budget = min(run.budget for run in budgeted)
        if grown > budget and self._builds:
            grown -= self._pages(self._builds)
        if grown <= 0:
            self._steady = min(self._steady, rss)
        if grown > budget and (self._victim is None or self._victim not in self._runs):
            grown = self._stop_the_taker(budgeted, rss, grown)
        self._look_every = min(MAX_LOOK, max(MIN_LOOK, (budget - grown) / MAX_RATE))
        return now + self._look_every

    def _stop_the_taker(self, budgeted: list[Run], rss: int, grown: int) -> int:
        """Stop the run whose thread took the most pages, when it took at least half of what the process grew by;
        else the growth is not a run's (a request body being decoded, a user's array in the kernel): it becomes the
        steady state and no run is stopped. Returns the growth still charged to the runs."""
        taken = {run: self._pages((run,)) for run in budgeted}
        victim = max(budgeted, key=lambda run: (taken[run], -run.started))
        if 2 * taken[victim] >= grown:
            self._victim = victim
            victim.over = grown
            victim.options.terminate = True
            return grown
        self._steady = rss - sum(taken.values()) - self._pages(self._builds)
        return rss - self._steady

    @staticmethod
    def _pages(items: Any) -> int:
        """Bytes the threads of ``items`` (runs, builds) faulted in since they started."""
        return sum(max(0, thread_faults(item.thread.native_id) - item.faults) for item in items) * PAGE


def format_seconds(seconds: float) -> str:
    """A limit as people read it: ``500 ms`` below 1 s, else ``30 s``."""
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def timeout_error(model_name: str, timeout: float) -> InferenceTimeoutError:
    """The 504 of a run stopped at its deadline: the model and the limit, and where the limit comes from."""
    return InferenceTimeoutError(
        f"model {model_name!r} did not finish within {format_seconds(timeout)} and was stopped (the limit is "
        "predict's timeout, else the inference_timeout setting, env MODELFORGE_INFERENCE_TIMEOUT)"
    )


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
