"""``ModelForge``: the one Python API every door (kernel magics, HTTP handlers, scripts) uses.

Data path of ``predict``, one way: registry (resolve name/id + version, cached in-process and checked against the
registry's generation) -> tensors (validate, convert) -> cache (lookup) -> engine (run) -> cache (store) -> result.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from os import PathLike
from typing import Any

from .batching import DynamicBatcher, batchable
from .cache import open_cache, prediction_key
from .checks import check_timeout
from .prepare import read_prepared
from .deadline import Cancellation
from .engine import Engine
from .errors import ModelExistsError, ModelForgeError, ModelNotFoundError
from .forksafe import at_fork_in_child
from .invalidation import EvictionListener, Invalidator, prune_sessions
from .lifecycle import Lifecycle
from .metrics import METRICS
from .outputs import pack, unpack
from .protocol import check_use_cache, check_version, version_from_text  # noqa: F401  (doors import them here too)
from .records import ModelRecord, PredictionResult, ProvenMiss
from .registry import Registry, check_name
from .resolver import Resolved, Resolver, StaleRecord
from .operations import Operations
from .scoring import BatchScoring, close_pool
from .settings import Settings
from .tensors import input_hash, prepare_feed
from .urls import mask_url

log = logging.getLogger(__name__)

# A path, ONNX bytes, an ``onnx.ModelProto``, or a fitted estimator / pipeline to convert (``convert``)
ModelSource = str | PathLike | bytes | bytearray | memoryview | Any
FeedRule = Callable[[ModelRecord, Any], dict]  # (resolved record, input data) -> {input name: ndarray}


def default_feed(record: ModelRecord, input_data: Any) -> dict:
    """The default feed rule (``FeedRule``): ``tensors.prepare_feed`` on the record's declared inputs."""
    return prepare_feed(record.inputs, input_data)


class ModelForge(BatchScoring, Operations):
    """Register ONNX models and serve predictions from one engine, one registry and one prediction cache.

    ``ModelForge()`` reads settings from the environment (``DATABASE_URL``, ``REDIS_URL``, ``CACHE_*``...); keyword
    arguments override them (``ModelForge(database_url=..., redis_url=...)``), or pass a ``Settings``. ``serving``:
    built by a server (``server_intra_op_num_threads`` threads per session, default 1), else by a kernel or a script
    (``intra_op_num_threads``, default one per physical core).
    Errors are ``ModelForgeError`` subclasses, each with the HTTP ``status`` a server would answer.
    """

    def __init__(self, settings: Settings | None = None, *, serving: bool = False, **overrides: Any) -> None:
        self.settings = settings if settings is not None else Settings(**overrides)
        s = self.settings
        self.registry = Registry(s.database_url, s.database_timeout)
        self.cache = open_cache(s)
        self.engine = Engine(  # threads per use: a server's requests share the cores, a kernel's batch takes them all
            s.max_sessions, s.server_intra_op_num_threads if serving else s.intra_op_num_threads, s.providers,
            spinning=s.intra_op_spinning and not serving,
            max_session_bytes=s.max_session_bytes, max_constant_bytes=s.max_constant_bytes, max_arena_bytes=s.max_arena_bytes,
            max_output_bytes=s.max_output_bytes, max_request_memory_bytes=s.max_request_memory_bytes,
        )
        # Settings read on every predict, copied once: a traitlets attribute read costs about 1 µs. Settings are
        # fixed for the life of a ModelForge (the magics build a new one when a trait changes).
        self._caching = s.cache_prediction_enabled
        self._key_prefix = s.cache_key_prefix
        self._prediction_ttl = s.cache_prediction_ttl
        self._timeout = s.inference_timeout
        self._runners: dict[tuple[str, str], Any] = {}  # (name, sha256) -> engine.predict or a batcher's run
        self._batchers: dict[tuple[int, ...], DynamicBatcher] = {}
        self.resolver = Resolver(self.registry, self.cache, s.cache_key_prefix, s.cache_ttl, self._registry_changed)
        self.invalidator = Invalidator(s, self.cache, self.engine)
        self.lifecycle = Lifecycle(self.engine, self.registry, self.invalidator.announce, s.inference_timeout)
        self.listener = self._listen(s)
        # Fork safety (``forksafe``): each part drops in a forked child what it shares with the parent (database and
        # broker connections, the listener's thread, locks); the child reconnects on first use. No cost per predict.
        at_fork_in_child(self._after_fork_in_child)

    # -- registry --------------------------------------------------------------------------------------------------
    def register(self, name: str, model: ModelSource, sample: Any = None, zipmap: bool = False, *,
                 quantize: str | None = None, outputs: list[str] | str | None = None,
                 measure: bool = False) -> ModelRecord:
        """Register ``model`` as version 1 of ``name``: an ONNX file's path, ONNX bytes, an ``onnx.ModelProto``, or a
        fitted scikit-learn estimator / Pipeline (XGBoost, LightGBM with the ``convert`` extra) with ``sample``, a few
        rows of its input (2-D numpy array or DataFrame), converted and verified on them first (``convert``,
        ``verify``; ``zipmap=True``: classifier probabilities as {class: probability} maps). The record's
        ``conversion`` then says by what, within what tolerance and with what measured error.
        Warmed up before it is stored (``lifecycle``): run once on ``sample`` (for ONNX: an input as ``predict``
        takes it), at most 8 rows of which are kept for the other processes' warm-ups, else on an input generated
        from the declared inputs. Prepared for serving (``prepare``): ``outputs`` keeps only the outputs named
        (list, or names separated by commas), ``quantize="dynamic"`` quantises MatMul / Gemm weights to int8, checked on ``sample`` (for ONNX: an
        input as ``predict`` takes it, or ``"synthetic"``); ``measure`` adds p50 latency at batch 1 and 1000 before
        and after. The record's ``preparation`` says what each step did (sizes in bytes, agreement, latency).

        Raises ``ModelExistsError`` (409) if the name is taken; ``InvalidModelError`` (400) if ONNX Runtime cannot
        load the bytes, the object cannot be converted, the converted model disagrees with the original on
        ``sample`` (the message shows the worst rows) or the quantised one with the float one, or the warm-up run
        fails (naming why); ``ServiceUnavailableError`` (503) for a warm-up run refused for lack of memory;
        ``ModelForgeError`` (400) for a fitted object without ``sample``, a bad option, an unknown output, nothing to
        quantise. The registry is unchanged on error.
        """
        check_name(name)
        with self.lifecycle.warming(name):
            src = read_prepared(self.engine, model, name, sample, zipmap, quantize, outputs, measure)
            warmup = self.lifecycle.warm_up(name, src, model, sample)
            with self.resolver.writing():
                return self.registry.register(name, src.data, src.sha256, src.inputs, src.outputs, src.conversion,
                                              src.preparation, warmup)

    def update(self, name: str, model: ModelSource, sample: Any = None, zipmap: bool = False,
               **prepare: Any) -> ModelRecord:
        """Add a version of ``name`` from ``model`` (as ``register``: ONNX, or a fitted object with ``sample``;
        ``prepare``: ``quantize``, ``outputs``, ``measure`` as ``register`` takes them); the same bytes as the latest
        version add none. Returns the latest record. Raises ``ModelNotFoundError`` (404) for an unknown model, and
        what ``register`` raises for the source.

        Zero downtime: the new version is loaded and warmed here before the commit, requests get the old one
        meanwhile; once this returns no process answers from the old one (README, "Model updates and deletes"), and
        the processes that served it start loading the new one at once (``lifecycle``).
        """
        return self.save(name, model, create=False, sample=sample, zipmap=zipmap, **prepare)[0]

    def save(self, name: str, model: ModelSource, create: bool = True, sample: Any = None, zipmap: bool = False, *,
             quantize: str | None = None, outputs: list[str] | str | None = None,
             measure: bool = False) -> tuple[ModelRecord, bool]:
        """Register ``name`` (unless ``create`` is False: 404) or add a version to it, ``model`` read and prepared as
        ``register`` does: returns (record, changed), changed being False only when the bytes equal the latest
        version's. (HTTP ``PUT models/{name}`` uses this; concurrent saves of a new name all succeed: one registers,
        the others add versions.)"""
        check_name(name)
        with self.lifecycle.warming(name):
            src = read_prepared(self.engine, model, name, sample, zipmap, quantize, outputs, measure)
            warmup = self.lifecycle.warm_up(name, src, model, sample)
            return self._commit(name, src, warmup, create)

    def _commit(self, name: str, src: Any, warmup: dict | None, create: bool) -> tuple[ModelRecord, bool]:
        """``save``'s registry write of a read and warmed ``src``, then the change's event and cleanup."""
        data, sha256, inputs, outputs, conversion = src.data, src.sha256, src.inputs, src.outputs, src.conversion
        try:
            latest = self.registry.resolve(name)
        except ModelNotFoundError:
            if not create:
                raise ModelNotFoundError(f"model {name!r} is not registered; register it first") from None
            try:
                with self.resolver.writing():
                    return self.registry.register(name, data, sha256, inputs, outputs, conversion,
                                                  src.preparation, warmup), True
            except ModelExistsError:  # registered meanwhile by another request: add a version to it
                latest = self.registry.resolve(name)
        with self.resolver.writing():
            record, changed = self.registry.update(name, data, sha256, inputs, outputs, conversion, src.preparation,
                                                   warmup)
        if changed:
            self.lifecycle.updated(record, [latest.sha256])
            self.invalidator.model_changed(record.id, [latest.sha256])
        return record, changed

    def delete(self, name: str, version: int | None = None) -> ModelRecord:
        """Delete model ``name`` (name or id), or only ``version``; returns the deleted record. 404 if absent.

        Its cached predictions and loaded sessions are then freed everywhere (``invalidation``); answers are already
        correct the moment this returns, whether or not that cleanup has run.
        """
        check_version(version)
        with self.resolver.writing():
            record, sha256s = self.registry.delete(name, version)
        self.invalidator.model_changed(record.id, sha256s)
        return record

    def get(self, name: str, version: int | None = None) -> ModelRecord:
        """The record of ``name`` (name or id) at ``version`` (default latest). Raises ``ModelNotFoundError``."""
        return self.resolver.resolve(name, check_version(version)).record

    def models(self) -> list[ModelRecord]:
        """The latest version of every registered model, sorted by name."""
        return self.registry.models()

    # -- predict ---------------------------------------------------------------------------------------------------
    def predict(
        self, model: str, input_data: Any, *, use_cache: bool = True, version: int | None = None,
        timeout: float | None = None, cancel: Cancellation | None = None, prepare: FeedRule | None = None,
    ) -> PredictionResult:
        """Run ``model`` (name or id; latest version unless ``version``) on ``input_data``.

        ``input_data``: ``{input name: nested list | numpy array | scalar}``; a single-input model also takes the bare
        value. Batches go along axis 0. A repeated input within ``CACHE_PREDICTION_TTL`` seconds is a cache hit
        (``cached=True``, same ``outputs`` and ``output_data``) unless ``use_cache=False`` or
        ``CACHE_PREDICTION_ENABLED=false``. The result's ``outputs`` are NumPy arrays (``PredictionResult``).
        ``timeout``: seconds the model run may take (0 = no limit; default the ``inference_timeout`` setting); past it
        the run is stopped and ``InferenceTimeoutError`` (504) raised, naming the model and the limit.
        ``cancel``: a ``deadline.Cancellation`` another thread may trigger to stop the run (or keep it from starting):
        ``RequestCancelledError`` (499). Neither a stopped nor a refused run caches anything.
        ``prepare``: the rule that turns ``input_data`` into the feed, given the resolved record (default
        ``tensors.prepare_feed`` on its inputs); a protocol with rules of its own (V2: exact datatypes) passes its own,
        raising ``InvalidInputError`` (400).
        Raises ``ModelNotFoundError`` (404), ``InvalidInputError`` (400, naming input, expected and given dtype/shape),
        ``InferenceError`` (422), ``ServiceUnavailableError`` (503, registry down). A cache outage never raises.
        """
        start = time.perf_counter_ns()  # counted (``metrics``), failures included
        try:
            return self._predict(model, input_data, use_cache, version, timeout, cancel, prepare, start)
        except Exception as err:
            METRICS.failed(None if isinstance(err, ModelNotFoundError) else self.resolver.known(model, version), start,
                           err)
            raise

    def predict_miss(self, miss: ProvenMiss, *, cancel: Cancellation | None = None) -> PredictionResult:
        """Finish a ``predict`` whose lookup an event loop made (``loop_hits``: record proven current, feed
        validated, cache read a miss, or not used: no key): run the model, cache the outputs (under the miss's key,
        if any), count it as ``predict`` does. The default
        ``inference_timeout`` applies. Raises as ``predict`` does from the run on: ``InferenceError`` (422),
        ``InferenceTimeoutError`` (504), ``RequestCancelledError`` (499)."""
        try:
            if cancel is not None:
                cancel.check(miss.record.name)
            return self._execute(miss.record, miss.feed, miss.key, None, miss.start, miss.fed, miss.looked,
                                 self._timeout, cancel)
        except Exception as err:
            METRICS.failed(miss.record, miss.start, err)
            raise

    def _predict(self, model: str, input_data: Any, use_cache: bool, version: int | None, timeout: float | None,
                 cancel: Cancellation | None, prepare: FeedRule | None, start: int) -> PredictionResult:
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
        caching = self.caching(use_cache)
        record, feed, key, hit, fed = self._lookup(model, version, input_data, caching, prepare or default_feed)
        return self._execute(record, feed, key, hit, start, fed, time.perf_counter_ns(), timeout, cancel)

    def _execute(self, record: ModelRecord, feed: dict, key: str | None, hit: dict | None, start: int, fed: int,
                 looked: int, timeout: float, cancel: Cancellation | None) -> PredictionResult:
        """A looked-up predict's answer: the cached ``hit``, else the run (cached at ``key`` unless None)."""
        stats = METRICS.of(record.name, record.version)
        if hit is not None:
            stats.hit(start, fed, looked)
            return self._result(record, feed, hit, start, cached=True)
        run = self._runner(record)
        with stats:  # pending meanwhile
            outputs = run(record.sha256, lambda: self.registry.blob(record.sha256), feed, record.name, timeout, cancel)
            busy = stats.pending > 1  # others of this version in flight: the cache may write behind the answer
        if key is not None:
            self.cache.set(key, pack(outputs), self._prediction_ttl, record.id, busy)
        stats.executed(start, fed, looked, key is not None)
        return self._result(record, feed, outputs, start, cached=False)

    def _lookup(
        self, model: str, version: int | None, input_data: Any, caching: bool, prepare: FeedRule
    ) -> tuple[ModelRecord, dict, str | None, dict | None, int]:
        """Resolve, validate, look up the cache: (record, feed, cache key or None, cached outputs or None: a value
        another version of ModelForge wrote is a miss, ``outputs.unpack``; perf_counter_ns once the feed was ready).

        With a Redis stamp (PostgreSQL + Redis) a known model costs one round trip, the stamp and the cache value
        together (``resolver``); a record the stamp does not prove current is resolved again from the database.
        """
        try:
            return self._read(self.resolver.resolve(model, version, proven=False), input_data, caching, prepare)
        except StaleRecord:  # the registry changed since this process read the record
            return self._read(self.resolver.resolve(model, version), input_data, caching, prepare)

    def _read(self, resolved: Resolved, input_data: Any, caching: bool,
              prepare: FeedRule) -> tuple[ModelRecord, dict, str | None, dict | None, int]:
        record = resolved.record
        try:
            feed = prepare(record, input_data)
        except ModelForgeError:
            if resolved.pending is not None:  # judged by a record not yet proven current: judge again, proven
                raise StaleRecord from None
            raise
        fed = time.perf_counter_ns()
        key = self.cache_key_of(record, feed) if caching else None
        return record, feed, key, unpack(self.resolver.read(resolved, key), [o.name for o in record.outputs]), fed

    def caching(self, use_cache: bool = True) -> bool:
        """Whether a predict asked with ``use_cache`` reads and writes the prediction cache: ``use_cache`` and the
        ``cache_prediction_enabled`` setting (``CACHE_PREDICTION_ENABLED``)."""
        return use_cache and self._caching

    def cache_key(self, model: str, input_data: Any, version: int | None = None) -> str:
        """The cache key a ``predict`` of ``input_data`` reads and writes:
        ``{CACHE_KEY_PREFIX}:prediction:{model_id}:{input_hash}`` (``cache.prediction_key``; the hash covers the
        version's sha256 and the converted inputs). Raises as ``predict`` does before a run (404, 400)."""
        record = self.resolver.resolve(model, check_version(version)).record
        return self.cache_key_of(record, default_feed(record, input_data))

    def clear_cache(self) -> int:
        """Delete every cached prediction under ``CACHE_KEY_PREFIX`` (every model's, in every process sharing the
        cache). Returns how many entries went. Raises ``redis.RedisError`` when Redis does not answer."""
        return self.cache.clear(f"{self._key_prefix}:prediction")

    def cache_key_of(self, record: ModelRecord, feed: dict) -> str:
        """The cache key of ``feed`` (validated arrays) for ``record``'s version: ``cache.prediction_key`` over
        ``tensors.input_hash``; no I/O (the event loop's cache hits use it too, ``loop_hits``)."""
        return prediction_key(self._key_prefix, record.id, input_hash(record.sha256, feed))

    def _result(
        self, record: ModelRecord, feed: dict, outputs: dict, start: int, cached: bool
    ) -> PredictionResult:
        ms = (time.perf_counter_ns() - start) / 1e6
        if log.isEnabledFor(logging.DEBUG):
            rows = next(iter(feed.values())).shape[:1] if feed else ()
            log.debug("predict %s v%d: batch %s, %.3f ms, cached=%s", record.name, record.version,
                      rows[0] if rows else 1, ms, cached)
        return PredictionResult(str(uuid.uuid4()), record.id, record.version, None, ms, cached, record.name,
                                outputs=outputs)

    def _runner(self, record: ModelRecord):
        """``engine.predict``, or a dynamic batcher's ``run`` when batching is on for this model and it can batch."""
        key = (record.name, record.sha256)
        run = self._runners.get(key)
        if run is None:
            run = self._runners[key] = self._make_runner(record)
        return run

    def _make_runner(self, record: ModelRecord):
        enabled, *key = self.settings.batching_for(record.name)  # max_batch_size, max_queue_delay_us, instances
        if not (enabled and batchable(record.inputs, record.outputs)):
            return self.engine.predict
        key = tuple(key)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers.setdefault(key, DynamicBatcher(self.engine, *key))
        return batcher.run

    def registry_generation(self) -> int | None:
        """The registry generation as ``predict`` reads it to prove its in-process metadata current: the
        cross-process consistency check (``resolver``), which the benchmark times on its own line.

        PostgreSQL + Redis: the Redis stamp (one GET, which a cached predict pipelines with its cache GET), or, when
        no stamp is published, the database's; otherwise the database's clock (SQLite ``PRAGMA data_version``,
        PostgreSQL ``SELECT``). Raises ``ServiceUnavailableError`` (503) when the database is down.
        """
        return self.resolver.generation()

    def _registry_changed(self) -> None:
        """Another process changed the registry (the resolver saw a new generation): unload sessions no version
        uses any more, and restart the eviction listener where it is not running (a forked child)."""
        prune_sessions(self.engine, self.registry)
        if self.listener is not None and not self.listener.running:
            self._relisten()

    def _listen(self, s: Settings) -> EvictionListener | None:
        if not s.redis_url:
            return None
        try:
            return EvictionListener(s.redis_url, s.cache_key_prefix, self.engine, self.lifecycle.on_event)
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
        """In a forked child with an eviction listener (whose thread it lacks): forget resolved metadata, so that
        the first lookup asks the registry and restarts the listener."""
        if self.listener is not None:
            self.resolver.forget()

    def close(self) -> None:
        """Release the scoring pool, the database pool, the cache client and the loaded sessions."""
        close_pool(self)
        if self.listener is not None:
            self.listener.close()
        self.lifecycle.close()
        self.invalidator.close()
        self.engine.close()
        self.cache.close()
        self.registry.close()

    def __enter__(self) -> ModelForge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
