"""The ONNX Runtime engine: one per process, holding an LRU of ``InferenceSession``s keyed by the model's sha256.

Sessions are keyed by content (sha256 of the ONNX bytes), so a session can never run the wrong bytes and two
versions with identical bytes share one session. Every session gets the same ``SessionOptions``: graph
optimizations at ``ORT_ENABLE_ALL``, ``intra_op_num_threads`` from settings (default 1, so N loaded models never
mean N thread pools on a 2-core machine; see shared/notes/serving.md §d), spinning off.

Memory bounds (README, "What is bounded and how"):
- before a session is built, the constants it would compute are sized from the graph (``footprint``): over
  ``max_constant_bytes`` the model is refused (400); ONNX Runtime's per-node folding cap keeps the ones inference
  cannot size within the rest of that budget;
- each session is charged what its build took (process RSS growth, builds serialised; at least the model's size
  plus its computed constants) and the LRU unloads past ``max_session_bytes`` as past ``max_sessions``;
- every session allocates from one CPU arena registered in ONNX Runtime's environment (``session.use_env_allocators``)
  whose ``max_mem`` is ``max_arena_bytes``: it holds the runs' working memory and the weights sessions re-pack at
  load. A run needing more fails inside ONNX Runtime before it allocates, and is answered 413
  (``ResourceLimitError``). The arena returns its free memory to the OS at most once
  a second (``memory.enable_memory_arena_shrinkage`` on one run), and before a run that did not fit is retried;
- outputs over ``max_output_bytes`` are refused (413) right after the run, before any JSON is built or cached; a
  string output counts its UTF-8 bytes;
- string characters live outside the arena: a model whose run sets how many strings a node copies is refused at
  registration (``footprint``), and a request whose strings, times the copies the model fixes, exceed
  ``max_arena_bytes`` is refused (413) before the run.

Thread safety: ``InferenceSession.run`` may be called concurrently on one session and releases the GIL
(onnxruntime#114, PR #1042). The LRU is guarded by a lock; a first use racing from several threads builds one
session (single flight), the others wait for it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import onnxruntime as ort

from .deadline import Cancellation, watchdog
from .errors import InferenceError, InferenceTimeoutError, InvalidModelError, ResourceLimitError, first_line
from .footprint import ConstantFootprint, constant_footprint
from .forksafe import at_fork_in_child, park
from .records import TensorSpec
from .tensors import NUMPY_DTYPES, json_safe, spec_from_ort

log = logging.getLogger(__name__)

# ORT's folder for a model's external data files when the model is given as bytes (default: the working directory);
# ONNX Runtime 1.21 and later (microsoft/onnxruntime#23557), hence the floor in pyproject.toml
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"

MiB = 1 << 20
FOLD_LIMIT = "optimization.constant_folding_max_output_size_in_bytes"  # ONNX Runtime's per-node folding cap
SHRINK = "memory.enable_memory_arena_shrinkage"
SHRINK_INTERVAL_S = 1.0  # a run returns the arena's free memory to the OS at most this often (it costs ~1.5 µs)
_ARENA_FULL = re.compile(r"requested bytes of (\d+)|Failed to allocate memory for requested buffer of size (\d+)")
_arena_lock = threading.Lock()
_arena_max: int | None = None  # max_mem of the CPU arena registered in this process's ONNX Runtime environment
# Threads inside ONNX Runtime (a run, a session build) with the shared arena: a fork while one is there may copy the
# arena's mutex held, and no thread of the child would ever release it (see Engine._after_fork_in_child). A set add
# and discard of the thread's id (~0.1 µs, atomic under the GIL): no lock a fork could catch held.
_in_ort: set[int] = set()
_arena_unusable = False  # in a process forked while _in_ort was not empty: its sessions keep their own arenas


def _forked() -> None:
    global _in_ort, _arena_unusable
    _arena_unusable = _arena_unusable or bool(_in_ort)
    _in_ort = set()


os.register_at_fork(after_in_child=_forked)


def shared_arena(max_bytes: int) -> int:
    """Register, once per process, the CPU arena every session of the process shares, capped at ``max_bytes``
    (``OrtArenaCfg`` max_mem, growing by what is asked: ``kSameAsRequested``). Returns the cap in force, which is
    the first caller's: ONNX Runtime cannot replace an environment's allocator."""
    global _arena_max
    with _arena_lock:
        if _arena_max is None:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"max_mem": max_bytes, "arena_extend_strategy": 1}))
            _arena_max = max_bytes
        return _arena_max


def process_rss() -> int:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class LoadedModel:
    """A loaded session with its output names read once (``get_outputs()`` costs µs per call) and the bytes of memory
    it is charged in the LRU (``nbytes``), and how many times at most a run copies a request's strings."""

    __slots__ = ("session", "output_names", "nbytes", "string_copies")

    def __init__(self, session: ort.InferenceSession, nbytes: int = 0, string_copies: int = 0) -> None:
        self.session = session
        self.output_names = [node.name for node in session.get_outputs()]
        self.nbytes = nbytes
        self.string_copies = string_copies  # at most how many times a run copies a request's strings (footprint)


class Engine:
    """LRU of ONNX Runtime sessions bounded by ``max_sessions`` and ``max_session_bytes``; the only place that talks
    to ONNX Runtime. Byte limits (0: none) are the settings of the same names, described in the module docstring."""

    def __init__(
        self,
        max_sessions: int = 32,
        intra_op_num_threads: int = 1,
        providers: list[str] | None = None,
        *,
        max_session_bytes: int = 512 * MiB,
        max_constant_bytes: int = 64 * MiB,
        max_arena_bytes: int = 1024 * MiB,
        max_output_bytes: int = 8 * MiB,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.intra_op_num_threads = intra_op_num_threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.max_session_bytes = max_session_bytes
        self.max_constant_bytes = max_constant_bytes
        self.max_output_bytes = max_output_bytes
        self.max_arena_bytes = max_arena_bytes
        self.arena_bytes = 0  # the shared arena's cap, 0 when sessions keep their own (uncapped) arenas
        self._warn_own_arenas = _arena_unusable and max_arena_bytes > 0
        if max_arena_bytes > 0 and not _arena_unusable:
            self.arena_bytes = shared_arena(max_arena_bytes)
            if self.arena_bytes != max_arena_bytes:
                log.warning("ONNX Runtime's arena of this process is capped at %d bytes (set by its first engine), "
                            "not max_arena_bytes = %d; restart the process to change it", self.arena_bytes,
                            max_arena_bytes)
        self._shrink_at = 0.0
        self._shrink_options = ort.RunOptions()
        self._shrink_options.add_run_config_entry(SHRINK, "cpu:0")
        self._shrinker: ort.InferenceSession | None = None
        self._sessions: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()  # one build at a time, so its RSS growth is its own
        self.loads = 0  # sessions built since start: cold starts, for tests and statistics
        at_fork_in_child(self._after_fork_in_child)

    def session_options(self, fold_limit: int = 0) -> ort.SessionOptions:
        """The ``SessionOptions`` every session of this engine uses (benchmarks give raw ORT the same); ``fold_limit``
        (bytes, 0: ONNX Runtime's default of 1 GiB) caps each constant-folded node's output."""
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.intra_op_num_threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.arena_bytes:
            so.add_session_config_entry("session.use_env_allocators", "1")
        if fold_limit:
            so.add_session_config_entry(FOLD_LIMIT, str(fold_limit))
        so.log_severity_level = 3  # errors only: ORT's warnings would go to the notebook's stderr
        return so

    def footprint(self, model_bytes: bytes) -> ConstantFootprint:
        """Size the constants a session of ``model_bytes`` would compute (``footprint``), before building one.

        Raises ``InvalidModelError`` (400) when they exceed ``max_constant_bytes``; bytes ``onnx`` cannot parse are
        left for ONNX Runtime to refuse (an empty footprint).
        """
        import onnx

        try:
            model = onnx.load_from_string(model_bytes)
        except Exception:
            return ConstantFootprint()
        footprint = constant_footprint(model)
        if self.max_constant_bytes:
            footprint.check(self.max_constant_bytes)
        footprint.check_strings()
        return footprint

    def create_session(self, model_bytes: bytes, footprint: ConstantFootprint | None = None) -> ort.InferenceSession:
        """Build a session from ONNX bytes. Raises ``InvalidModelError`` naming ONNX Runtime's complaint, or the
        constants the model would compute over ``max_constant_bytes`` (checked first, unless ``footprint`` is
        given: ``self.footprint(model_bytes)``).

        The bytes are all a session reads: external data (tensors kept in other files, which ORT would look for
        relative to the working directory) resolves under ``os.devnull``, where no file can be, so it fails to load.
        The registry refuses such models anyway (``modelfile``); this covers bytes stored before it did.
        """
        if not model_bytes:
            raise InvalidModelError("not a valid ONNX model: the file is empty")
        if footprint is None:
            footprint = self.footprint(model_bytes)
        fold_limit = footprint.fold_limit(self.max_constant_bytes) if self.max_constant_bytes else 0
        so = self.session_options(fold_limit)
        so.add_session_config_entry(EXTERNAL_DATA_FOLDER, os.devnull)
        try:
            return ort.InferenceSession(model_bytes, sess_options=so, providers=self.providers)
        except Exception as err:  # ORT raises pybind exceptions (InvalidProtobuf, Fail, InvalidGraph, ...)
            raise InvalidModelError(f"not a valid ONNX model ({len(model_bytes)} bytes): {first_line(err)}") from None

    def load(self, model_bytes: bytes) -> LoadedModel:
        """Build a session (``create_session``) charged with the memory its build took: the process's RSS growth
        (builds run one at a time for this), at least the model's size plus the constants it computes."""
        footprint = self.footprint(model_bytes) if model_bytes else ConstantFootprint()
        if self._warn_own_arenas:
            self._warn_own_arenas = False
            log.warning("this process was forked while another thread was inside ONNX Runtime: its sessions use arenas "
                        "of their own, not the arena shared under max_arena_bytes (%d bytes), whose lock may have been "
                        "held at the fork", self.max_arena_bytes)
        thread = threading.get_ident()
        with self._build_lock:
            before = process_rss()
            _in_ort.add(thread)
            try:
                session = self.create_session(model_bytes, footprint)
            finally:
                _in_ort.discard(thread)
            grown = process_rss() - before
        return LoadedModel(session, max(grown, len(model_bytes) + footprint.computed_bytes), footprint.string_copies)

    def inspect(self, sha256: str, model_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Load ``model_bytes``, keep the session warm under ``sha256`` and return (inputs, outputs) specs.

        Inputs are the required ones (``session.get_inputs()``), then the optional ones: initializers that are also
        graph inputs (``get_overridable_initializers()``), which a request may override; an optional input of a
        dtype ModelForge cannot feed is left out (it keeps its default).
        Raises ``InvalidModelError`` for bytes ONNX Runtime cannot load, and for models with a required input
        ModelForge cannot feed (a non-tensor input, or a dtype outside float16/32/64, (u)int8-64, bool, string).
        """
        loaded = self.load(model_bytes)
        session = loaded.session
        inputs = [spec_from_ort(n) for n in session.get_inputs()]
        outputs = [spec_from_ort(n) for n in session.get_outputs()]
        for spec in inputs:
            if spec.dtype not in NUMPY_DTYPES:
                raise InvalidModelError(f"input {spec.name!r} has type {spec.dtype}, which ModelForge cannot feed")
        optional = [spec_from_ort(n, optional=True) for n in session.get_overridable_initializers()]
        inputs += [spec for spec in optional if spec.dtype in NUMPY_DTYPES]
        self._install(sha256, loaded)
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
        Raises ``ResourceLimitError`` (413) when the run needs more than the arena has left, or its outputs hold more
        than ``max_output_bytes``; ``InferenceError`` (422) when ONNX Runtime rejects the values.
        """
        loaded = self.session(sha256, load_bytes)
        name = model_name or sha256[:12]
        if not timeout and cancel is None:
            try:
                values = self._run(loaded, feed, name, self._run_options())
            except ResourceLimitError:
                raise
            except Exception as err:
                raise _inference_error(err, name) from None
        else:
            options = ort.RunOptions()
            options.log_severity_level = 4  # a stopped run is not an error to log on stderr: the caller gets the error
            if self._run_options() is not None:
                options.add_run_config_entry(SHRINK, "cpu:0")
            if cancel is not None:
                cancel.attach(options, name)
            dog = watchdog()
            run = dog.start(options, timeout) if timeout else None
            try:
                values = self._run(loaded, feed, name, options)
            except Exception as err:
                if run is not None and run.expired:
                    raise InferenceTimeoutError(
                        f"model {name!r} did not finish within {format_seconds(timeout)} and was stopped (the limit "
                        "is predict's timeout, else the inference_timeout setting, env MODELFORGE_INFERENCE_TIMEOUT)"
                    ) from None
                if cancel is not None and cancel.cancelled:
                    raise cancel.error(name) from None
                if isinstance(err, ResourceLimitError):
                    raise
                raise _inference_error(err, name) from None
            finally:
                if run is not None:
                    dog.finish(run)
                if cancel is not None:
                    cancel.detach()
        if self.max_output_bytes:
            self._check_output(loaded.output_names, values, name)
        return loaded.output_names, values

    def _run_options(self) -> ort.RunOptions | None:
        """None, or at most once every ``SHRINK_INTERVAL_S`` the options that make the run return the arena's free
        memory to the OS when it ends (so memory a large run took goes back, while each run does not pay for it)."""
        if not self.arena_bytes:
            return None
        now = time.monotonic()
        if now < self._shrink_at:
            return None
        self._shrink_at = now + SHRINK_INTERVAL_S
        return self._shrink_options

    def _run(self, loaded: LoadedModel, feed: dict[str, np.ndarray], name: str, options: Any) -> list[Any]:
        """``session.run``; a run the shared arena could not hold is retried once its free regions are released (they
        may be too small, apart): ``ResourceLimitError`` (413) if it still does not fit, or before it starts when the
        request's strings, copied as many times as the model may, would hold more than the arena's cap outside it
        (their characters are not in the arena). Raises what ORT raises."""
        if loaded.string_copies and self.arena_bytes:
            self._check_string_copies(loaded.string_copies, feed, name)
        thread = threading.get_ident()
        _in_ort.add(thread)
        try:
            return self._run_in_arena(loaded, feed, name, options)
        finally:
            _in_ort.discard(thread)

    def _run_in_arena(self, loaded: LoadedModel, feed: dict[str, np.ndarray], name: str, options: Any) -> list[Any]:
        try:
            return loaded.session.run(loaded.output_names, feed, options)
        except Exception as err:
            if not self.arena_bytes or not _ARENA_FULL.search(str(err)):
                raise
        self._shrink()
        try:
            return loaded.session.run(loaded.output_names, feed, options)
        except Exception as err:
            found = _ARENA_FULL.search(str(err))
            if found is None:
                raise
        asked = found.group(1) or found.group(2)
        raise ResourceLimitError(
            f"model {name!r} needs more memory on this input than ONNX Runtime may use: {asked} bytes at once did not "
            f"fit in its arena of {self.arena_bytes} bytes, shared by the runs in flight and the loaded models "
            "(max_arena_bytes, env MODELFORGE_MAX_ARENA_BYTES); send fewer rows at once"
        )

    def _check_string_copies(self, copies: int, feed: dict[str, np.ndarray], name: str) -> None:
        chars = sum(_nbytes(value) for value in feed.values() if value.dtype == object)
        if chars * copies > self.arena_bytes:
            raise ResourceLimitError(
                f"model {name!r} copies the strings of a request up to {copies} times: this request's {chars} bytes of"
                f" strings could take {chars * copies} bytes outside ONNX Runtime's arena, more than its cap of"
                f" {self.arena_bytes} bytes (max_arena_bytes, env MODELFORGE_MAX_ARENA_BYTES); send shorter strings or"
                " fewer rows at once"
            )

    def _shrink(self) -> None:
        """Return the shared arena's free regions to the OS now: one run of a one-node model with shrinkage on."""
        if self._shrinker is None:
            from onnx import TensorProto, helper

            x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
            graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "shrink", [x],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
            self._shrinker = self.create_session(model.SerializeToString())
        self._shrinker.run(None, {"x": np.zeros(1, np.float32)}, self._shrink_options)

    def _check_output(self, names: list[str], values: list[Any], name: str) -> None:
        """Refuse (``ResourceLimitError``, 413) outputs holding more than ``max_output_bytes``, before any JSON."""
        total = sum(map(_nbytes, values))
        if total > self.max_output_bytes:
            shapes = ", ".join(f"{n!r} {v.dtype} {list(v.shape)}" for n, v in zip(names, values)
                               if isinstance(v, np.ndarray))
            raise ResourceLimitError(
                f"the answer of model {name!r} would hold {total} bytes of outputs ({shapes or 'sequences'}); the "
                f"limit is {self.max_output_bytes} bytes (max_output_bytes, env MODELFORGE_MAX_OUTPUT_BYTES): "
                "send fewer rows at once"
            )

    def session_bytes(self) -> int:
        """Bytes the loaded sessions are charged in the LRU (``LoadedModel.nbytes``)."""
        with self._lock:
            return sum(m.nbytes for m in self._sessions.values())

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
        and 4 alike (ORT 1.32; its parallel sections let the calling thread run work no pool thread picked up).

        Unless another thread was inside ONNX Runtime at the fork (``_in_ort``) with the shared arena: its mutex may
        then be held for good in the child (3 children in 20 hung in ``session.run`` before this), so the child's
        sessions are rebuilt with arenas of their own (one warning is logged at the first build)."""
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._loading = {}
        if self.arena_bytes and (_in_ort or _arena_unusable):
            # Another thread was inside ONNX Runtime at the fork: the shared arena's mutex may be held for good. Its
            # sessions (and the shrinker) are parked, never run nor freed here (freeing returns memory to that
            # arena); sessions are rebuilt on first use with arenas of their own, uncapped by max_arena_bytes.
            park(*self._sessions.values(), self._shrinker)
            self._sessions = OrderedDict()
            self._shrinker = None
            self.arena_bytes = 0
            self._warn_own_arenas = True


def _inference_error(err: Exception, model_name: str) -> InferenceError:
    return InferenceError(f"model {model_name!r} failed on this input: {first_line(err)}")


def format_seconds(seconds: float) -> str:
    """A limit as people read it: ``500 ms`` below 1 s, else ``30 s``."""
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def _nbytes(value: Any) -> int:
    """Bytes of one output: an array's ``nbytes``, a string array's UTF-8 text plus 8 bytes an element (its pointer);
    a sequence (skl2onnx's ZipMap: one map a row, all alike) sized from its first item, 16 bytes a map entry (key and
    value) plus a string key's text (a ZipMap's class labels repeat in every row)."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return value.nbytes + sum(len(s) if s.isascii() else len(s.encode()) for s in value.flat)
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return len(value) * _nbytes(value[0]) if value else 0
    if isinstance(value, dict):
        return sum(16 + (len(key.encode()) if isinstance(key, str) else 0) for key in value)
    return 8


def raw_session(model: bytes | str | os.PathLike, options: ort.SessionOptions | None = None,
                providers: list[str] | None = None) -> ort.InferenceSession:
    """A bare ``onnxruntime.InferenceSession`` of ``model`` (ONNX bytes or a file path), outside any ``Engine``: no
    LRU, no memory limits. It is the raw baseline the benchmark and the demo set ModelForge beside, and the one way a
    module other than this one gets a session. ``options`` None: ONNX Runtime's default ``SessionOptions`` (its own
    thread pool, spinning on); ``providers`` None: ONNX Runtime's default choice. Raises what ONNX Runtime raises."""
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (``onnxruntime.get_available_providers()``)."""
    return ort.get_available_providers()
