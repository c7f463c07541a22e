"""The engine's loaded models: an LRU of sessions keyed by the model's sha256, bounded by count and by bytes.

Sessions are keyed by content (sha256 of the ONNX bytes), so a session can never run the wrong bytes and two
versions with identical bytes share one session. A first use racing from several threads builds one session (single
flight), the others wait for it. Building is the subclass's (``Engine.load``): this module never imports onnxruntime.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .forksafe import at_fork_in_child
from .metrics import METRICS
from .records import TensorSpec
from .tensors import spec_from_ort
from .zipmap import ZipMapOutput


class LoadedModel:
    """A loaded session, what its runs give back and the bytes of memory it is charged in the LRU (``nbytes``).

    ``run_names``: the session's outputs (read once: ``get_outputs()`` costs µs per call); ``output_names`` and
    ``outputs`` (specs): the model's, where a ZipMap's maps stand for its tensor (``zipmaps``, aligned with the
    outputs, empty when the model has none); ``string_copies``: at most how many times a run copies a request's strings.
    """

    __slots__ = ("session", "run_names", "output_names", "outputs", "zipmaps", "nbytes", "string_copies")

    def __init__(self, session: Any, nbytes: int = 0, string_copies: int = 0,
                 zipmaps: list[ZipMapOutput] | None = None) -> None:
        self.session = session
        nodes = session.get_outputs()
        self.run_names: list[str] = [node.name for node in nodes]
        by_tensor = {z.tensor_name: z for z in zipmaps or ()}
        self.zipmaps = tuple(by_tensor.get(name) for name in self.run_names) if by_tensor else ()
        self.outputs: list[TensorSpec] = [by_tensor[n.name].spec if n.name in by_tensor else spec_from_ort(n)
                                          for n in nodes]
        self.output_names = [spec.name for spec in self.outputs]
        self.nbytes = nbytes
        self.string_copies = string_copies


class SessionLRU:
    """Loaded models by sha256, least recently used unloaded first past ``max_sessions`` or ``max_session_bytes``
    (bytes, 0: count only). Subclasses build a model in ``load(model_bytes)``. Thread-safe."""

    def __init__(self, max_sessions: int = 32, max_session_bytes: int = 0) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.max_session_bytes = max_session_bytes
        self._sessions: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future] = {}
        self._reloading: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.loads = 0  # sessions built since start: cold starts, for tests and statistics
        METRICS.engines.add(self)  # its loaded sessions are reported (``metrics``)
        at_fork_in_child(self._reset_after_fork)

    def load(self, model_bytes: bytes) -> LoadedModel:
        """Build the loaded model of ``model_bytes`` (the engine's; this class only keeps them)."""
        raise NotImplementedError

    def session(self, sha256: str, load_bytes: Callable[[], bytes]) -> LoadedModel:
        """Return the loaded model for ``sha256``, building it from ``load_bytes()`` on first use (single flight)."""
        with self._lock:
            loaded = self._sessions.get(sha256)
            if loaded is not None:
                self._sessions.move_to_end(sha256)
                return loaded
            future = self._loading.get(sha256)
            owner = future is None
            if owner:
                future = self._loading[sha256] = Future()
        if not owner:
            return future.result()
        try:
            loaded = self._install(sha256, self.load(load_bytes()))
        except BaseException as err:
            with self._lock:
                del self._loading[sha256]
            future.set_exception(err)
            raise
        with self._lock:
            del self._loading[sha256]
        future.set_result(loaded)
        return loaded

    def reload(self, sha256: str, load_bytes: Callable[[], bytes],
               check: Callable[[LoadedModel], None] | None = None) -> LoadedModel:
        """Build ``sha256``'s model anew from ``load_bytes()`` while the loaded one keeps serving, run ``check`` on it
        (a warm-up), then put it in the loaded one's place: no request waits. Not loaded here: as ``session``, then
        ``check`` (unloaded again if it raises). Concurrent reloads of one sha256 share one build (single flight); a
        reload while a first load is in flight is that load. Raises what ``load`` or ``check`` raise; the loaded
        model is kept then."""
        with self._lock:
            loading = self._loading.get(sha256)
            first = sha256 not in self._sessions
            future = self._reloading.get(sha256)
            owner = not first and loading is None and future is None
            if owner:
                future = self._reloading[sha256] = Future()
        if loading is not None:
            return loading.result()
        if first:
            loaded = self.session(sha256, load_bytes)
            try:
                if check is not None:
                    check(loaded)
            except BaseException:
                self.unload(sha256)
                raise
            return loaded
        if not owner:
            return future.result()
        try:
            loaded = self.load(load_bytes())
            if check is not None:
                check(loaded)
        except BaseException as err:
            with self._lock:
                del self._reloading[sha256]
            future.set_exception(err)
            raise
        self._install(sha256, loaded)
        with self._lock:
            del self._reloading[sha256]
        future.set_result(loaded)
        return loaded

    def _install(self, sha256: str, loaded: LoadedModel) -> LoadedModel:
        """Keep ``loaded`` as the most recently used; unload the least recently used ones while there are more than
        ``max_sessions`` or they are charged more than ``max_session_bytes`` (the newest always stays)."""
        with self._lock:
            self._sessions[sha256] = loaded
            self._sessions.move_to_end(sha256)
            self.loads += 1
            total = sum(m.nbytes for m in self._sessions.values())
            while len(self._sessions) > 1 and (
                len(self._sessions) > self.max_sessions or (self.max_session_bytes and total > self.max_session_bytes)
            ):
                total -= self._sessions.popitem(last=False)[1].nbytes
                METRICS.unloaded()
        return loaded

    def session_bytes(self) -> int:
        """Bytes the loaded sessions are charged in the LRU (``LoadedModel.nbytes``)."""
        with self._lock:
            return sum(m.nbytes for m in self._sessions.values())

    def unload(self, sha256: str) -> bool:
        """Drop the session for ``sha256``; True if one was loaded."""
        with self._lock:
            dropped = self._sessions.pop(sha256, None) is not None
        if dropped:
            METRICS.unloaded()
        return dropped

    def loaded(self) -> list[str]:
        """sha256 of every loaded session, least recently used first."""
        with self._lock:
            return list(self._sessions)

    def close(self) -> None:
        """Forget every loaded model (their sessions are freed when no run holds them)."""
        with self._lock:
            self._sessions.clear()

    def _drop_all(self) -> list[LoadedModel]:
        """Forget every loaded model (not closing them) and return them."""
        with self._lock:
            dropped, self._sessions = list(self._sessions.values()), OrderedDict()
        return dropped

    def _reset_after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held it at the fork) and no loads in flight (their
        threads are gone: a waiter would wait forever). Loaded sessions are kept (see ``Engine``)."""
        self._lock = threading.Lock()
        self._loading = {}
        self._reloading = {}
