"""``ModelForge``: the one Python API every door (kernel magics, HTTP handlers, scripts) uses.

Data path of ``predict``, one way: registry (resolve name/id + version, cached in-process and checked against the
registry's generation) -> tensors (validate, convert) -> cache (lookup) -> engine (run) -> cache (store) -> result.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

import orjson

from .._version import __version__
from .batching import DynamicBatcher, batchable
from .cache import open_cache, prediction_key
from .deadline import Cancellation
from .engine import Engine
from .errors import ModelExistsError, ModelForgeError, ModelNotFoundError
from .forksafe import at_fork_in_child
from .freshness import RedisStamp
from .invalidation import EvictionListener, Invalidator
from .modelfile import check_self_contained, read_model_file
from .protocol import check_use_cache, check_version, version_from_text  # noqa: F401  (doors import them here too)
from .records import ModelRecord, PredictionResult
from .registry import Registry, check_name
from .settings import Settings, check_timeout, mask_url
from .tensors import input_hash, prepare_feed

log = logging.getLogger(__name__)

ModelSource = str | PathLike | bytes | bytearray | memoryview


class ModelForge:
    """Register ONNX models and serve predictions from one engine, one registry and one prediction cache.

    ``ModelForge()`` reads settings from the environment (``DATABASE_URL``, ``REDIS_URL``, ``CACHE_*``...); keyword
    arguments override them (``ModelForge(database_url=..., redis_url=...)``), or pass a ``Settings``.
    Errors are ``ModelForgeError`` subclasses, each with the HTTP ``status`` a server would answer.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings if settings is not None else Settings(**overrides)
        s = self.settings
        self.registry = Registry(s.database_url, s.database_timeout)
        self.cache = open_cache(s)
        self.engine = Engine(
            s.max_sessions, s.intra_op_num_threads, s.providers, max_session_bytes=s.max_session_bytes,
            max_constant_bytes=s.max_constant_bytes, max_arena_bytes=s.max_arena_bytes,
            max_output_bytes=s.max_output_bytes, max_request_memory_bytes=s.max_request_memory_bytes,
        )
        # Settings read on every predict, copied once: a traitlets attribute read costs about 1 µs. Settings are
        # fixed for the life of a ModelForge (the magics build a new one when a trait changes).
        self._caching = s.cache_prediction_enabled
        self._key_prefix = s.cache_key_prefix
        self._prediction_ttl = s.cache_prediction_ttl
        self._metadata_ttl = s.cache_ttl
        self._timeout = s.inference_timeout
        self._runners: dict[tuple[str, str], Any] = {}  # (name, sha256) -> engine.run or a batcher's run
        self._stamp = RedisStamp(self.cache, s.cache_key_prefix) if self._uses_stamp() else None
        self._batchers: dict[tuple[int, ...], DynamicBatcher] = {}
        self.invalidator = Invalidator(s, self.cache, self.engine)
        self.listener = self._listen(s)
        self._resolved: tuple[int | None, dict[tuple[str, int | None], tuple[ModelRecord, float]]] = (None, {})
        self._resolve_lock = threading.Lock()
        # Fork safety (``forksafe``): each part drops in a forked child what it shares with the parent (database and
        # broker connections, the listener's thread, locks); the child reconnects on first use. No cost per predict.
        at_fork_in_child(self._after_fork_in_child)

    # -- registry --------------------------------------------------------------------------------------------------
    def register(self, name: str, model: ModelSource) -> ModelRecord:
        """Register ONNX ``model`` (a path or the bytes) as version 1 of ``name``.

        Raises ``ModelExistsError`` (409) if the name is taken, ``InvalidModelError`` (400) if ONNX Runtime cannot
        load the bytes; the registry is unchanged on error.
        """
        check_name(name)
        data, sha256 = _read_model(model)
        inputs, outputs = self.engine.inspect(sha256, data)
        with self._writing():
            return self.registry.register(name, data, sha256, inputs, outputs)

    def update(self, name: str, model: ModelSource) -> ModelRecord:
        """Add a version of ``name`` with new ONNX bytes; the same bytes as the latest version add none.

        Returns the latest record. Raises ``ModelNotFoundError`` (404) for an unknown model, ``InvalidModelError``.
        """
        return self.save(name, model, create=False)[0]

    def save(self, name: str, model: ModelSource, create: bool = True) -> tuple[ModelRecord, bool]:
        """Register ``name`` (unless ``create`` is False: 404) or add a version to it: returns (record, changed),
        changed being False only when the bytes equal the latest version's. (HTTP ``PUT models/{name}`` uses this;
        concurrent saves of a new name all succeed: one registers, the others add versions.)"""
        check_name(name)
        data, sha256 = _read_model(model)
        inputs, outputs = self.engine.inspect(sha256, data)
        try:
            latest = self.registry.resolve(name)
        except ModelNotFoundError:
            if not create:
                raise ModelNotFoundError(f"model {name!r} is not registered; register it first") from None
            try:
                with self._writing():
                    return self.registry.register(name, data, sha256, inputs, outputs), True
            except ModelExistsError:  # registered meanwhile by another request: add a version to it
                latest = self.registry.resolve(name)
        with self._writing():
            record, changed = self.registry.update(name, data, sha256, inputs, outputs)
        if changed:
            self.invalidator.model_changed(record.id, [latest.sha256])
        return record, changed

    def delete(self, name: str, version: int | None = None) -> ModelRecord:
        """Delete model ``name`` (name or id), or only ``version``; returns the deleted record. 404 if absent.

        Its cached predictions and loaded sessions are then freed everywhere (``invalidation``); answers are already
        correct the moment this returns, whether or not that cleanup has run.
        """
        check_version(version)
        with self._writing():
            record, sha256s = self.registry.delete(name, version)
        self.invalidator.model_changed(record.id, sha256s)
        return record

    def get(self, name: str, version: int | None = None) -> ModelRecord:
        """The record of ``name`` (name or id) at ``version`` (default latest). Raises ``ModelNotFoundError``."""
        return self.registry.resolve(name, check_version(version))

    def models(self) -> list[ModelRecord]:
        """The latest version of every registered model, sorted by name."""
        return self.registry.models()

    # -- predict ---------------------------------------------------------------------------------------------------
    def predict(
        self, model: str, input_data: Any, *, use_cache: bool = True, version: int | None = None,
        timeout: float | None = None, cancel: Cancellation | None = None,
    ) -> PredictionResult:
        """Run ``model`` (name or id; latest version unless ``version``) on ``input_data``.

        ``input_data``: ``{input name: nested list | numpy array | scalar}``; a single-input model also takes the bare
        value. Batches go along axis 0. A repeated input within ``CACHE_PREDICTION_TTL`` seconds is a cache hit
        (``cached=True``, same ``output_data``) unless ``use_cache=False`` or ``CACHE_PREDICTION_ENABLED=false``.
        ``timeout``: seconds the model run may take (0 = no limit; default the ``inference_timeout`` setting); past it
        the run is stopped and ``InferenceTimeoutError`` (504) raised, naming the model and the limit.
        ``cancel``: a ``deadline.Cancellation`` another thread may trigger to stop the run (or keep it from starting):
        ``RequestCancelledError`` (499). Neither a stopped nor a refused run caches anything.
        Raises ``ModelNotFoundError`` (404), ``InvalidInputError`` (400, naming input, expected and given dtype/shape),
        ``InferenceError`` (422), ``ServiceUnavailableError`` (503, registry down). A cache outage never raises.
        """
        start = time.perf_counter()
        check_use_cache(use_cache)
        check_version(version)
        if timeout is None:
            timeout = self._timeout
        else:
            try:
                timeout = check_timeout(timeout, "timeout")
            except ValueError as err:
                raise ModelForgeError(str(err)) from None
        if cancel is not None:
            cancel.check(model)
        caching = use_cache and self._caching
        record, feed, key, hit = self._lookup(model, version, input_data, caching)
        if hit is not None:
            return self._result(record, feed, orjson.loads(hit), start, cached=True)
        run = self._runner(record)
        output_data = run(record.sha256, lambda: self.registry.blob(record.sha256), feed, record.name,
                          timeout, cancel)
        if key is not None:
            self.cache.set(key, orjson.dumps(output_data), self._prediction_ttl, record.id)
        return self._result(record, feed, output_data, start, cached=False)

    def _lookup(
        self, model: str, version: int | None, input_data: Any, caching: bool
    ) -> tuple[ModelRecord, dict, str | None, bytes | None]:
        """Resolve, validate and look up the cache: (record, feed, cache key or None, cached value or None).

        With a Redis stamp (PostgreSQL + Redis) a known model costs one pipelined round trip: the stamp and the cache
        value together; the metadata is used only if the stamp proves it current, else the database is asked.
        """
        if self._stamp is not None:
            state = self._resolved
            entry = state[1].get((model, version))
            if entry is not None and entry[1] > time.monotonic():
                try:  # validated against metadata not yet proven current: any refusal is retried below
                    feed = prepare_feed(entry[0].inputs, input_data)
                    key = self._cache_key(entry[0], feed) if caching else None
                    stamp, hit = self._stamp.read(key)
                    if stamp is not None and stamp == state[0]:
                        return entry[0], feed, key, hit
                except ModelForgeError:
                    pass
        record = self._resolve(model, version)
        feed = prepare_feed(record.inputs, input_data)
        key = self._cache_key(record, feed) if caching else None
        return record, feed, key, (self.cache.get(key) if key is not None else None)

    def _cache_key(self, record: ModelRecord, feed: dict) -> str:
        return prediction_key(self._key_prefix, record.id, input_hash(record.sha256, feed))

    def _result(
        self, record: ModelRecord, feed: dict, output_data: dict, start: float, cached: bool
    ) -> PredictionResult:
        ms = (time.perf_counter() - start) * 1000.0
        if log.isEnabledFor(logging.DEBUG):
            rows = next(iter(feed.values())).shape[:1] if feed else ()
            log.debug("predict %s v%d: batch %s, %.3f ms, cached=%s", record.name, record.version,
                      rows[0] if rows else 1, ms, cached)
        return PredictionResult(str(uuid.uuid4()), record.id, record.version, output_data, ms, cached, record.name)

    def _runner(self, record: ModelRecord):
        """``engine.run``, or a dynamic batcher's ``run`` when batching is on for this model and it can batch."""
        key = (record.name, record.sha256)
        run = self._runners.get(key)
        if run is None:
            run = self._runners[key] = self._make_runner(record)
        return run

    def _make_runner(self, record: ModelRecord):
        enabled, *key = self.settings.batching_for(record.name)  # max_batch_size, max_queue_delay_us, instances
        if not (enabled and batchable(record.inputs, record.outputs)):
            return self.engine.run
        key = tuple(key)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers.setdefault(key, DynamicBatcher(self.engine, *key))
        return batcher.run

    def _resolve(self, model: str, version: int | None) -> ModelRecord:
        """Registry lookup cached in-process while the registry generation is unchanged, for at most ``CACHE_TTL`` s.

        An entry is stored under the generation read *before* the database was queried, so it is never older than
        the generation it is filed under.
        """
        generation = self.registry.generation()
        state = self._resolved
        if state[0] != generation:
            with self._resolve_lock:
                state = self._resolved = (generation, {})
            self._prune_sessions()
            if self.listener is not None and not self.listener.running:
                self._relisten()
        now = time.monotonic()
        entry = state[1].get((model, version))
        if entry is None or entry[1] <= now:
            entry = state[1][(model, version)] = (self.registry.resolve(model, version), now + self._metadata_ttl)
        return entry[0]

    def registry_generation(self) -> int | None:
        """The registry generation as ``predict`` reads it to prove its in-process metadata current: the
        cross-process consistency check (``freshness``), which the benchmark times on its own line.

        PostgreSQL + Redis: the Redis stamp (one GET, which a cached predict pipelines with its cache GET), or, when
        no stamp is published, the database's; otherwise the database's clock (SQLite ``PRAGMA data_version``,
        PostgreSQL ``SELECT``). Raises ``ServiceUnavailableError`` (503) when the database is down.
        """
        if self._stamp is not None:
            stamp = self._stamp.read(None)[0]
            if stamp is not None:
                return stamp
        return self.registry.generation()

    def _uses_stamp(self) -> bool:
        """The Redis stamp pays off where the registry's own check is a network round trip (not SQLite)."""
        return self.cache.backend == "redis" and self.registry.dialect != "sqlite"

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Wrap a registry write in the stamp protocol (``freshness``); a no-op without a stamp."""
        if self._stamp is None:
            yield
            return
        self._stamp.before_write()
        try:
            yield
        finally:
            try:
                generation = self.registry.generation()
            except ModelForgeError:  # database gone: leave the stamp absent (readers ask the database)
                log.warning("registry generation unreadable after a write; the stamp stays absent")
            else:
                self._stamp.after_write(generation)

    def _prune_sessions(self) -> None:
        """After another process changed the registry: unload sessions whose bytes no version uses any more."""
        loaded = self.engine.loaded()
        for sha in set(loaded) - self.registry.referenced(loaded):
            self.engine.unload(sha)

    def _listen(self, s: Settings) -> EvictionListener | None:
        if not s.redis_url:
            return None
        try:
            return EvictionListener(s.redis_url, s.cache_key_prefix, self.engine)
        except Exception as err:  # Redis down at start: sessions are still pruned on registry changes
            log.warning("eviction listener not started (%s)", mask_url(str(err)))
            return None

    def _relisten(self) -> None:
        """Restart the eviction listener (in a forked child, on its first registry lookup)."""
        try:
            self.listener.restart()
        except Exception as err:  # Redis down: sessions are still pruned on registry changes; retried next change
            log.warning("eviction listener not restarted (%s)", mask_url(str(err)))

    def _after_fork_in_child(self) -> None:
        """In a forked child: a new lock; with an eviction listener (whose thread the child lacks), no resolved
        metadata, so that the child's first lookup asks the registry and restarts the listener there."""
        self._resolve_lock = threading.Lock()
        if self.listener is not None:
            self._resolved = (None, {})

    # -- operations ------------------------------------------------------------------------------------------------
    def unload(self, name: str, version: int | None = None) -> bool:
        """Drop the loaded session of ``name`` from this process's engine (next predict is a cold start)."""
        return self.engine.unload(self.registry.resolve(name, check_version(version)).sha256)

    def health(self) -> dict[str, str]:
        """``{status, database, redis, celery, version, environment, timestamp}`` as the documented /health.

        database ``connected``/``disconnected``; redis ``connected``/``disconnected``/``not_configured`` (embedded
        cache); celery ``connected``/``eager``/``disconnected``. status ``unhealthy`` when the database is down,
        ``degraded`` when Redis or Celery is, else ``healthy``. timestamp: ISO 8601 UTC.

        Costs a database and a Redis round trip, each bounded by its deadline (``database_timeout``,
        ``redis_timeout``). The Celery status is the background probe's (``tasks.celery_probe``), at most
        ``celery_probe_ttl`` s old: health never waits for the broker, but for the first probe of the process
        (at most ``broker_timeout`` s).
        """
        from .broker import celery_probe

        s = self.settings
        database = "connected" if self.registry.ping() else "disconnected"
        if s.redis_url:
            redis = "connected" if self.cache.ping() else "disconnected"
        else:
            redis = "not_configured"
        if s.celery_broker_url:
            celery = celery_probe(s.celery_broker_url, s.celery_probe_ttl, s.broker_timeout).status()
        else:
            celery = "eager"
        if database != "connected":
            status = "unhealthy"
        elif "disconnected" in (redis, celery):
            status = "degraded"
        else:
            status = "healthy"
        return {
            "status": status,
            "database": database,
            "redis": redis,
            "celery": celery,
            "version": __version__,
            "environment": s.environment,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def close(self) -> None:
        """Release the database pool, the cache client and the loaded sessions."""
        if self.listener is not None:
            self.listener.close()
        self.invalidator.close()
        self.engine.close()
        self.cache.close()
        self.registry.close()

    def __enter__(self) -> ModelForge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_model(model: ModelSource) -> tuple[bytes, str]:
    """(bytes, sha256 hex) of a model given as a path, bytes or an ``onnx.ModelProto``: self-contained bytes.

    A file's external data (tensors kept in other files beside it) is packed in; bytes or a ``ModelProto`` with
    external data raise ``InvalidModelError`` (400) saying how to save the model inline (``modelfile``).
    """
    if hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
        check_self_contained(data)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        check_self_contained(data)
    elif isinstance(model, (str, PathLike)):
        path = Path(model).expanduser()
        try:
            data = read_model_file(path)
        except FileNotFoundError:
            raise ModelForgeError(f"no model file at {str(path)!r}") from None
        except IsADirectoryError:
            raise ModelForgeError(f"{str(path)!r} is a directory, not an ONNX file") from None
    else:
        raise ModelForgeError(f"a model is a path or ONNX bytes, got {type(model).__name__}")
    return data, hashlib.sha256(data).hexdigest()
