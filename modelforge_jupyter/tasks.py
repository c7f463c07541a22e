"""Celery: the app (broker from ``CELERY_BROKER_URL``; unset means eager, in-process) and its health check.

Worker: ``celery -A modelforge_jupyter.tasks worker``. JSON serialization only, never pickle.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("modelforge_jupyter")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL") or "memory://",
    task_always_eager=not os.environ.get("CELERY_BROKER_URL"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    broker_connection_retry_on_startup=False,
)


def celery_status(broker_url: str, timeout: float = 0.5) -> str:
    """``eager`` without a broker; ``connected`` when a worker answers a ping within ``timeout`` s; else
    ``disconnected`` (broker unreachable, or no worker)."""
    if not broker_url:
        return "eager"
    probe = Celery("modelforge_jupyter_health", broker=broker_url)
    probe.conf.update(broker_connection_timeout=timeout, broker_connection_retry=False, broker_connection_max_retries=0)
    try:
        replies = probe.control.ping(timeout=timeout)
    except Exception:  # kombu raises OperationalError, OSError or a transport-specific error
        return "disconnected"
    finally:
        probe.close()
    return "connected" if replies else "disconnected"
