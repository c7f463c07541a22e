"""A server's ``ModelForge``: built on first use, retried while its registry is unreachable, closed at shutdown.

Both HTTP doors (the Jupyter server extension and ``modelforge serve``) hold their ModelForge this way, so a server
started before its database comes up answers 503 meanwhile and heals by itself, a setting ModelForge cannot use is a
503 naming it on every call, and a stopping server refuses new calls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

from .errors import ServiceUnavailableError
from .urls import mask_url

if TYPE_CHECKING:
    from .api import ModelForge
    from .loop_hits import LoopHits
    from .settings import Settings

RETRY_AFTER = 2.0  # seconds between attempts to build the ModelForge while its registry database is unreachable


class ForgeHolder:
    """The ModelForge of one server process. ``settings``: what to build it with (set before the first ``get``);
    ``config_error``: a misconfiguration every ``get`` answers with (503); ``forge``: the ModelForge once built."""

    def __init__(self, stopped_message: str, retry_after: float = RETRY_AFTER) -> None:
        self.settings: Settings | None = None
        self.forge: ModelForge | None = None
        self.config_error: str | None = None
        self.stopped = False
        self._stopped_message = stopped_message
        self._retry_after = retry_after
        self._error: tuple[float, str] | None = None  # (when to try again, why the last attempt failed)
        self._lock = threading.Lock()
        self._loop_hits: LoopHits | bool | None = None  # of the built ModelForge; False: its hits need a thread

    def loop_hits(self) -> LoopHits | None:
        """The ``loop_hits.LoopHits`` of the built ModelForge when its cache hits can be proven without blocking
        (PostgreSQL + Redis, cache on), else None (not built yet, or hits that stay in the executor)."""
        forge = self.forge
        if forge is None:
            return None
        hits = self._loop_hits
        if hits is None or (hits and hits.forge is not forge):
            from .loop_hits import LoopHits

            hits = self._loop_hits = LoopHits(forge) if LoopHits.usable(forge) else False
        return hits or None

    def get(self) -> ModelForge:
        """The ModelForge, built on first use. Blocking: call it on a thread.

        Raises ``ServiceUnavailableError`` (503): while the registry database is unreachable (trying again at most
        every ``retry_after`` s), once stopped, or naming the setting when ModelForge cannot use one (a bad
        ``DATABASE_URL``: its ``ValueError``, URL secrets masked), every time after that.
        """
        forge = self.forge
        if forge is not None:
            return forge
        from .api import ModelForge

        with self._lock:
            if self.stopped:
                raise ServiceUnavailableError(self._stopped_message)
            if self.config_error is not None:
                raise ServiceUnavailableError(self.config_error)
            if self.forge is None:
                if self._error is not None and time.monotonic() < self._error[0]:
                    raise ServiceUnavailableError(self._error[1])
                try:
                    self.forge = ModelForge(self.settings, serving=True)
                except ServiceUnavailableError as err:
                    self._error = (time.monotonic() + self._retry_after, str(err))
                    raise
                except ValueError as err:  # a setting ModelForge cannot use: it will not heal by waiting
                    self.config_error = f"ModelForge is misconfigured: {mask_url(str(err))}"
                    raise ServiceUnavailableError(self.config_error) from None
            return self.forge

    async def close(self, wait: float) -> None:
        """Refuse later ``get`` calls and close the ModelForge, waiting at most ``wait`` s: on a daemon thread, since
        a call stuck in a socket may hold a lock ``close()`` takes. Idempotent."""
        self.stopped = True
        hits, self._loop_hits = self._loop_hits, None
        if hits:
            try:
                await asyncio.wait_for(hits.close(), wait)
            except Exception:  # noqa: BLE001 - a Redis that does not answer at shutdown: its sockets go with us
                pass
        forge, self.forge = self.forge, None
        if forge is not None:
            closer = threading.Thread(target=forge.close, name="modelforge-close", daemon=True)
            closer.start()
            await asyncio.to_thread(closer.join, wait)
