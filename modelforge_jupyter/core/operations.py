"""What ``ModelForge`` does beside registering and predicting: its sessions (``unload``, ``load``, a plain
``raw_session`` to compare with), the registered bytes, its health, its statistics and its dynamic batchers. A mixin
of ``ModelForge`` (``api``), on the parts its constructor builds (``registry``, ``cache``, ``engine``, ``resolver``,
``lifecycle``, ``settings``)."""

from __future__ import annotations

from typing import Any

from .batching import DynamicBatcher
from .engine import raw_session
from .health import service_health
from .metrics import statistics
from .protocol import check_version
from .records import ModelRecord


class Operations:
    """``ModelForge``'s session, health and statistics operations (module docstring)."""

    @property
    def backend(self) -> str:
        """Where the registry and the cache live, e.g. ``registry postgresql, cache redis`` (no URL, no path)."""
        return f"registry {self.registry.dialect}, cache {self.cache.backend}"

    def model_bytes(self, name: str, version: int | None = None) -> bytes:
        """The ONNX bytes registered as ``name`` (name or id) at ``version`` (default latest). Raises 404 as ``get``."""
        return self.registry.blob(self.get(name, version).sha256)

    def raw_session(self, model: str | bytes, version: int | None = None, *, engine_options: bool = True) -> Any:
        """A new plain ``onnxruntime.InferenceSession`` of a registered model (name or id) or of ONNX bytes, with
        the engine's ``SessionOptions`` and execution providers (``engine_options=False``: ONNX Runtime's default
        options, the engine's providers): the baseline the benchmark compares predictions against. Not cached."""
        data = model if isinstance(model, bytes) else self.model_bytes(model, version)
        return raw_session(data, self.engine.session_options() if engine_options else None, self.engine.providers)

    def unload(self, name: str, version: int | None = None) -> bool:
        """Drop the loaded session of ``name`` from this process's engine (next predict is a cold start)."""
        return self.engine.unload(self.resolver.resolve(name, check_version(version)).record.sha256)

    def load(self, name: str, version: int | None = None) -> ModelRecord:
        """Reload the session of ``name`` (name or id; latest version unless ``version``) in every process sharing the
        registry: built anew and warmed here while the loaded one keeps serving, then swapped in; the processes that
        have it loaded do the same on the change event (Redis; without it, this process only). Returns the record.
        Raises ``ModelNotFoundError`` (404), and as a warm-up does (``register``: 400, 503; the old session stays)."""
        record = self.resolver.resolve(name, check_version(version)).record
        self.lifecycle.reload(record)
        return record

    def health(self) -> dict[str, str]:
        """``{status, database, redis, celery, version, environment, timestamp}`` as the documented /health.

        database ``connected``/``disconnected``; redis ``connected``/``disconnected``/``not_configured`` (embedded
        cache); celery ``connected``/``eager``/``disconnected``. status ``unhealthy`` when the database is down,
        ``degraded`` when Redis or Celery is, else ``healthy``. timestamp: ISO 8601 UTC. Costs a database and a
        Redis round trip, each bounded by its deadline; Celery's status is the background probe's
        (``health.service_health``)."""
        return service_health(self.settings, self.registry, self.cache)

    def statistics(self, model: str | None = None, version: int | None = None) -> dict[str, Any]:
        """Triton's statistics JSON of this process's predictions, ``{"model_stats": [...]}`` (``metrics.statistics``:
        every model counted, or ``model``'s versions, or one ``version``). Raises ``ModelNotFoundError`` (404)."""
        return statistics(self, model, check_version(version))

    @property
    def batchers(self) -> tuple[DynamicBatcher, ...]:
        """The dynamic batchers serving this process's batched models (none until a batched model's first predict;
        one per distinct ``(max_batch_size, max_queue_delay_us, instances)``), each with its counters since it
        started: ``requests``, ``batches`` (runs made), ``waits`` (times a leader waited for more requests) and
        ``peak_running`` (most batches run at once), beside those three settings (the delay in µs)."""
        return tuple(self._batchers.values())
