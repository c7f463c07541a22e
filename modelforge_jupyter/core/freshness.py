"""A registry-generation stamp in Redis, so a predict checks freshness in the same round trip as its cache lookup.

Used when the registry is PostgreSQL (a freshness ``SELECT`` costs a round trip) and the cache is Redis. Each
process labels its resolved metadata with the database generation it read; a predict pipelines ``GET stamp`` with
the cache ``GET`` and trusts its metadata only when the stamp equals that label, else it asks the database.

The stamp must never claim a generation older than one whose write has returned. Writers therefore:
1. before the database transaction: ``INCR writers`` (with a TTL), ``DEL stamp`` (readers go to the database);
   if Redis is unreachable the write is refused (``ServiceUnavailableError``) and nothing changes;
2. after the commit, one script: ``maxgen = max(maxgen, g)``; ``DECR writers``; when no writer is left in flight,
   ``stamp = maxgen``. A writer that dies between the two leaves ``writers`` up until its TTL (60 s) expires; the
   stamp stays absent meanwhile, so readers ask the database: slower, never stale.
"""

from __future__ import annotations

import logging
from typing import Any

from .cache import redis_errors
from .errors import ServiceUnavailableError

log = logging.getLogger(__name__)

WRITERS_TTL_S = 60

_AFTER_WRITE = """
local maxgen = tonumber(redis.call('GET', KEYS[3]) or '-1')
local g = tonumber(ARGV[1])
if g > maxgen then maxgen = g; redis.call('SET', KEYS[3], g) end
local left = redis.call('DECR', KEYS[2])
if left <= 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], maxgen)
end
return left
"""


class RedisStamp:
    """The ``{prefix}:registry:stamp`` protocol above, on the Redis cache's client and outage breaker."""

    def __init__(self, cache: Any, prefix: str) -> None:
        self._errors = redis_errors()
        self.cache = cache
        self.client = client = cache.client  # the writes' transaction and script; reads go through the cache
        self.stamp_key = f"{prefix}:registry:stamp"
        self.writers_key = f"{prefix}:registry:writers"
        self.maxgen_key = f"{prefix}:registry:maxgen"
        self._after = client.register_script(_AFTER_WRITE)

    def before_write(self) -> None:
        """Announce a registry write. Raises ``ServiceUnavailableError`` when Redis cannot be told."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(self.writers_key)
            pipe.expire(self.writers_key, WRITERS_TTL_S)
            pipe.delete(self.stamp_key)
            pipe.execute()
        except self._errors as err:
            raise ServiceUnavailableError(
                f"the cache (Redis) is unreachable ({err}); the model was not changed, because other processes "
                "could not learn of the change: retry when Redis is back"
            ) from None

    def after_write(self, generation: int) -> None:
        """Publish ``generation`` (read after the commit). A failure leaves the stamp absent: slower, not stale."""
        try:
            self._after(keys=[self.stamp_key, self.writers_key, self.maxgen_key], args=[generation])
        except self._errors as err:
            log.warning("registry stamp not updated (%s); processes check the database until the next write", err)

    def read(self, cache_key: str | None) -> tuple[int | None, bytes | None]:
        """(stamp, cached value at ``cache_key``) in one round trip; (None, None) when Redis does not answer."""
        values = self.cache.get_many([self.stamp_key] if cache_key is None else [self.stamp_key, cache_key])
        if values is None:
            return None, None
        raw = values[0]
        return (int(raw) if raw is not None else None), (values[1] if cache_key is not None else None)
