"""Run ``notebooks/*.ipynb`` under nbval (``--nbval-lax`` in addopts) against a real Jupyter server.

nbval's cells are not pytest Functions, so no fixture runs for them. Instead, right before the first notebook cell
(so ``pytest tests/test_api.py`` starts nothing), this plugin:

- makes the backend: the embedded one (SQLite registry + disk cache) in a temporary directory, or, when
  ``MF_NOTEBOOK_BACKEND=services`` or under CI (``CI`` set), a fresh PostgreSQL database (from
  ``MF_TEST_POSTGRES_URL``) and a fresh Redis key prefix (on ``MF_TEST_REDIS_URL``);
- starts ``jupyter server`` (ModelForge enabled by its installed config) with a token on that backend;
- exports ``MODELFORGE_URL``, ``MODELFORGE_TOKEN``, ``DATABASE_URL``, ``REDIS_URL``, ``CACHE_KEY_PREFIX``,
  ``MODELFORGE_DATA_DIR``, ``MODELFORGE_CACHE_DIR`` (and an empty ``CELERY_BROKER_URL``) into ``os.environ``: the
  notebook kernels nbval starts inherit them, so kernel and server share one registry and one prediction cache.

Run outside a Jupyter server (``jupyter nbconvert --execute``, which ``tests/test_readme.py`` runs as the README
shows), the notebooks start a server of their own for their HTTP cells; here they find this plugin's through
``MODELFORGE_URL``, and the quickstart's checked output (``... (env MODELFORGE_URL)>``) fails the run if they did not.

After the last notebook cell of a run of them (and in ``pytest_unconfigure`` at the latest) the plugin stops the
server, drops the database, deletes the Redis keys, restores the environment and removes the directory, so tests
collected after the notebooks see the environment they would have seen without them. When the services are missing
the notebook cells fail (never skip): the notebooks are how the published tables are checked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from .jupyter import LiveServer, mf_isolated_env, mf_start_server
from .services import REDIS_URL, mf_create_database, mf_delete_keys, mf_drop_database, mf_embedded

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SANITIZE = NOTEBOOKS / "nbval_sanitize.cfg"
EXPORTED = ("MODELFORGE_URL", "MODELFORGE_TOKEN", "DATABASE_URL", "REDIS_URL", "CACHE_KEY_PREFIX",
            "MODELFORGE_DATA_DIR", "MODELFORGE_CACHE_DIR", "CELERY_BROKER_URL")


def notebook_backend() -> str:
    """``services`` (PostgreSQL + Redis) when ``MF_NOTEBOOK_BACKEND=services`` or under CI, else ``embedded``."""
    chosen = os.environ.get("MF_NOTEBOOK_BACKEND") or ("services" if os.environ.get("CI") else "embedded")
    if chosen not in ("embedded", "services"):
        raise pytest.UsageError(f"MF_NOTEBOOK_BACKEND={chosen!r}: use embedded or services")
    return chosen


class NotebookServices:
    """The backend and the Jupyter server the notebooks run against, started once on demand."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.root: Path | None = None
        self.server: LiveServer | None = None
        self.database: str | None = None  # PostgreSQL database to drop
        self.redis = False  # keys under the prefix to delete
        self.prefix = f"mfnb-{uuid.uuid4().hex[:12]}"
        self.saved_env: dict[str, str | None] | None = None
        self.error: str | None = None

    def ensure(self) -> None:
        """Start everything on first call; fail every later cell with the same message if that failed."""
        if self.error is not None:
            pytest.fail(self.error, pytrace=False)
        if self.server is not None:
            return
        try:
            self.root = Path(tempfile.mkdtemp(prefix="mf-notebooks-"))
            settings = self._backend_settings()
            self.server = mf_start_server(self.root / "server", mf_isolated_env(self.root / "jupyter", **settings),
                                          base_url="/mf-notebooks/")
        except Exception as err:
            self.error = f"notebook services ({self.backend} backend) did not start: {type(err).__name__}: {err}"
            self.stop()
            pytest.fail(self.error, pytrace=False)
        self.saved_env = {var: os.environ.get(var) for var in EXPORTED}
        os.environ.update(settings, MODELFORGE_URL=self.server.url, MODELFORGE_TOKEN=self.server.token)

    def _backend_settings(self) -> dict[str, str]:
        data = self.root / "modelforge"
        settings = {"MODELFORGE_DATA_DIR": str(data), "MODELFORGE_CACHE_DIR": str(data / "cache"),
                    "CACHE_KEY_PREFIX": self.prefix, "CELERY_BROKER_URL": ""}
        if self.backend == "embedded":
            return settings | {"DATABASE_URL": mf_embedded(data)["database_url"], "REDIS_URL": ""}
        import redis

        with redis.Redis.from_url(REDIS_URL) as client:
            client.ping()
        self.redis = True
        self.database, url = mf_create_database("mf_nb")
        return settings | {"DATABASE_URL": url, "REDIS_URL": REDIS_URL}

    def stop(self) -> None:
        """Stop the server, drop the database, delete the keys, restore the environment, remove the directory."""
        if self.server is not None:
            self.server.stop()
        if self.saved_env is not None:
            for var, value in self.saved_env.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
        if self.database is not None:
            mf_drop_database(self.database)
        if self.redis:
            import redis

            with redis.Redis.from_url(REDIS_URL) as client:
                mf_delete_keys(client, self.prefix)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.server = self.database = self.saved_env = self.root = None
        self.redis = False


_SERVICES = pytest.StashKey[NotebookServices]()


def is_notebook_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell" and type(item).__module__.startswith("nbval")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SERVICES] = NotebookServices(notebook_backend())
    option = config.option
    if getattr(option, "nbval_sanitize_with", "unset") is None and SANITIZE.is_file():
        option.nbval_sanitize_with = str(SANITIZE)  # uuids in checked outputs; absolute, so any cwd works


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before nbval sets up a notebook (and starts its kernel): services up and their settings in os.environ."""
    if is_notebook_cell(item):
        item.config.stash[_SERVICES].ensure()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last cell of a run of notebook cells (nbval has shut their kernel down by now): stop everything."""
    if is_notebook_cell(item) and (nextitem is None or not is_notebook_cell(nextitem)):
        item.config.stash[_SERVICES].stop()


def pytest_report_header(config: pytest.Config) -> str | None:
    if getattr(config.option, "nbval_lax", False) or getattr(config.option, "nbval", False):
        backend = config.stash[_SERVICES].backend
        return f"notebooks (when collected): nbval, a jupyter server, the {backend} backend (MF_NOTEBOOK_BACKEND)"
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    services = config.stash.get(_SERVICES, None)
    if services is not None:
        services.stop()
