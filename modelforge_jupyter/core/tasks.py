"""Celery: the worker's app and the ``invalidate_model`` task.

Worker: ``celery -A modelforge_jupyter.tasks worker -Q modelforge`` with the same environment as the server
(``CELERY_BROKER_URL`` — Redis or RabbitMQ —, ``REDIS_URL``...). JSON serialization only, never pickle. Without
``CELERY_BROKER_URL`` nothing is sent: the cleanup runs eagerly in the process that changed the model. How clients
reach the broker (configuration, deadlines, the health probe) is ``broker``'s.
"""

from __future__ import annotations

from .broker import celery_probe, celery_status, make_app
from .cache import redis_errors
from .settings import from_environment

__all__ = ["app", "celery_probe", "celery_status", "invalidate_model", "make_app"]

app = make_app(from_environment("celery_broker_url"), queue=from_environment("celery_queue"))


@app.task(
    name="modelforge_jupyter.tasks.invalidate_model",
    acks_late=True,
    autoretry_for=redis_errors(),
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


