"""The documented ``/health`` report of one ``ModelForge``: which of its services answer, and what that makes it.

Every door answers its health from here (``ModelForge.health``): the Jupyter server's ``modelforge/health``,
``modelforge serve``'s, the CLI's ``health``. It costs a database and a Redis round trip, each bounded by its deadline
(``database_timeout``, ``redis_timeout``); Celery's status is the background probe's (``broker.celery_probe``), so a
health call never waits for the broker (but the process's first, at most ``broker_timeout`` s).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .._version import __version__


def report(settings: Any, registry: Any, cache: Any) -> dict[str, str]:
    """``{status, database, redis, celery, version, environment, timestamp}``.

    database ``connected``/``disconnected``; redis ``connected``/``disconnected``/``not_configured`` (embedded
    cache); celery ``connected``/``eager``/``disconnected``. status ``unhealthy`` when the database is down,
    ``degraded`` when Redis or Celery is, else ``healthy``. timestamp: ISO 8601 UTC. Celery's status is at most
    ``celery_probe_ttl`` s old.
    """
    from .broker import celery_probe  # Celery is imported only when a health check first needs it

    s = settings
    database = "connected" if registry.ping() else "disconnected"
    redis = ("connected" if cache.ping() else "disconnected") if s.redis_url else "not_configured"
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
