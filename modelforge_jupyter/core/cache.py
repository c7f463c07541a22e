"""The prediction cache: Redis when ``REDIS_URL`` is set, else a local-disk cache shared by this machine's processes.

Key: ``{CACHE_KEY_PREFIX}:prediction:{model_id}:{input_hash}`` (model_id is the model's uuid; input_hash covers the
version's sha256 and the converted inputs, see ``tensors.input_hash``). Value: the orjson bytes of ``output_data``.
Every entry has a TTL of ``CACHE_PREDICTION_TTL`` seconds.

The cache never fails a prediction: a Redis error or timeout (``redis_timeout`` s) is logged once, then the cache is
bypassed for ``retry_after`` seconds, and predictions are served from the engine meanwhile.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from typing import Any, Protocol

from .cache_writes import WriteBehind
from .errors import first_line
from .forksafe import at_fork_in_child
from .urls import mask_url

log = logging.getLogger(__name__)
REDIS_WRITE_WINDOW_S = 0.001  # s the Redis writer lets a batch fill: a round trip's worth (the disk's is 5 ms)


class PredictionCache(Protocol):
    """What ``ModelForge`` needs of a prediction cache; ``RedisCache`` and ``DiskCache`` are the two there are.

    Keys are ``prediction_key`` strings; values the orjson bytes of a prediction's ``output_data``. Reads and writes
    never raise: an outage is a miss (a write is dropped), behind a ``Breaker``.
    """

    backend: str  # "redis" or "disk"

    def get(self, key: str) -> bytes | None:
        """The value at ``key``; None on a miss, an expired entry or an outage."""

    def set(self, key: str, value: bytes, ttl: int, model_id: str, busy: bool = False) -> None:
        """Store ``value`` at ``key`` for ``ttl`` seconds, tagged with ``model_id`` (for ``invalidate``): committed
        when this returns unless ``busy`` (other requests in flight) or a write is in progress, then written behind
        the answer by the cache's writer thread within milliseconds (``cache_writes``)."""

    def filed(self, key: str) -> bytes | None:
        """The value this process filed at ``key`` and has not written yet (None: none)."""

    def flush(self) -> int:
        """Write the entries this process filed now; returns how many."""

    def invalidate(self, prefix: str, model_id: str) -> int:
        """Delete every cached prediction of ``model_id``; returns how many. May raise on an outage (retried)."""

    def clear(self, prefix: str) -> int:
        """Delete every entry under ``{prefix}:``; returns how many. May raise on an outage."""

    def ping(self) -> bool:
        """True when the backend answers now (health)."""

    def close(self) -> None:
        """Release connections and files."""


def redis_errors() -> tuple[type[Exception], ...]:
    """What a Redis call raises when Redis is down, slow or refuses it: redis-py's ``RedisError`` (its
    ``ConnectionError``, ``TimeoutError``, ``ResponseError``...) and the ``OSError`` a socket raises unwrapped. The
    cache, the registry stamp and the Celery task's retries all catch exactly these. Imports redis-py (only the Redis
    paths need it)."""
    import redis

    return (redis.RedisError, OSError)


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis ``MATCH`` / ``KEYS`` glob: ``*``, ``?``, ``[``, ``]`` and ``\\``
    escaped, so that a prefix such as ``team?`` never matches another deployment's keys (``teamX:...``)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def prediction_key(prefix: str, model_id: str, input_hash: str) -> str:
    """The documented cache key ``{prefix}:prediction:{model_id}:{input_hash}``."""
    return f"{prefix}:prediction:{model_id}:{input_hash}"


class Breaker:
    """Bypass a failing service for ``retry_after`` seconds; log the first failure of each outage only."""

    def __init__(self, name: str, retry_after: float, fallback: str = "serving without it") -> None:
        self.name = name
        self.retry_after = retry_after
        self.fallback = fallback
        self._down_until = 0.0
        self._outage = False
        self._lock = threading.Lock()
        at_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork

    def open(self) -> bool:
        """True while the service is bypassed (``retry_after`` s after its last failure)."""
        return self._down_until > time.monotonic()

    def failed(self, err: BaseException) -> None:
        """Bypass the service for ``retry_after`` s; log the first failure of an outage (URL secrets masked)."""
        with self._lock:
            self._down_until = time.monotonic() + self.retry_after
            if not self._outage:
                self._outage = True
                log.warning("%s unavailable, %s: %s", self.name, self.fallback, mask_url(str(err)))

    def succeeded(self) -> None:
        """The service answered: log the end of an outage once."""
        if self._outage:
            with self._lock:
                self._outage = False
                log.warning("%s reachable again", self.name)


class RedisCache:
    """Prediction cache in Redis (redis-py with hiredis); one client and connection pool per process.

    Writes under load are made behind the answer (``cache_writes.WriteBehind``), many SETs a pipelined round trip;
    ``get`` answers a filed entry in this process at once, other processes see it once written (about a
    millisecond), ``flush()`` writes them now.

    Fork-safe by redis-py itself: its ``ConnectionPool`` compares ``os.getpid()`` on every checkout and starts an
    empty pool in a forked child, without shutting down the parent's sockets.
    """

    backend = "redis"

    def __init__(self, url: str, timeout: float = 0.25, retry_after: float = 5.0) -> None:
        import redis

        self._errors = redis_errors()
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.breaker = Breaker("redis cache", retry_after)
        self.writes = WriteBehind(self._write, window=REDIS_WRITE_WINDOW_S, name="modelforge-redis-writer")

    def get(self, key: str) -> bytes | None:
        """``PredictionCache.get``: an entry filed by this process and not yet written, else a Redis GET
        (``redis_timeout`` s at most)."""
        filed = self.writes.get(key)
        if filed is not None or self.breaker.open():
            return filed
        try:
            value = self.client.get(key)
        except self._errors as err:
            self.breaker.failed(err)
            return None
        self.breaker.succeeded()
        return value

    def get_many(self, keys: list[str]) -> list[bytes | None] | None:
        """The values at ``keys`` in one round trip (``MGET``; None for a missing key; an entry this process filed
        and has not written yet in its place), or None when Redis does not answer (an outage opens the breaker, as
        ``get``). The registry stamp (``freshness``) rides on this."""
        if self.breaker.open():
            return None
        # filed entries looked at before the round trip too: the writer may commit one while Redis answers, and then
        # neither the MGET nor the filed entries would have it
        filed = [self.writes.get(k) for k in keys]
        try:
            values = self.client.mget(keys)
        except self._errors as err:
            self.breaker.failed(err)
            return None
        self.breaker.succeeded()
        return [v if v is not None else f if f is not None else self.writes.get(k)
                for k, v, f in zip(keys, values, filed)]

    def set(self, key: str, value: bytes, ttl: int, model_id: str, busy: bool = False) -> None:
        """``PredictionCache.set``: a Redis SET with an expiry of ``ttl`` s, made now or behind the answer
        (``WriteBehind.put``)."""
        if self.breaker.open():
            return
        self.writes.put(key, value, ttl, model_id, busy)

    def filed(self, key: str) -> bytes | None:
        """``PredictionCache.filed``."""
        return self.writes.get(key)

    def _write(self, batch: dict[str, tuple[bytes, float, str]]) -> None:
        """SET every entry of ``batch`` (``{key: (value, expiry, model id)}``) with its remaining time in ms, in one
        pipelined round trip (no MULTI); a failure drops the batch (breaker)."""
        now = time.time()
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key, (value, expiry, _model_id) in batch.items():
                    ms = int((expiry - now) * 1000)
                    if ms > 0:
                        pipe.set(key, value, px=ms)
                pipe.execute()
        except self._errors as err:
            self.breaker.failed(err)

    def flush(self) -> int:
        """Write the entries filed by this process now (``WriteBehind.flush``). Returns how many."""
        return self.writes.flush()

    def invalidate(self, prefix: str, model_id: str, batch: int = 500) -> int:
        """Delete every cached prediction of ``model_id``: SCAN its key pattern, UNLINK in batches (never KEYS).

        Returns the number of keys removed. Raises ``redis.RedisError`` (the Celery task retries on it).
        """
        self.writes.flush()  # filed entries first: none is written after the keys are gone
        removed = 0
        keys: list[bytes] = []
        for key in self.client.scan_iter(match=f"{glob_escape(prediction_key(prefix, model_id, ''))}*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                removed += self.client.unlink(*keys)
                keys = []
        if keys:
            removed += self.client.unlink(*keys)
        return removed

    def clear(self, prefix: str, batch: int = 500) -> int:
        """Delete every key under ``{prefix}:`` (SCAN + UNLINK in batches, never KEYS). Returns how many.

        Raises ``redis.RedisError`` when Redis does not answer."""
        self.writes.flush()
        removed = 0
        keys = list(self.client.scan_iter(match=f"{glob_escape(prefix)}:*", count=batch))
        for start in range(0, len(keys), batch):
            removed += self.client.unlink(*keys[start : start + batch])
        return removed

    def ping(self) -> bool:
        """``PredictionCache.ping``: a Redis PING."""
        try:
            return bool(self.client.ping())
        except self._errors:
            return False

    def close(self) -> None:
        """Write the filed entries, stop the writer thread and close the client's connection pool."""
        self.writes.close()
        self.client.close()


class DiskCache:
    """Prediction cache on local disk (diskcache, SQLite-backed): shared by every process using ``directory``.

    Values are stored as raw bytes (diskcache stores ``bytes`` as-is, never pickled), tagged with the model id.
    Writes are made behind the answer (``cache_writes.WriteBehind``): ``set`` files the entry, which ``get`` answers
    in this process at once, and one thread writes the filed entries a transaction at a time; other processes see
    an entry once it is written (milliseconds), ``flush()`` writes them now.
    Fork-safe by diskcache itself: its SQLite connection is per thread and per process (a pid check reopens it).
    """

    backend = "disk"

    def __init__(self, directory: str, retry_after: float = 5.0) -> None:
        import diskcache

        try:
            self.cache = diskcache.Cache(directory, tag_index=True, timeout=1.0)
        except (OSError, sqlite3.Error) as err:  # the operator's setting, but no server path in an answer
            reason = os.strerror(err.errno) if getattr(err, "errno", None) else first_line(err)
            raise ValueError(
                f"MODELFORGE_CACHE_DIR (cache_dir): the disk cache's directory cannot be created or opened ({reason})"
            ) from None
        self.breaker = Breaker("disk cache", retry_after)
        self.writes = WriteBehind(self._write)

    def get(self, key: str) -> bytes | None:
        """``PredictionCache.get``: an entry filed by this process and not yet written, else a diskcache read (a
        local SQLite query)."""
        filed = self.writes.get(key)
        if filed is not None:
            return filed
        if self.breaker.open():
            return None
        try:
            return self.cache.get(key)
        except Exception as err:  # diskcache.Timeout or sqlite3 errors: a locked or broken file never fails a predict
            self.breaker.failed(err)
            return None

    def set(self, key: str, value: bytes, ttl: int, model_id: str, busy: bool = False) -> None:
        """``PredictionCache.set``: written with ``expire=ttl`` and ``tag=model_id``, now or behind the answer
        (``WriteBehind.put``)."""
        if self.breaker.open():
            return
        self.writes.put(key, value, ttl, model_id, busy)

    def filed(self, key: str) -> bytes | None:
        """``PredictionCache.filed``."""
        return self.writes.get(key)

    def _write(self, batch: dict[str, tuple[bytes, float, str]]) -> None:
        """Write ``batch`` (``{key: (value, expiry, model id)}``) in one transaction; a failure drops it (breaker)."""
        try:
            with self.cache.transact():
                now = time.time()
                for key, (value, expiry, model_id) in batch.items():
                    if expiry > now:
                        self.cache.set(key, value, expire=expiry - now, tag=model_id)
        except Exception as err:  # diskcache.Timeout or sqlite3 errors: the entries are dropped, never an error
            self.breaker.failed(err)

    def flush(self) -> int:
        """Write the entries filed by this process now (``WriteBehind.flush``). Returns how many."""
        return self.writes.flush()

    def invalidate(self, prefix: str, model_id: str) -> int:
        """Delete every cached prediction of ``model_id`` (entries are tagged with it), filed ones written first.
        Returns how many."""
        self.writes.flush()
        return self.cache.evict(tag=model_id)

    def clear(self, prefix: str) -> int:
        """Delete every entry whose key is under ``{prefix}:`` (filed ones written first). Returns how many."""
        self.writes.flush()
        keys = [key for key in self.cache.iterkeys() if isinstance(key, str) and key.startswith(f"{prefix}:")]
        return sum(1 for key in keys if self.cache.delete(key))

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (None if absent): the disk counterpart of Redis's TTL."""
        self.writes.flush()
        _value, expire_time = self.cache.get(key, expire_time=True)
        return None if expire_time is None else expire_time - time.time()

    def ping(self) -> bool:
        """``PredictionCache.ping``: a read of the cache's SQLite file."""
        try:
            self.cache.get("__ping__")
            return True
        except Exception:
            return False

    def close(self) -> None:
        """Write the filed entries, stop the writer thread and close the cache's SQLite connection."""
        self.writes.close()
        self.cache.close()


def open_cache(settings: Any) -> PredictionCache:
    """Redis when ``settings.redis_url`` is set, else the local-disk cache under ``settings.cache_dir``."""
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.redis_timeout, settings.cache_retry_after)
    return DiskCache(settings.cache_dir, settings.cache_retry_after)
