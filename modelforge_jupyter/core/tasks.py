"""Celery: the worker's app and the ``invalidate_model`` task.

Worker: ``celery -A modelforge_jupyter.tasks worker -Q modelforge`` with the same environment as the server
(``CELERY_BROKER_URL`` — Redis or RabbitMQ —, ``REDIS_URL``...). JSON serialization only, never pickle. Without
``CELERY_BROKER_URL`` nothing is sent: the cleanup runs eagerly in the process that changed the model. How clients
reach the broker (configuration, deadlines, the health probe) is ``broker``'s.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init

from .broker import celery_probe, celery_status, make_app
from .cache import redis_errors
from .settings import from_environment

__all__ = ["app", "celery_probe", "celery_status", "invalidate_model", "make_app", "score_chunk"]

app = make_app(from_environment("celery_broker_url"), queue=from_environment("celery_queue"))


# Every task: acknowledged once done (a lost worker's task is redelivered), retried with exponential backoff (up to
# 30 s apart, 8 times) while Redis is away; each is idempotent
RETRIED = {"acks_late": True, "autoretry_for": redis_errors(), "retry_backoff": True, "retry_backoff_max": 30,
           "max_retries": 8}


@app.task(name="modelforge_jupyter.tasks.invalidate_model", **RETRIED)
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


_forges: dict[str, Any] = {}  # this worker process's ModelForge per key prefix, built on its first chunk


@app.task(name="modelforge_jupyter.tasks.score_chunk", **RETRIED)
def score_chunk(spec: dict, chunk: dict, where: dict) -> int:
    """Score one chunk of a batch-scoring job (``score_celery.run_chunk``) with this worker's ModelForge (its
    environment's settings, one intra-op thread per session as a server's; ``where``: the job's state, in Redis
    under a key prefix, ``{"redis": prefix, "job": id}``, or in its output directory, ``{"dir": path, "job": id}``).

    Idempotent (a finished chunk is not scored again); retried with exponential backoff (up to 30 s apart, 8 times)
    while Redis is away. Returns the rows scored.
    """
    from .score_celery import run_chunk

    prefix = where.get("redis") if isinstance(where, dict) else where
    return run_chunk(_forge(prefix or from_environment("cache_key_prefix")), spec, chunk, where)


def _forge(key_prefix: str) -> Any:
    forge = _forges.get(key_prefix)
    if forge is None:
        from .api import ModelForge

        forge = _forges[key_prefix] = ModelForge(serving=True, cache_key_prefix=key_prefix)
    return forge


@worker_init.connect
def _import_before_fork(**_: Any) -> None:
    """In the worker's main process, before it forks its pool: import ModelForge (and ONNX Runtime, SQLAlchemy...)
    and pyarrow's Parquet reader once, so that no pool process pays ~1-3 s importing them on its first chunk. (Its
    ModelForge is built on its first chunk, not at ``worker_process_init``, whose handlers Celery kills past 4 s.)"""
    import pyarrow.parquet  # noqa: F401

    from . import api, score_celery  # noqa: F401

