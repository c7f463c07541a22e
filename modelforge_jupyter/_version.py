"""The package version, in one place (hatch reads it from here: ``[tool.hatch.version]`` in pyproject.toml)."""

__version__ = "0.1.0"
