"""The Celery broker as ModelForge's clients use it: the app's configuration, deadlines on every broker call, and the
health probe (a background thread per process and broker, never on a request).

Clients (the invalidation send, the health probe) call the broker with a deadline (``broker_timeout``) on connect and
on every socket read and write, with no connection retry, so a broker that is down or accepts and never answers costs
a bounded time. The worker's app and its task live in ``tasks`` (``celery -A modelforge_jupyter.tasks worker``).
"""

from __future__ import annotations

import os
import threading
import time

from celery import Celery

from .settings import from_environment


def deadlines(broker_url: str, timeout: float) -> dict:
    """kombu transport options bounding every call to ``broker_url`` by ``timeout`` seconds: py-amqp's socket
    read/write timeouts (``amqp://``; its handshake is bounded by the connect timeout), redis-py's socket timeouts
    (``redis://``), and one connect attempt (kombu otherwise retries for the whole connect timeout)."""
    scheme = broker_url.split("://", 1)[0].lower()
    options: dict = {"max_retries": 0}
    if scheme.startswith(("redis", "sentinel")):  # redis, rediss, sentinel
        options |= {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    elif scheme in ("amqp", "amqps", "pyamqp"):
        options |= {"read_timeout": timeout, "write_timeout": timeout}
    return options


def make_app(broker_url: str, timeout: float | None = None, queue: str | None = None) -> Celery:
    """A Celery app on ``broker_url`` (empty: in-memory transport, eager) with ModelForge's settings.

    ``timeout``: a client's deadline in seconds on each broker call (``deadlines``); None, as the worker runs it:
    Celery's own connection handling (a 2 s connect timeout, retries). ``queue``: the tasks' default queue; None:
    the ``celery_queue`` setting as this process's environment gives it.
    """
    if queue is None:
        queue = from_environment("celery_queue")
    app = Celery("modelforge_jupyter", broker=broker_url or "memory://", set_as_current=False)
    app.conf.update(
        task_always_eager=not broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_default_queue=queue,
        broker_connection_timeout=2.0,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if timeout is not None and broker_url:
        app.conf.update(
            broker_connection_timeout=timeout,
            broker_connection_retry=False,
            broker_connection_max_retries=0,
            broker_transport_options=deadlines(broker_url, timeout),
        )
    return app


class _Serving(Exception):
    """Raised from a control reply's callback to stop waiting for the other workers' replies."""


def celery_status(broker_url: str, timeout: float = 1.0, queue: str | None = None) -> str:
    """``eager`` without a broker; ``connected`` when a worker consuming ``queue`` (None: the ``celery_queue``
    setting) answers within ``timeout`` s; else ``disconnected`` (broker unreachable or silent, or no worker of that
    queue: one serving another queue of the broker does not run ModelForge's tasks). Asks every worker for its
    ``active_queues`` (Celery's remote control) and stops at the first that consumes ``queue``. Blocks up to about
    3 x ``timeout`` s (connect, publish, wait for replies): ``ModelForge.health`` reads it through ``celery_probe``,
    off the request path."""
    if not broker_url:
        return "eager"
    queue = from_environment("celery_queue") if queue is None else queue

    def serves(reply: dict) -> None:
        for queues in reply.values():
            if any(isinstance(q, dict) and q.get("name") == queue for q in queues or ()):
                raise _Serving

    probe = make_app(broker_url, timeout)
    try:
        probe.control.broadcast("active_queues", reply=True, timeout=timeout, callback=serves)
    except _Serving:
        return "connected"
    except Exception:  # kombu raises OperationalError, OSError or a transport-specific error
        return "disconnected"
    finally:
        probe.close()
    return "disconnected"


class CeleryProbe:
    """``celery_status`` of one broker, run on a daemon thread and reused for ``ttl`` seconds.

    ``status()`` never waits for the broker, except for this process's very first answer (at most ``timeout`` s,
    then ``disconnected``): a stale answer is returned at once while the thread refreshes it.
    """

    def __init__(self, broker_url: str, ttl: float, timeout: float, queue: str | None = None) -> None:
        self.broker_url, self.ttl, self.timeout, self.queue = broker_url, ttl, timeout, queue
        self.probes = 0  # how many probes ran: each is a broker connection and a ping
        self._cond = threading.Condition()
        self._status: str | None = None
        self._at = 0.0
        self._wanted = self._busy = False
        self._thread: threading.Thread | None = None

    def status(self) -> str:
        """``connected`` or ``disconnected``, at most ``ttl`` s (plus one probe) old."""
        with self._cond:
            if not self._busy and (self._status is None or time.monotonic() - self._at >= self.ttl):
                self._wanted = True
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="modelforge-celery-probe", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
            if self._status is None:
                self._cond.wait_for(lambda: self._status is not None, self.timeout)
            return self._status or "disconnected"

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted)
                self._wanted, self._busy = False, True
            status = celery_status(self.broker_url, self.timeout, self.queue)
            with self._cond:
                self._status, self._at, self._busy = status, time.monotonic(), False
                self.probes += 1
                self._cond.notify_all()


_probes: dict[tuple[str, float, float, str | None], CeleryProbe] = {}
_probes_lock = threading.Lock()


def celery_probe(broker_url: str, ttl: float, timeout: float, queue: str | None = None) -> CeleryProbe:
    """This process's ``CeleryProbe`` of ``broker_url``'s workers of ``queue`` (one per process, broker, ttl, timeout
    and queue; None: the ``celery_queue`` setting)."""
    key = (broker_url, ttl, timeout, queue)
    with _probes_lock:
        probe = _probes.get(key)
        if probe is None:
            probe = _probes[key] = CeleryProbe(broker_url, ttl, timeout, queue)
        return probe


def _forget_probes() -> None:
    """After a fork: the parent's probe threads do not exist in the child; it starts its own on first use."""
    global _probes_lock
    _probes_lock = threading.Lock()
    _probes.clear()


os.register_at_fork(after_in_child=_forget_probes)
