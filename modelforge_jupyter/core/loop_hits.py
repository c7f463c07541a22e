"""Cache hits answered on the event loop, with no executor hop: where the registry is PostgreSQL and the cache Redis.

A predict of a model this process has resolved before costs one Redis round trip when its answer is cached: the
registry stamp and the value, together (``resolver``, ``freshness``). ``LoopHits`` makes that round trip with
``redis.asyncio`` (hiredis), so a server answers such a hit on its event loop, without handing the call to an
executor thread and back. Nothing here blocks, and nothing here writes:
- the record must be remembered (``Resolver.remembered``: no database query), the request small
  (``LOOP_BODY_BYTES``: decoding and validating it take microseconds), and the stamp must prove the record current,
  exactly as the executor's path proves it;
- a proven miss (the stamp proves the record, the cache has no value) answers a ``ProvenMiss``: the caller hands
  it to ``ModelForge.predict_miss`` (``protocol.predict_json`` takes it as its body) in its executor, which runs the
  model and writes the cache with no second parse, validation or round trip;
- a request that does not use the cache (``use_cache`` false, or ``cache_prediction_enabled`` off) reads the stamp
  alone and is a ``ProvenMiss`` without a key: the executor runs it and caches nothing. Profiled (``modelforge serve
  --workers 2``, PostgreSQL + Redis, cache off), the stamp's blocking GET on the executor's thread halved the
  requests per second against the same server on SQLite;
- anything else (no remembered record, a stamp that does not match, an input the rules refuse, a value another
  version wrote, Redis slow or down, the cache's breaker open) answers None, and the caller runs the full
  ``predict`` in its executor, which answers it as always (the 400 naming the input, the run, the cache write).
A SQLite registry or a disk cache is a blocking read: those hits stay in the executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from .api import default_feed
from .metrics import METRICS
from .outputs import unpack
from .records import PredictionResult, ProvenMiss

log = logging.getLogger(__name__)

LOOP_BODY_BYTES = 16 * 1024  # larger bodies are decoded in the executor: a big JSON decode would hold the loop


class LoopHits:
    """Answer proven cache hits of ``forge`` (a ``ModelForge`` on PostgreSQL + Redis) on the running event loop.

    ``answered``, ``missed`` and ``passed`` count the requests answered here, those handed back as a ``ProvenMiss``
    and those handed back whole (None)."""

    def __init__(self, forge: Any) -> None:
        self.forge = forge
        self.answered = 0
        self.missed = 0
        self.passed = 0
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def usable(forge: Any) -> bool:
        """True when ``forge``'s records can be proven current without blocking: a Redis stamp (PostgreSQL +
        Redis)."""
        return forge.resolver.stamp is not None

    async def predict(self, model: str, input_data: Any, version: int | None = None, prepare: Any = None,
                      use_cache: bool = True) -> PredictionResult | ProvenMiss | None:
        """The cached ``PredictionResult`` of ``ModelForge.predict(model, input_data, version=version,
        prepare=prepare, use_cache=use_cache)`` (``cached=True``); a ``ProvenMiss`` when the stamp proves the record
        and the cache has no value (or is not used: a ``ProvenMiss`` without a key); None when this cannot prove
        either on the loop (module docstring). Never raises for a request: a refusal is the executor's to answer."""
        start = time.perf_counter_ns()
        forge = self.forge
        resolved = forge.resolver.remembered(model, version)
        if resolved is None or forge.cache.breaker.open():
            return self._pass()
        record = resolved.record
        try:
            feed = (prepare or default_feed)(record, input_data)
        except Exception:  # the executor answers the refusal, judged on a proven record
            return self._pass()
        fed = time.perf_counter_ns()
        key = forge.cache_key_of(record, feed) if forge.caching(use_cache) else None
        # an entry this process filed and has not written yet (``cache_writes``), looked at before the round trip
        # too: the writer may commit it while Redis answers, and then neither the read nor the filed entries have it
        filed = forge.cache.filed(key) if key is not None else None
        try:
            stamp, value = await self._read(forge.resolver.stamp, key)
        except Exception as err:  # Redis slow or down: the executor's client and breaker deal with it
            log.debug("loop hit not read (%s); the executor answers", err)
            return self._pass()
        if stamp is None or int(stamp) != resolved.pending:
            return self._pass()
        if value is None and key is not None:
            value = filed or forge.cache.filed(key)
        if value is None:
            self.missed += 1
            return ProvenMiss(record, feed, key, start, fed, time.perf_counter_ns())
        outputs = unpack(value, [o.name for o in record.outputs])
        if outputs is None:
            return self._pass()
        self.answered += 1
        METRICS.of(record.name, record.version).hit(start, fed, time.perf_counter_ns())  # as ``predict`` counts one
        ms = (time.perf_counter_ns() - start) / 1e6
        return PredictionResult(str(uuid.uuid4()), record.id, record.version, None, ms, True, record.name,
                                outputs=outputs)

    async def answer_json(self, body: bytes) -> bytes | ProvenMiss | None:
        """The answer of ``POST modelforge/predict`` with ``body`` (``protocol.predict_json``'s bytes) when it is a
        proven hit; a ``ProvenMiss`` for the executor's ``predict_json`` (instead of ``body``) when it is a proven
        miss or does not use the cache; else None (a body over ``LOOP_BODY_BYTES``, or anything ``predict``
        passes)."""
        from .protocol import encode_result, parse_predict

        if len(body) > LOOP_BODY_BYTES:
            return self._pass()
        try:
            request = parse_predict(body)
        except Exception:
            return self._pass()
        result = await self.predict(request.model, request.input_data, request.version, use_cache=request.use_cache)
        return encode_result(result) if isinstance(result, PredictionResult) else result

    async def answer_v2(self, model: str, version: str | None, body: bytes,
                        header_length: str | None) -> tuple[bytes, int | None] | None:
        """The answer of a V2 ``infer`` (``v2.infer``'s (body, JSON header length)) when it is a proven hit, else
        None, as ``answer_json``."""
        from .v2 import feed, url_version
        from .v2_codec import encode_response, parse_infer

        if len(body) > LOOP_BODY_BYTES:
            return self._pass()
        try:
            number, request = url_version(version), parse_infer(body, header_length)
        except Exception:
            return self._pass()
        if not self.forge.caching(request.use_cache):
            return self._pass()
        result = await self.predict(model, request, number, prepare=feed)
        if not isinstance(result, PredictionResult):  # a V2 miss is answered whole by the executor
            return None
        return encode_response(result.model_name, result.model_version, result.outputs, request, result.cached)

    def _pass(self) -> None:
        self.passed += 1
        return None

    async def _read(self, stamp: Any, key: str | None) -> tuple[bytes | None, bytes | None]:
        """(the registry stamp, the value at ``key``) in one round trip; the stamp alone when ``key`` is None."""
        if key is None:
            return await self._redis().get(stamp.stamp_key), None
        values = await self._redis().mget([stamp.stamp_key, key])
        return values[0], values[1]

    def _redis(self) -> Any:
        """The ``redis.asyncio`` client of the running loop (one per loop: a client is bound to the loop it was
        made on), with the cache's ``redis_timeout``."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio

            s = self.forge.settings
            self._client = redis.asyncio.Redis.from_url(s.redis_url, socket_timeout=s.redis_timeout,
                                                        socket_connect_timeout=s.redis_timeout)
            self._loop = loop
        return self._client

    async def close(self) -> None:
        """Close the asyncio client's connections (on its loop)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

