"""``ModelForgeApp``: the Jupyter server extension that serves the ``ModelForge`` API over HTTP.

Settings, highest precedence first: ``--ModelForgeApp.<setting>=...`` on the command line,
``c.ModelForgeApp.<setting>`` in ``jupyter_server_config.py`` (or ``jupyter_modelforge_jupyter_config.py``), then the
environment variables of the core's table (``settings.SETTINGS``: ``DATABASE_URL``, ``REDIS_URL``, ``CACHE_*``...),
then the defaults. Every setting of the table is a trait of the app (``settings.SettingsTraits``), unset (None) by
default: an unset one keeps the environment's value. The effective settings are exported back into ``os.environ``
(``Settings.environ``) so the kernels this server starts share its registry and prediction cache.

Importing this module must stay cheap: ``jupyter server extension list`` imports it and instantiates the app, so
onnxruntime and SQLAlchemy load only in ``initialize_settings``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from typing import TYPE_CHECKING

from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Int

from ..core.errors import ServiceUnavailableError
from ..core.forge_holder import RETRY_AFTER, ForgeHolder  # noqa: F401  (RETRY_AFTER: tests read it here)
from ..core.settings import ENV_VARS, SETTINGS, Settings, SettingsTraits  # noqa: F401  (ENV_VARS: tests read it here)
from ..core.urls import mask_url
from .handlers import default_handlers
from ..core.pools import ThreadPool

if TYPE_CHECKING:
    from ..core.api import ModelForge
    from ..core.loop_hits import LoopHits



SETTINGS_TRAITS = tuple(s.name for s in SETTINGS)  # the app's traits that are core settings


class ModelForgeApp(ExtensionApp, SettingsTraits):
    """Serve ModelForge under ``<base_url>modelforge/``: health, predict, and model CRUD."""

    name = "modelforge_jupyter"  # == the jpserver_extensions key == the config file jupyter_modelforge_jupyter_config
    description = "ModelForge: ONNX model registry, prediction cache and inference over the Jupyter server's HTTP API."
    load_other_extensions = True

    max_workers = Int(
        4,
        config=True,
        help="Threads of the data plane: the executor that runs predictions (inference, model loading, cache I/O) "
        "off the IOLoop. With intra_op_num_threads=1, the number of predictions that run in parallel.",
    )
    control_workers = Int(
        2,
        config=True,
        help="Threads of the control plane: the executor of model list/get/put/delete/unload, so that model changes "
        "never wait behind long predictions. Health has a thread of its own.",
    )
    shutdown_timeout = Float(
        3.0,
        config=True,
        help="Seconds the server's shutdown waits for running ModelForge calls; calls still stuck after it (e.g. in a "
        "socket) are abandoned with their daemon threads, so SIGTERM stops the server within that time.",
    )
    max_body_size = Int(
        64 * 1024 * 1024,
        config=True,
        help="Largest request body in bytes (a predict request or an uploaded ONNX file); larger ones get 413 "
        "before they are read. Default 64 MiB.",
    )
    max_predict_body_size = Int(
        8 * 1024 * 1024,
        config=True,
        help="Largest predict request body in bytes, decompressed; larger ones get 413 before they are read. JSON "
        "decodes to up to 32x its size in Python objects (measured with orjson: nested empty lists, the worst case; "
        "numbers take 4-10x), so the default 8 MiB bounds a request's decoding to ~256 MiB. Default 8 MiB "
        "(a batch of ~50,000 rows of 10 float32 features).",
    )

    holder: ForgeHolder | None = None  # the ModelForge, built on first use (``core.forge_holder``)
    executor: ThreadPool | None = None  # the data plane (predict)
    control_executor: ThreadPool | None = None  # model list/get/put/delete/unload
    health_executor: ThreadPool | None = None  # health alone: never queued behind anything else

    def app_setting_error(self) -> str | None:
        """What is wrong with this app's own traits (pool sizes >= 1, body limits >= 1, a finite shutdown_timeout >= 0),
        or None. Checked when the extension starts rather than by a traitlets validator: Jupyter only logs an error
        raised while it links an extension, then runs it with none of its configuration (the default registry)."""
        for name in ("max_workers", "control_workers", "max_body_size", "max_predict_body_size"):
            if getattr(self, name) < 1:
                return f"ModelForgeApp.{name} must be >= 1, got {getattr(self, name)}"
        if not math.isfinite(self.shutdown_timeout) or self.shutdown_timeout < 0:
            return f"ModelForgeApp.shutdown_timeout must be a number of seconds >= 0, got {self.shutdown_timeout}"
        return None

    def body_limits(self) -> tuple[int, int]:
        """(max_body_size, max_predict_body_size) in force: a value out of range (the endpoints answer 503 naming it,
        ``app_setting_error``) is replaced by the trait's default meanwhile."""
        traits = self.traits()
        return tuple(  # type: ignore[return-value]
            value if value >= 1 else traits[name].default_value
            for name, value in (("max_body_size", self.max_body_size),
                                ("max_predict_body_size", self.max_predict_body_size))
        )

    def modelforge_settings(self) -> Settings:
        """The effective ``Settings``: the environment's, overridden by every mirrored trait that was configured."""
        return Settings(parent=self, **self.configured_settings())

    def initialize_settings(self) -> None:
        """Export the effective settings to ``os.environ``; build the executor and the ``ModelForge`` (once)."""
        # The core logs model changes (INFO) and predictions (DEBUG) under "modelforge_jupyter.*"; route them to the
        # server's log as jupyter_server does for tornado's loggers. The server's logger lets DEBUG records through to
        # its handlers, which drop them below --log-level: the core's logger takes that level, so a prediction's
        # DEBUG record (~12 µs, py-spy on the server) is only built when it will be shown (--debug).
        core_log = logging.getLogger("modelforge_jupyter")
        core_log.parent = self.log
        core_log.setLevel(self.serverapp.log_level if self.serverapp is not None else logging.INFO)
        self.holder = holder = ForgeHolder("ModelForge is stopped: the Jupyter server is shutting down")
        self._health: asyncio.Future | None = None
        self.executor = ThreadPool(max(self.max_workers, 1), "modelforge")
        self.control_executor = ThreadPool(max(self.control_workers, 1), "modelforge-control")
        self.health_executor = ThreadPool(1, "modelforge-health")
        try:
            problem = self.app_setting_error()
            if problem is not None:
                raise ValueError(problem)
            holder.settings = self.modelforge_settings()
        except ValueError as err:  # a setting out of range: the endpoints say which (503) rather than vanish (404)
            holder.config_error = f"ModelForge is misconfigured: {mask_url(str(err))}"
            self.log.error("%s; its endpoints answer 503 until the server is restarted with it fixed", holder.config_error)
            return
        os.environ.update(holder.settings.environ())  # kernels started from now on inherit them
        from ..core.prometheus import register

        register()  # ModelForge's metrics on Jupyter's own /metrics (prometheus_client's REGISTRY)
        try:
            forge = self.get_forge()
        except ServiceUnavailableError as err:
            if holder.config_error is not None:
                self.log.error("%s; its endpoints answer 503 until the server is restarted with it fixed", err)
            else:
                self.log.error("ModelForge: %s; its endpoints answer 503 until the registry is reachable", err)
            return
        self.health_executor.submit(warm_up, forge)
        s = holder.settings
        cache = f"redis {mask_url(s.redis_url)}" if s.redis_url else f"disk {s.cache_dir}"
        from ..core.database import shown_url

        url = shown_url(forge.registry.url)
        self.log.info("ModelForge: registry %s, cache %s, %d worker threads (+%d control, 1 health)", url, cache,
                      self.max_workers, self.control_workers)

    @property
    def forge(self) -> ModelForge | None:
        """The ``ModelForge`` once built (None before, and after the server stopped)."""
        return self.holder.forge if self.holder is not None else None

    def loop_hits(self) -> LoopHits | None:
        """``ForgeHolder.loop_hits``: proven cache hits answered on the event loop, or None."""
        return self.holder.loop_hits() if self.holder is not None else None

    def get_forge(self) -> ModelForge:
        """The ``ModelForge``, built on first use (``ForgeHolder.get``). Blocking: call it in the executor. Raises
        ``ServiceUnavailableError`` (503) while the registry is unreachable, naming a setting ModelForge cannot use,
        or once the server is stopping."""
        return self.holder.get()

    def pool(self, plane: str) -> ThreadPool:
        """The executor of ``plane``: "data" (predict), "control" (model CRUD, unload) or "health". Raises
        ``ServiceUnavailableError`` once the server is stopping."""
        executor = {"data": self.executor, "control": self.control_executor, "health": self.health_executor}[plane]
        if executor is None:
            raise ServiceUnavailableError("ModelForge is stopped: the Jupyter server is shutting down")
        return executor

    async def health(self) -> dict[str, str]:
        """``ModelForge.health()`` on the health thread; concurrent callers share the check in flight (single
        flight), so pollers never queue checks behind each other."""
        check = self._health
        if check is None or check.done():
            executor = self.pool("health")
            check = self._health = asyncio.get_running_loop().run_in_executor(
                executor, lambda: self.get_forge().health()
            )
        return await asyncio.shield(check)

    def check_ready(self) -> None:
        """Raise ``ServiceUnavailableError`` (503) unless the ModelForge is built and its registry database answers
        a query (naming the setting it cannot use, or the database error). Blocking: call it in the health executor."""
        if not self.get_forge().registry.ping():
            raise ServiceUnavailableError("model registry database unavailable: it does not answer a query")

    def initialize_handlers(self) -> None:
        """Mount the ModelForge routes (``handlers.default_handlers``) under the server's base_url."""
        self.handlers.extend(default_handlers)

    async def stop_extension(self) -> None:
        """Cancel queued calls, wait for running ones at most ``shutdown_timeout`` s (all planes together), then
        close the ModelForge. Idempotent."""
        self.holder.stopped = True
        pools = [p for p in (self.executor, self.control_executor, self.health_executor) if p is not None]
        self.executor = self.control_executor = self.health_executor = None
        for p in pools:
            p.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + (self.shutdown_timeout if self.app_setting_error() is None else 3.0)
        stuck = 0
        for p in pools:
            stuck += await asyncio.to_thread(p.shutdown, timeout=max(0.0, deadline - time.monotonic()))
        if stuck:
            self.log.warning("ModelForge: %d calls still running after %.1f s; not waiting for them", stuck,
                             self.shutdown_timeout)
        await self.holder.close(max(1.0, deadline - time.monotonic()))
        logging.getLogger("modelforge_jupyter").parent = logging.getLogger()


def warm_up(forge: ModelForge) -> None:
    """Start the first Celery probe and build the broker client (~0.5 s of imports) now, not on a request."""
    if forge.settings.celery_broker_url:
        forge.invalidator.celery  # noqa: B018 - the property builds it
    forge.health()
