"""``modelforge_jupyter.settings.Settings``: the settings class at the path earlier READMEs gave; it lives in
``core.settings`` (also ``from modelforge_jupyter import Settings``)."""

from .core.settings import SETTINGS, Settings  # noqa: F401

__all__ = ["SETTINGS", "Settings"]
