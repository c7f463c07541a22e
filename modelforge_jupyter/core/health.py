"""The health report every door answers (``GET modelforge/health``, ``modelforge serve``'s, ``%mf_health``): one rule
for what is connected and what the overall status is (``ModelForge.health`` calls it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .._version import __version__


def service_health(settings: Any, registry: Any, cache: Any) -> dict[str, str]:
    """``{status, database, redis, celery, version, environment, timestamp}`` of a ModelForge's ``settings``,
    ``registry`` and ``cache``, as ``ModelForge.health`` documents it: database ``connected``/``disconnected``; redis
    ``connected``/``disconnected``/``not_configured``; celery ``connected`` (a worker consumes ``celery_queue``),
    ``eager`` or ``disconnected``; status ``unhealthy`` when the database is down, ``degraded`` when Redis or Celery
    is, else ``healthy``; timestamp ISO 8601 UTC. Costs a database and a Redis round trip, each bounded by its deadline; Celery's is the background
    probe's (``broker.celery_probe``)."""
    from .broker import celery_probe

    s = settings
    database = "connected" if registry.ping() else "disconnected"
    redis = ("connected" if cache.ping() else "disconnected") if s.redis_url else "not_configured"
    if s.celery_broker_url:
        celery = celery_probe(s.celery_broker_url, s.celery_probe_ttl, s.broker_timeout, s.celery_queue).status()
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
