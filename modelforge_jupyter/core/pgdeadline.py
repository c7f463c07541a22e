"""A client-side deadline on PostgreSQL calls: a server that goes silent after connecting fails the call in
``database_timeout`` seconds instead of hanging it.

libpq has no read timeout. ``connect_timeout`` covers the connection and its handshake, ``tcp_user_timeout`` data the
server's host does not acknowledge, keepalives an idle connection whose host is gone; but a host that still
acknowledges TCP while the server never answers (a hung or stopped backend) keeps a query waiting forever, and with
it the request's thread, the registry's clock lock and every request queued behind them.

psycopg 3 runs every exchange of a connection through ``Connection.wait`` (queries, commits, rollbacks, the pool's
pre-ping). ``DeadlineConnection`` watches each of those waits on the process's watchdog thread (``deadline``, the one
that stops inference runs): at the deadline, if the socket has neither sent nor received data for ``timeout``
seconds (Linux ``TCP_INFO``: ``tcpi_last_data_sent``/``tcpi_last_data_recv``), the watchdog shuts the socket down;
libpq then sees the connection closed, psycopg raises, the connection is broken (SQLAlchemy discards it) and the
registry answers 503 naming the setting. A call that keeps moving data (a large model's bytes on a slow link) is
never cut; a server working on a statement for longer than ``timeout`` without a byte is. Where ``TCP_INFO`` cannot
be read (a Unix socket, not Linux) the deadline is ``timeout`` from the start of the wait. Arming costs a lock and a set
add: ~1 µs against a round trip of ~50 µs. Forked children start their own watchdog (``deadline``) and never use their
parent's connections (``forksafe``).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from functools import cache
from typing import Any

from .deadline import format_seconds, watchdog

SETTING = "database_timeout, env MODELFORGE_DATABASE_TIMEOUT"
_LAST_DATA = struct.Struct("=I4xI")  # tcpi_last_data_sent, tcpi_last_ack_sent (skipped), tcpi_last_data_recv: ms ago
_LAST_DATA_OFFSET = 44  # in struct tcp_info (linux/tcp.h), after 8 bytes of flags and 9 32-bit fields
_TCP_INFO = getattr(socket, "TCP_INFO", None)


class SilentWait:
    """One wait on a connection's socket (``fd``), watched by the watchdog until ``finish``: ``expired`` once the
    watchdog shut the socket down after ``timeout`` seconds without data either way."""

    __slots__ = ("deadline", "budget", "fd", "timeout", "expired")

    def __init__(self, fd: int, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.budget = 0  # no memory budget: the watchdog only calls ``expire``
        self.fd = fd
        self.timeout = timeout
        self.expired = False

    def expire(self, now: float) -> float:
        """At the deadline (the watchdog's lock held): the next deadline if data moved meanwhile, else cut."""
        quiet = _quiet_for(self.fd)
        if quiet is not None and quiet < self.timeout:
            return now + self.timeout - quiet
        self.expired = True
        _shut_down(self.fd)
        return math.inf


def _quiet_for(fd: int) -> float | None:
    """Seconds since the TCP socket ``fd`` last sent or received data; None where the kernel does not say."""
    if _TCP_INFO is None:
        return None
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _LAST_DATA_OFFSET + _LAST_DATA.size)
        sent, received = _LAST_DATA.unpack_from(info, _LAST_DATA_OFFSET)
    except (OSError, struct.error):
        return None
    return min(sent, received) / 1000


def _shut_down(fd: int) -> None:
    """Shut the connection of ``fd`` down both ways (its owner still closes ``fd``): a blocked wait on it returns."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the peer, or not a socket any more
        pass


@cache
def connection_class() -> type:
    """``psycopg.Connection`` whose waits have the deadline above (``read_timeout`` set on each connection, in s)."""
    import psycopg

    class DeadlineConnection(psycopg.Connection):
        read_timeout: float = 0.0  # s; 0: no deadline

        def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.read_timeout:
                return super().wait(gen, *args, **kwargs)
            watched = SilentWait(self.pgconn.socket, self.read_timeout)
            dog = watchdog()
            dog.watch(watched)
            try:
                return super().wait(gen, *args, **kwargs)
            except psycopg.Error:
                if watched.expired:
                    raise psycopg.OperationalError(
                        f"the database sent nothing for {format_seconds(self.read_timeout)} and the call was abandoned "
                        f"({SETTING})"
                    ) from None
                raise
            finally:
                dog.finish(watched)

    return DeadlineConnection


def add_read_deadline(engine: Any, timeout: float) -> None:
    """Make every psycopg connection ``engine`` (a SQLAlchemy ``Engine``) opens a ``DeadlineConnection`` of
    ``timeout`` seconds (SQLAlchemy's ``do_connect`` event, so the dialect's own set-up still runs on it)."""
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: tuple, cparams: dict) -> Any:
        connection = connection_class().connect(*cargs, **cparams)
        connection.read_timeout = timeout
        return connection
