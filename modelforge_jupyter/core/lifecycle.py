"""A model version's life in the processes that serve it: warm-up before it becomes current, loading an updated
version wherever the model is served, and the forced reload.

- **Warm-up before ready** (``Lifecycle.warm_up``): the process that registers or updates a model loads the new
  version (``prepare.read_prepared``) and runs it once before the registry commits it, so no request without a
  ``version`` ever gets a version that was not run. The run's input is the version's sample (the ``sample=`` given
  to ``register`` / ``update``: a fitted object's conversion rows, or an ONNX model's input), at most
  ``WARMUP_ROWS`` rows and ``WARMUP_MAX_BYTES`` bytes of it stored with the version (``conversion`` column, key
  ``warmup``) for the other processes' warm-ups; else the latest version's stored sample when it fits the new inputs
  (an update over HTTP, whose body is the model only, keeps the values the model was registered with); else an input
  generated from the declared inputs
  (``batches.sample_feed``: batch 1, every other symbolic dimension 1, floats uniform in [0, 5), integers and bools
  0 or 1, strings 'a' / 'b'). A run that fails refuses the version: ``InvalidModelError`` (400) naming the failure;
  one refused for lack of memory (a 413 of the engine's limits) ``ServiceUnavailableError`` (503). Either way nothing
  is written and the old version keeps serving. While a name is being warmed here, V2 model-ready answers "not
  ready" for it (``warming``) instead of 404.
- **Change events** (Redis pub/sub on ``{CACHE_KEY_PREFIX}:events``, ``invalidation``): after an update commits,
  the updater publishes ``{"model_id", "sha256s": [superseded], "load": {"version", "sha256"}, "origin"}``; every
  other process that had a superseded session loaded unloads it and loads the new version at once (one background
  thread per process), then warms it. A request arriving meanwhile resolves the new version (the registry
  generation, ``resolver``) and waits for that same load (the engine's single flight), never a cold load of its
  own. Without Redis there is no event: the first request after the change loads it, single flight as ever.
- **Forced reload** (``Lifecycle.reload``, ``ModelForge.load``): a new session of the version is built and warmed
  while the loaded one keeps serving, then takes its place (``SessionLRU.reload``); ``{"model_id", "reload":
  {"version", "sha256"}, "origin"}`` makes every other process that has it loaded do the same.
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from .batches import resize_batch, sample_feed as generated_feed
from .convert import is_model_file_source, model_sample, sample_feed
from .errors import (InferenceError, InferenceTimeoutError, InvalidInputError, InvalidModelError, ModelForgeError,
                     ModelNotFoundError, ResourceLimitError, ServiceUnavailableError, first_line)
from .forksafe import at_fork_in_child, park
from .outputs import pack, unpack
from .tensors import prepare_feed

log = logging.getLogger(__name__)

WARMUP_ROWS = 8  # rows of a sample kept for warm-ups
WARMUP_MAX_BYTES = 16 * 1024  # packed bytes of a stored warm-up input at most (base64 adds a third in the column)
SYNTHETIC = "synthetic"


def stored_sample(inputs: list, model: Any, sample: Any) -> tuple[dict | None, dict | None]:
    """(the warm-up feed of ``sample``, its stored form ``{"rows", "feed": base64 of outputs.pack}``), both None
    when there is no sample (or ``"synthetic"``). ``inputs``: the version's declared inputs; ``model``: the source
    ``register`` was given (a fitted object's ``sample`` is its conversion rows). At most ``WARMUP_ROWS`` rows are kept
    (inputs with a symbolic axis 0); a feed still over ``WARMUP_MAX_BYTES`` runs the warm-up but is not stored.
    Raises ``ModelForgeError`` (400) "sample: ..." for a sample that does not fit the inputs."""
    if sample is None or isinstance(sample, str) and sample == SYNTHETIC:
        return None, None
    try:
        given = sample if is_model_file_source(model) else sample_feed(model_sample(model, sample))
        feed = prepare_feed(inputs, given)
    except ModelForgeError as err:
        raise ModelForgeError(f"sample: {err}") from None
    rows = _rows(inputs, feed)
    if rows > WARMUP_ROWS:
        feed = resize_batch(inputs, feed, WARMUP_ROWS)
        rows = WARMUP_ROWS
    packed = pack(feed)
    if len(packed) > WARMUP_MAX_BYTES:
        return feed, None
    return feed, {"rows": rows, "feed": base64.b64encode(packed).decode("ascii")}


def warmup_feed(inputs: list, stored: dict | None) -> tuple[dict[str, np.ndarray], str]:
    """(the feed a version warms up on, what it is for messages): its stored sample, else a generated input."""
    if stored:
        feed = unpack(base64.b64decode(stored["feed"]))
        if feed is not None:
            return feed, f"its sample ({stored.get('rows', 1)} rows)"
    return generated_feed(inputs, 1), "an input generated from its declared inputs (batch 1)"


def warmup_error(err: ModelForgeError, name: str, what: str) -> ModelForgeError:
    """The refusal of a version whose warm-up run raised ``err``: 503 for a memory limit, else 400; ``err`` itself
    when it is neither a run's failure nor a limit's (503 registry down...)."""
    if isinstance(err, ResourceLimitError):
        return ServiceUnavailableError(f"model {name!r}: the warm-up run on {what} was refused for lack of memory "
                                       f"({err}); the model was not changed: retry when memory is free")
    if isinstance(err, (InferenceError, InvalidInputError, InferenceTimeoutError)):
        why = str(err).removeprefix(f"model {name!r} failed on this input: ")
        return InvalidModelError(f"model {name!r} failed its warm-up run on {what}: {why}; the model was not changed"
                                 + ("" if what.startswith("its sample") else
                                    "; give sample= an input it runs on (ModelForge.register / update, or "
                                    "%mf_register --sample: HTTP PUT cannot carry one)"))
    return err


def _rows(inputs: list, feed: dict) -> int:
    for spec in inputs:
        if spec.shape and spec.shape[0] is None and spec.name in feed:
            return int(feed[spec.name].shape[0])
    return 1


class Lifecycle:
    """Warm-ups, loads on change events and forced reloads for one ``ModelForge`` (module docstring).

    ``announce(event)`` publishes a change event to the other processes (``Invalidator.announce``: False without
    Redis); ``timeout``: seconds a warm-up run may take (``inference_timeout``, 0 = none).
    """

    def __init__(self, engine: Any, registry: Any, announce: Callable[[dict], bool], timeout: float) -> None:
        self.engine = engine
        self.registry = registry
        self.announce = announce
        self.timeout = timeout
        self.origin = uuid.uuid4().hex  # this ModelForge's events are not for itself
        self.background_loads = 0  # loads and reloads made on other processes' events, for tests and statistics
        self._warming: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        at_fork_in_child(self._after_fork_in_child)

    # -- warm-up before ready ---------------------------------------------------------------------------------------
    @contextmanager
    def warming(self, name: str) -> Iterator[None]:
        """Mark ``name`` as being loaded and warmed here (``is_warming``) for the duration."""
        with self._lock:
            self._warming[name] += 1
        try:
            yield
        finally:
            with self._lock:
                self._warming[name] -= 1
                if not self._warming[name]:
                    del self._warming[name]

    def is_warming(self, name: str) -> bool:
        """True while a version of ``name`` is loaded and warmed here before its commit."""
        return name in self._warming

    def warming_names(self) -> list[str]:
        """The names ``is_warming`` is True for."""
        with self._lock:
            return list(self._warming)

    def warm_up(self, name: str, source: Any, model: Any, sample: Any) -> dict | None:
        """Run ``source`` (``convert.Source``, its session loaded) once on its sample or a generated input (module
        docstring); return the stored form of the sample (None: nothing to store). Raises ``InvalidModelError`` (400)
        for a failed run, ``ServiceUnavailableError`` (503) for one refused for memory, ``ModelForgeError`` (400)
        for a sample that does not fit; the session is unloaded then, unless a registered version uses its bytes."""
        feed, stored = stored_sample(source.inputs, model, sample)
        if feed is None and sample is None:
            feed, stored = self._inherited(name, source.inputs)
        what = f"its sample ({_rows(source.inputs, feed)} rows)" if feed is not None else ""
        if feed is None:
            feed, what = warmup_feed(source.inputs, None)
        try:
            self.engine.predict(source.sha256, lambda: source.data, feed, name, self.timeout)
        except ModelForgeError as err:
            if not self.registry.referenced([source.sha256]):
                self.engine.unload(source.sha256)
            raise warmup_error(err, name, what) from None
        return stored

    def _inherited(self, name: str, inputs: list) -> tuple[dict | None, dict | None]:
        """(feed, stored form) of the latest version's stored sample when it fits ``inputs``: an update given no
        sample (``PUT`` over HTTP) warms up on the values the model was registered with; else (None, None)."""
        try:
            stored = self.registry.resolve(name).warmup
        except ModelNotFoundError:
            return None, None
        if not stored:
            return None, None
        try:
            return prepare_feed(inputs, warmup_feed(inputs, stored)[0]), stored
        except ModelForgeError:
            return None, None

    def _warm_run(self, record: Any) -> Callable[[Any], None]:
        """A check for ``SessionLRU.reload``: one run of the loaded model on the version's warm-up input."""
        feed, what = warmup_feed(record.inputs, record.warmup)

        def run(loaded: Any) -> None:
            try:
                self.engine.run_loaded(loaded, feed, record.name, self.timeout)
            except ModelForgeError as err:
                raise warmup_error(err, record.name, what) from None

        return run

    # -- forced reload ----------------------------------------------------------------------------------------------
    def reload(self, record: Any) -> bool:
        """Build and warm a new session of ``record``'s version here while the loaded one keeps serving, swap it in,
        then tell the other processes (those that have it loaded reload it too). Returns True when the event was
        published (False without Redis: this process only). Raises as ``warm_up`` (the old session stays then)."""
        self.engine.reload(record.sha256, lambda: self.registry.blob(record.sha256), self._warm_run(record))
        return self.announce({"model_id": record.id, "origin": self.origin,
                              "reload": {"version": record.version, "sha256": record.sha256}})

    def updated(self, record: Any, superseded: list[str]) -> bool:
        """Tell the other processes that ``record`` replaced the versions of bytes ``superseded`` (the event of an
        update: those serving them load ``record`` at once). True when published."""
        return self.announce({"model_id": record.id, "origin": self.origin, "sha256s": sorted(set(superseded)),
                              "load": {"version": record.version, "sha256": record.sha256}})

    # -- other processes' events ------------------------------------------------------------------------------------
    def on_event(self, event: dict, loaded_before: set[str]) -> None:
        """Act on a change event (the eviction listener's thread calls this after unloading the event's
        ``sha256s``; ``loaded_before``: the sessions loaded before that): load an updated version if this process
        served a superseded one, reload a version it has loaded. The work runs on a background thread."""
        if event.get("origin") == self.origin or not isinstance(event.get("model_id"), str):
            return
        for kind in ("load", "reload"):
            target = event.get(kind)
            if not isinstance(target, dict) or not isinstance(target.get("sha256"), str):
                continue
            sha = target["sha256"]
            if kind == "load" and (sha in loaded_before or not set(event.get("sha256s") or ()) & loaded_before):
                continue  # loaded already, or this process did not serve the model
            if kind == "reload" and sha not in loaded_before:
                continue
            self._submit(self._background, kind, event["model_id"], target.get("version"), sha)

    def _submit(self, *call: Any) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelforge-load")
            try:
                self._executor.submit(*call)
            except RuntimeError:  # the interpreter is shutting down: the load is not needed any more
                log.debug("background load not started: shutting down")

    def _background(self, kind: str, model_id: str, version: int | None, sha256: str) -> None:
        """Load (``kind`` "load": single flight with the requests that need it meanwhile) or reload ``sha256`` and
        warm it. Failures are logged: the version is committed, and requests load it themselves."""
        try:
            record = self.registry.resolve(model_id, version)
            if record.sha256 != sha256:
                return
            if kind == "load":
                loaded = self.engine.session(sha256, lambda: self.registry.blob(sha256))
                self._warm_run(record)(loaded)
            else:
                self.engine.reload(sha256, lambda: self.registry.blob(sha256), self._warm_run(record))
            self.background_loads += 1
            log.info("%sed model %r v%s on another process's change event", kind, record.name, record.version)
        except Exception as err:  # never kill the loading thread; the next request loads the version itself
            log.warning("%s of model %s after a change event failed: %s", kind, model_id, first_line(err))

    def close(self) -> None:
        """Stop the background loading thread (a load in flight finishes on its own)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _after_fork_in_child(self) -> None:
        """In a forked child: no loading thread (the parent's is not here) and a new lock; the child's own events
        start a new one."""
        park(self._executor)
        self._executor = None
        self._lock = threading.Lock()
        self._warming = Counter()
