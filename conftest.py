"""Root conftest: loads the project's fixture plugin (fixtures are prefixed ``mf_``)."""

pytest_plugins = ["tests.mf_plugin", "tests.mf_server", "tests.mf_notebooks", "pytest_jupyter.jupyter_server"]
