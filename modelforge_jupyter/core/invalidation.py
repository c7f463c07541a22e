"""After a model update or delete: drop its cached predictions and free its sessions in every process.

This is housekeeping, not what keeps answers correct. Correctness comes from the registry's generation check
(``resolver``: every predict learns of a committed change before it answers) and from content addressing
(cache keys hash the version's sha256; sessions are keyed by sha256), so a stale answer cannot be served even when the
Celery worker is stopped or the broker is down. The task only frees memory and keys sooner than their TTL would.

Flow: ``ModelForge.update``/``delete`` commit, then ``Invalidator.model_changed``:
1. this process's engine unloads the superseded sessions at once;
2. the ``modelforge_jupyter.tasks.invalidate_model`` task is sent to the broker (``CELERY_BROKER_URL``); without a
   broker, or when sending fails (broker down or silent: each send is bounded by ``broker_timeout``), the same
   cleanup runs inline, and the sends after a failure skip the broker for ``cache_retry_after`` s (a circuit
   breaker), so a dead broker costs a model change no broker call at all;
3. the task deletes the model's keys (Redis: SCAN + UNLINK in batches; disk cache: evict by tag) and publishes an
   eviction event on the Redis channel ``{CACHE_KEY_PREFIX}:events``; every process's ``EvictionListener`` unloads
   those sessions from its engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .cache import Breaker
from .forksafe import at_fork_in_child, park
from .urls import mask_url

log = logging.getLogger(__name__)

TASK_NAME = "modelforge_jupyter.tasks.invalidate_model"


def events_channel(prefix: str) -> str:
    """The Redis pub/sub channel eviction events go to: ``{prefix}:events``."""
    return f"{prefix}:events"


def cleanup(cache: Any, prefix: str, model_id: str, sha256s: Iterable[str], publisher: Any = None) -> int:
    """Delete ``model_id``'s cached predictions and publish an eviction event for ``sha256s``; return keys removed.

    Idempotent. ``publisher``: a redis client to publish with (the Redis cache's own client when None and the cache
    is Redis; no event with the disk cache, whose processes prune sessions on the registry generation change).
    """
    removed = cache.invalidate(prefix, model_id)
    client = publisher if publisher is not None else getattr(cache, "client", None)
    if client is not None:
        event = orjson.dumps({"model_id": model_id, "sha256s": sorted(set(sha256s))})
        client.publish(events_channel(prefix), event)
    log.info("invalidated model %s: %d cached predictions removed", model_id, removed)
    return removed


def prune_sessions(engine: Any, registry: Any) -> None:
    """Unload the sessions whose bytes no registered version uses any more (after another process changed the
    registry: its eviction event may not reach this process, e.g. without Redis). Costs one registry query."""
    loaded = engine.loaded()
    for sha in set(loaded) - registry.referenced(loaded):
        engine.unload(sha)


class Invalidator:
    """Sends the invalidation task after each registry change, or runs the cleanup inline (eager / broker down)."""

    def __init__(self, settings: Any, cache: Any, engine: Any) -> None:
        self.settings = settings
        self.cache = cache
        self.engine = engine
        self._celery: Any = None
        at_fork_in_child(self._after_fork_in_child)
        self.breaker = Breaker("celery broker", settings.cache_retry_after, "cleaning up model changes inline")

    def model_changed(self, model_id: str, sha256s: Iterable[str]) -> str:
        """Free ``sha256s`` here, then clean up everywhere. Returns ``"sent"``, ``"inline"`` or ``"failed"``."""
        shas = sorted(set(sha256s))
        for sha in shas:
            self.engine.unload(sha)
        if self.settings.celery_broker_url and self._send(model_id, shas):
            return "sent"
        try:
            cleanup(self.cache, self.settings.cache_key_prefix, model_id, shas)
            return "inline"
        except Exception as err:  # the cache is down too: TTLs expire the keys; answers stay correct regardless
            log.warning("cleanup of model %s failed (%s); cached entries expire with their TTL", model_id,
                        mask_url(str(err)))
            return "failed"

    def announce(self, event: dict) -> bool:
        """Publish a change event (``lifecycle``: a version to load, a session to reload) on the events channel, on
        the Redis cache's client; False without a Redis cache or when Redis does not answer (logged: other
        processes then load the version on their first request)."""
        client = getattr(self.cache, "client", None)
        if client is None:
            return False
        try:
            client.publish(events_channel(self.settings.cache_key_prefix), orjson.dumps(event))
            return True
        except Exception as err:  # redis.RedisError, OSError: the event is an optimisation, answers stay correct
            log.warning("change event for model %s not published (%s)", event.get("model_id"), mask_url(str(err)))
            return False

    def _send(self, model_id: str, shas: list[str]) -> bool:
        """Send the task within ``broker_timeout`` s; False (clean up inline) when it failed now or within the last
        ``cache_retry_after`` s."""
        if self.breaker.open():
            return False
        try:
            self.celery.send_task(
                TASK_NAME,
                args=[model_id, self.settings.cache_key_prefix, shas],
                queue=self.settings.celery_queue,
                retry=False,
            )
        except Exception as err:  # kombu OperationalError / OSError / socket timeout: broker unreachable or silent
            self.breaker.failed(err)
            return False
        self.breaker.succeeded()
        return True

    @property
    def celery(self) -> Any:
        """The Celery app that sends ``invalidate_model`` (``broker.make_app``), built on first use."""
        if self._celery is None:
            from .broker import make_app

            self._celery = make_app(self.settings.celery_broker_url, self.settings.broker_timeout,
                                    self.settings.celery_queue)
        return self._celery

    def close(self) -> None:
        """Close the Celery app's broker connections, if one was built."""
        if self._celery is not None:
            self._celery.close()

    def _after_fork_in_child(self) -> None:
        """In a forked child: drop the Celery app, whose broker connections are the parent's (Celery resets them
        only in ``multiprocessing`` children, not after a raw ``os.fork``); the next send builds a new one."""
        park(self._celery)
        self._celery = None


class EvictionListener:
    """Background thread: unload the sessions named by eviction events on ``{prefix}:events`` (Redis pub/sub), then
    hand each event to ``on_event`` (the lifecycle's loads and reloads).

    In a forked child the thread does not exist and the subscribed socket is the parent's (reading it would take
    the parent's events): both are dropped at the fork, and ``restart`` (which ``ModelForge`` calls on the child's
    first registry lookup) subscribes anew.
    """

    def __init__(self, redis_url: str, prefix: str, engine: Any,
                 on_event: Callable[[dict, set[str]], None] | None = None) -> None:
        self.engine = engine
        self.on_event = on_event  # (event, sha256s loaded before its unloads): ``Lifecycle.on_event``
        self.redis_url = redis_url
        self.channel = events_channel(prefix)
        self.events = 0
        self.thread: Any = None
        self.closed = False
        self._lock = threading.Lock()
        self.restart()
        at_fork_in_child(self._after_fork_in_child)

    @property
    def running(self) -> bool:
        """False in a forked child until ``restart``."""
        return self.thread is not None

    def restart(self) -> None:
        """Subscribe and start the listening thread, unless it runs. Raises ``redis.RedisError`` if Redis is down."""
        import redis

        with self._lock:
            if self.thread is not None or self.closed:
                return
            client = redis.Redis.from_url(  # hard deadlines: a Redis that accepts and never answers costs 1 s
                self.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0, health_check_interval=10
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(**{self.channel: self._on_event})
            except BaseException:
                pubsub.close()
                client.close()
                raise
            self.client, self.pubsub = client, pubsub
            self.thread = pubsub.run_in_thread(sleep_time=0.5, daemon=True, exception_handler=self._on_error)

    def _after_fork_in_child(self) -> None:
        park(self.thread, self.pubsub, self.client)  # never read nor closed here: the socket is the parent's
        self.thread = self.pubsub = self.client = None
        self._lock = threading.Lock()

    def _on_event(self, message: dict) -> None:
        try:
            event = orjson.loads(message["data"])
            loaded_before = set(self.engine.loaded())
            for sha in event.get("sha256s", []):
                self.engine.unload(sha)
            self.events += 1
            if self.on_event is not None:
                self.on_event(event, loaded_before)
        except (orjson.JSONDecodeError, TypeError, AttributeError) as err:
            log.warning("ignoring a malformed eviction event: %s", err)

    def _on_error(self, err: BaseException, pubsub: Any, thread: Any) -> None:
        log.warning("eviction listener lost Redis (%s); resubscribing", mask_url(str(err)))
        threading.Event().wait(1.0)  # back off; run_in_thread calls get_message again, which reconnects

    def close(self) -> None:
        """Stop the listening thread (waits up to 2 s) and close its Redis connection; no restart after this."""
        self.closed = True
        if self.thread is None:
            return
        self.thread.stop()
        self.thread.join(timeout=2)
        self.pubsub.close()
        self.client.close()
        self.thread = None
