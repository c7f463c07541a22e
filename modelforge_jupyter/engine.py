"""The ONNX Runtime engine: one per process, holding an LRU of ``InferenceSession``s keyed by the model's sha256.

Sessions are keyed by content (sha256 of the ONNX bytes), so a session can never run the wrong bytes and two
versions with identical bytes share one session. Every session gets the same ``SessionOptions``: graph
optimizations at ``ORT_ENABLE_ALL``, ``intra_op_num_threads`` from settings (default 1, so N loaded models never
mean N thread pools on a 2-core machine; see shared/notes/serving.md §d), spinning off.

Thread safety: ``InferenceSession.run`` may be called concurrently on one session and releases the GIL
(onnxruntime#114, PR #1042). The LRU is guarded by a lock; a first use racing from several threads builds one
session (single flight), the others wait for it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import onnxruntime as ort

from .deadline import Cancellation, watchdog
from .errors import InferenceError, InferenceTimeoutError, InvalidModelError
from .forksafe import at_fork_in_child
from .records import TensorSpec
from .tensors import NUMPY_DTYPES, json_safe, spec_from_ort


class LoadedModel:
    """A loaded session with its output names read once (``get_outputs()`` costs µs per call)."""

    __slots__ = ("session", "output_names")

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.output_names = [node.name for node in session.get_outputs()]


class Engine:
    """LRU of ONNX Runtime sessions bounded by ``max_sessions``; the only place that talks to ONNX Runtime."""

    def __init__(
        self,
        max_sessions: int = 32,
        intra_op_num_threads: int = 1,
        providers: list[str] | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.intra_op_num_threads = intra_op_num_threads
        self.providers = providers or ["CPUExecutionProvider"]
        self._sessions: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.loads = 0  # sessions built since start: cold starts, for tests and statistics
        at_fork_in_child(self._after_fork_in_child)

    def session_options(self) -> ort.SessionOptions:
        """The ``SessionOptions`` every session of this engine uses (benchmarks give raw ORT the same)."""
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.intra_op_num_threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3  # errors only: ORT's warnings would go to the notebook's stderr
        return so

    def create_session(self, model_bytes: bytes) -> ort.InferenceSession:
        """Build a session from ONNX bytes. Raises ``InvalidModelError`` naming ONNX Runtime's complaint."""
        if not model_bytes:
            raise InvalidModelError("not a valid ONNX model: the file is empty")
        try:
            return ort.InferenceSession(model_bytes, sess_options=self.session_options(), providers=self.providers)
        except Exception as err:  # ORT raises pybind exceptions (InvalidProtobuf, Fail, InvalidGraph, ...)
            msg = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InvalidModelError(f"not a valid ONNX model ({len(model_bytes)} bytes): {msg}") from None

    def inspect(self, sha256: str, model_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Load ``model_bytes``, keep the session warm under ``sha256`` and return (inputs, outputs) specs.

        Raises ``InvalidModelError`` for bytes ONNX Runtime cannot load, and for models with an input ModelForge
        cannot feed (a non-tensor input, or a dtype outside float16/32/64, (u)int8-64, bool, string).
        """
        session = self.create_session(model_bytes)
        inputs = [spec_from_ort(n) for n in session.get_inputs()]
        outputs = [spec_from_ort(n) for n in session.get_outputs()]
        for spec in inputs:
            if spec.dtype not in NUMPY_DTYPES:
                raise InvalidModelError(f"input '{spec.name}' has type {spec.dtype}, which ModelForge cannot feed")
        self._install(sha256, session)
        return inputs, outputs

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
            loaded = self._install(sha256, self.create_session(load_bytes()))
        except BaseException as err:
            with self._lock:
                del self._loading[sha256]
            future.set_exception(err)
            raise
        with self._lock:
            del self._loading[sha256]
        future.set_result(loaded)
        return loaded

    def _install(self, sha256: str, session: ort.InferenceSession) -> LoadedModel:
        loaded = LoadedModel(session)
        with self._lock:
            self._sessions[sha256] = loaded
            self._sessions.move_to_end(sha256)
            self.loads += 1
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return loaded

    def run(
        self, sha256: str, load_bytes: Callable[[], bytes], feed: dict[str, np.ndarray], model_name: str = "",
        timeout: float = 0.0, cancel: Cancellation | None = None,
    ) -> dict[str, Any]:
        """Run the model on ``feed`` (validated arrays) and return ``{output name: JSON-safe value}``.

        Raises ``InferenceError`` (HTTP 422) when ONNX Runtime rejects values that passed validation, and what
        ``run_raw`` raises for ``timeout`` and ``cancel``.
        """
        names, values = self.run_raw(sha256, load_bytes, feed, model_name, timeout, cancel)
        return {name: json_safe(v) for name, v in zip(names, values)}

    def run_raw(
        self, sha256: str, load_bytes: Callable[[], bytes], feed: dict[str, np.ndarray], model_name: str = "",
        timeout: float = 0.0, cancel: Cancellation | None = None,
    ) -> tuple[list[str], list[Any]]:
        """Run the model and return (output names, ONNX Runtime's values: ndarrays, or lists for sequences).

        ``timeout`` (s, 0 = none) bounds the run: past it the ``deadline.watchdog()`` sets the run's
        ``RunOptions.terminate`` and this raises ``InferenceTimeoutError`` (504). ``cancel.cancel()`` from another
        thread stops it the same way, raising ``RequestCancelledError`` (499); a cancelled request does not start.
        ONNX Runtime checks the flag between nodes and loop iterations, so one long node finishes first.
        Raises ``InferenceError`` (422) when ONNX Runtime rejects the values.
        """
        loaded = self.session(sha256, load_bytes)
        if not timeout and cancel is None:
            try:
                return loaded.output_names, loaded.session.run(loaded.output_names, feed)
            except Exception as err:
                raise _inference_error(err, model_name or sha256[:12]) from None
        options = ort.RunOptions()
        options.log_severity_level = 4  # a stopped run is not an error to log on stderr: the caller gets the error
        name = model_name or sha256[:12]
        if cancel is not None:
            cancel.attach(options, name)
        dog = watchdog()
        run = dog.start(options, timeout) if timeout else None
        try:
            return loaded.output_names, loaded.session.run(loaded.output_names, feed, options)
        except Exception as err:
            if run is not None and run.expired:
                raise InferenceTimeoutError(
                    f"model {name!r} did not finish within {format_seconds(timeout)} and was stopped (the limit is "
                    "predict's timeout, else the inference_timeout setting, env MODELFORGE_INFERENCE_TIMEOUT)"
                ) from None
            if cancel is not None and cancel.cancelled:
                raise cancel.error(name) from None
            raise _inference_error(err, name) from None
        finally:
            if run is not None:
                dog.finish(run)
            if cancel is not None:
                cancel.detach()

    def unload(self, sha256: str) -> bool:
        """Drop the session for ``sha256``; True if one was loaded."""
        with self._lock:
            return self._sessions.pop(sha256, None) is not None

    def loaded(self) -> list[str]:
        """sha256 of every loaded session, least recently used first."""
        with self._lock:
            return list(self._sessions)

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()

    def _after_fork_in_child(self) -> None:
        """In a forked child: a new lock (another thread may have held it at the fork) and no loads in flight (their
        threads are gone: a waiter would wait forever). Loaded sessions are kept, their memory shared copy-on-write:
        a session built and run before the fork gives the same outputs in the child, with intra_op_num_threads 1, 2
        and 4 alike (ORT 1.32; its parallel sections let the calling thread run work no pool thread picked up)."""
        self._lock = threading.Lock()
        self._loading = {}


def _inference_error(err: Exception, model_name: str) -> InferenceError:
    msg = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return InferenceError(f"model '{model_name}' failed on this input: {msg}")


def format_seconds(seconds: float) -> str:
    """A limit as people read it: ``500 ms`` below 1 s, else ``30 s``."""
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"
