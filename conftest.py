"""Root conftest: loads the project's fixture plugin (fixtures are prefixed ``mf_``)."""

pytest_plugins = ["tests.mf_plugin", "pytest_jupyter.jupyter_server"]
