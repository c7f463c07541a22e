"""The Jupyter server extension: ModelForge's HTTP API under ``<base_url>modelforge/`` (``app``, ``handlers``)."""

from .app import ModelForgeApp

__all__ = ["ModelForgeApp"]
