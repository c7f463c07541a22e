"""The Celery app's documented import path: ``celery -A modelforge_jupyter.tasks worker -Q modelforge``.

The app and its task live in ``core.tasks``; this module only re-exports them (with the broker helpers this path
has always offered) so the worker command stays short.
"""

from .core.tasks import app, celery_probe, celery_status, invalidate_model, make_app, score_chunk  # noqa: F401

__all__ = ["app", "celery_probe", "celery_status", "invalidate_model", "make_app", "score_chunk"]
