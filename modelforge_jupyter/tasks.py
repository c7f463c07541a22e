"""The Celery app's documented import path: ``celery -A modelforge_jupyter.tasks worker -Q modelforge``.

The app and its task live in ``core.tasks``; this module only re-exports them so the worker command stays short.
"""

from .core.tasks import app, invalidate_model  # noqa: F401

__all__ = ["app", "invalidate_model"]
