"""Celery: the app, the ``invalidate_model`` task and the health check.

Worker: ``celery -A modelforge_jupyter.tasks worker -Q modelforge`` with the same environment as the server
(``CELERY_BROKER_URL`` — Redis or RabbitMQ —, ``REDIS_URL``...). JSON serialization only, never pickle. Without
``CELERY_BROKER_URL`` nothing is sent: the cleanup runs eagerly in the process that changed the model.
"""

from __future__ import annotations

import os

import redis
from celery import Celery


def make_app(broker_url: str) -> Celery:
    """A Celery app on ``broker_url`` (empty: in-memory transport, eager) with ModelForge's settings."""
    app = Celery("modelforge_jupyter", broker=broker_url or "memory://", set_as_current=False)
    app.conf.update(
        task_always_eager=not broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_default_queue=os.environ.get("MODELFORGE_CELERY_QUEUE") or "modelforge",
        broker_connection_timeout=2.0,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app(os.environ.get("CELERY_BROKER_URL", ""))


@app.task(
    name="modelforge_jupyter.tasks.invalidate_model",
    acks_late=True,
    autoretry_for=(redis.RedisError, OSError),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=8,
)
def invalidate_model(model_id: str, key_prefix: str, sha256s: list[str]) -> int:
    """Delete ``model_id``'s cached predictions under ``key_prefix`` and publish an eviction event for ``sha256s``.

    Idempotent; retried with exponential backoff (up to 30 s apart, 8 times) while Redis is away. Returns the number
    of keys removed.
    """
    from .cache import open_cache
    from .invalidation import cleanup
    from .settings import Settings

    settings = Settings(cache_key_prefix=key_prefix)
    cache = open_cache(settings)
    try:
        return cleanup(cache, key_prefix, model_id, sha256s)
    finally:
        cache.close()


def celery_status(broker_url: str, timeout: float = 0.5) -> str:
    """``eager`` without a broker; ``connected`` when a worker answers a ping within ``timeout`` s; else
    ``disconnected`` (broker unreachable, or no worker)."""
    if not broker_url:
        return "eager"
    probe = make_app(broker_url)
    probe.conf.update(broker_connection_timeout=timeout, broker_connection_retry=False, broker_connection_max_retries=0)
    try:
        replies = probe.control.ping(timeout=timeout)
    except Exception:  # kombu raises OperationalError, OSError or a transport-specific error
        return "disconnected"
    finally:
        probe.close()
    return "connected" if replies else "disconnected"
