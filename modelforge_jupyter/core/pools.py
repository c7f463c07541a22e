"""``ThreadPool``: a fixed-size executor of daemon threads, so that a call stuck in a socket never holds a server (the
Jupyter server extension, ``modelforge serve``).

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits (``threading._shutdown`` and
its own atexit hook), so one call blocked on a silent broker or database keeps a SIGTERMed Jupyter server alive for
as long as that call lasts. This pool's threads are daemons: ``shutdown(timeout)`` waits for running calls at most
``timeout`` seconds, then the process may exit with them still blocked.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class ThreadPool(Executor):
    """``max_workers`` daemon threads running submitted calls in order; ``asyncio``'s ``run_in_executor`` takes it."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name_prefix}_{i}", daemon=True)
            for i in range(max_workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; ``RuntimeError`` after ``shutdown``."""
        future: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting caller, as ThreadPoolExecutor does
                future.set_exception(err)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> int:
        """Refuse new calls, cancel the queued ones (``cancel_futures``), wait for the running ones at most
        ``timeout`` seconds (None: as long as they run; ``wait=False``: not at all). Returns how many threads are
        still running a call."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            for thread in self._threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in self._threads)
