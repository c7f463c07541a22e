"""Root conftest: loads the project's one fixture plugin, ``tests/mf_plugin`` (its fixtures and helpers: ``mf_``)."""

pytest_plugins = ["tests.mf_plugin"]
