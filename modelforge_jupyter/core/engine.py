"""The ONNX Runtime engine: one per process, holding an LRU of ``InferenceSession``s keyed by the model's sha256
(``sessions``). Every session gets the same ``SessionOptions``: graph optimizations at ``ORT_ENABLE_ALL``,
``intra_op_num_threads`` per use (a server's sessions 1, so that N loaded models never mean N thread pools and
concurrent requests share the cores; a kernel's one per physical core, so that a big batch uses them all: settings
``server_intra_op_num_threads`` and ``intra_op_num_threads``); a kernel's threads spin while they wait for work as
ONNX Runtime's default does (``intra_op_spinning``), a server's never.

Memory bounds (README, "Memory: what is bounded and how"; the checks themselves are in ``limits``):
- before a session is built, the constants it would compute are sized from the graph (``footprint``): over
  ``max_constant_bytes`` the model is refused (400); ONNX Runtime's per-node folding cap keeps the ones inference
  cannot size within the rest of that budget; the strings a run could copy outside the arena are bounded there too
  (refused, or checked before each run: ``string_copies``). ZipMap nodes are taken out of the graph (``zipmap``);
- each session is charged what its build took (process RSS growth, builds serialised; at least the model's size
  plus its computed constants) and the LRU unloads past ``max_session_bytes`` as past ``max_sessions``;
- every session allocates from one CPU arena registered in ONNX Runtime's environment (``session.use_env_allocators``)
  whose ``max_mem`` is ``max_arena_bytes``: a run needing more fails inside ONNX Runtime before it allocates, and is
  answered 413 (``ResourceLimitError``). The arena returns its free memory to the OS at most once a second
  (``memory.enable_memory_arena_shrinkage`` on one run), and before a run that did not fit is retried;
- a run that takes the process more than ``max_request_memory_bytes`` above its steady state (memory outside the arena:
  strings) is stopped by the watchdog (``deadline``) and answered 413;
- outputs over ``max_output_bytes`` are refused (413) right after the run, before any JSON (or ZipMap map) is built.

Thread safety: ``InferenceSession.run`` may be called concurrently on one session and releases the GIL
(onnxruntime#114, PR #1042); builds run one at a time.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .deadline import Cancellation, Run, timeout_error, watchdog
from .errors import InferenceError, InvalidModelError, ResourceLimitError, first_line
from .footprint import ConstantFootprint, constant_footprint, parsed
from .forksafe import at_fork_in_child, park
from .limits import MiB, arena_full, arena_full_error, check_output, check_string_copies, request_memory_error
from .memory import process_rss, release_free_memory
from .metrics import METRICS, ran
from .records import TensorSpec
from .samples import identity_model
from .sessions import LoadedModel, SessionLRU
from .outputs import MapRows, json_data
from .tensors import NUMPY_DTYPES, input_specs
from .zipmap import all_float, strip

log = logging.getLogger(__name__)

# ORT's folder for a model's external data files when the model is given as bytes (default: the working directory);
# ONNX Runtime 1.21 and later (microsoft/onnxruntime#23557), hence the floor in pyproject.toml
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
FOLD_LIMIT = "optimization.constant_folding_max_output_size_in_bytes"  # ONNX Runtime's per-node folding cap
SHRINK = "memory.enable_memory_arena_shrinkage"
SHRINK_INTERVAL_S = 1.0  # a run returns the arena's free memory to the OS at most this often (it costs ~1.5 µs)
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


class Engine(SessionLRU):
    """LRU of ONNX Runtime sessions (``sessions``) bounded by ``max_sessions`` and ``max_session_bytes``; the only
    place that talks to ONNX Runtime. Byte limits (0: none) are the settings of the same names (module docstring)."""

    def __init__(self, max_sessions: int = 32, intra_op_num_threads: int = 1, providers: list[str] | None = None, *,
                 spinning: bool = False, max_session_bytes: int = 512 * MiB, max_constant_bytes: int = 64 * MiB,
                 max_arena_bytes: int = 1024 * MiB, max_output_bytes: int = 8 * MiB,
                 max_request_memory_bytes: int = 1024 * MiB) -> None:
        super().__init__(max_sessions, max_session_bytes)
        self.intra_op_num_threads = intra_op_num_threads
        self.spinning = spinning  # intra-op threads spin while waiting for work (ONNX Runtime's default)
        self.providers = providers or ["CPUExecutionProvider"]
        self.max_constant_bytes = max_constant_bytes
        self.max_output_bytes = max_output_bytes
        self.max_request_memory_bytes = max_request_memory_bytes
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
        self._build_lock = threading.Lock()  # one build at a time, so its RSS growth is its own
        at_fork_in_child(self._after_fork_in_child)

    def session_options(self, fold_limit: int = 0) -> ort.SessionOptions:
        """The ``SessionOptions`` every session of this engine uses (benchmarks give raw ORT the same); ``fold_limit``
        (bytes, 0: ONNX Runtime's default of 1 GiB) caps each constant-folded node's output."""
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.intra_op_num_threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.arena_bytes:
            so.add_session_config_entry("session.use_env_allocators", "1")
        if fold_limit:
            so.add_session_config_entry(FOLD_LIMIT, str(fold_limit))
        so.log_severity_level = 3  # errors only: ORT's warnings would go to the notebook's stderr
        return so

    def footprint(self, model: Any) -> ConstantFootprint:
        """Size the constants a session of ``model`` (an ``onnx.ModelProto``; None: bytes ``onnx`` cannot parse, left
        for ONNX Runtime to refuse) would compute (``footprint``). Raises ``InvalidModelError`` (400) when they exceed
        ``max_constant_bytes``, or when a request could make the model copy strings outside the arena without bound."""
        if model is None:
            return ConstantFootprint()
        footprint = constant_footprint(model)
        if self.max_constant_bytes:
            footprint.check(self.max_constant_bytes)
        footprint.check_strings()
        return footprint

    def create_session(self, model_bytes: bytes, footprint: ConstantFootprint | None = None) -> ort.InferenceSession:
        """Build a session from ONNX bytes. Raises ``InvalidModelError`` naming ONNX Runtime's complaint, or the
        constants the model would compute over ``max_constant_bytes`` (checked first, unless ``footprint`` is
        given: ``self.footprint(model)``).

        The bytes are all a session reads: external data (tensors kept in other files, which ORT would look for
        relative to the working directory) resolves under ``os.devnull``, where no file can be, so it fails to load.
        The registry refuses such models anyway (``modelfile``); this covers bytes stored before it did.
        """
        if not model_bytes:
            raise InvalidModelError("not a valid ONNX model: the file is empty")
        if footprint is None:
            footprint = self.footprint(parsed(model_bytes))
        fold_limit = footprint.fold_limit(self.max_constant_bytes) if self.max_constant_bytes else 0
        so = self.session_options(fold_limit)
        so.add_session_config_entry(EXTERNAL_DATA_FOLDER, os.devnull)
        try:
            return ort.InferenceSession(model_bytes, sess_options=so, providers=self.providers)
        except Exception as err:  # ORT raises pybind exceptions (InvalidProtobuf, Fail, InvalidGraph, ...)
            raise InvalidModelError(f"not a valid ONNX model ({len(model_bytes)} bytes): {first_line(err)}") from None

    def load(self, model_bytes: bytes) -> LoadedModel:
        """Build a session (``create_session``) of ``model_bytes`` without its ZipMap nodes (``zipmap.strip``), charged
        with the memory its build took: the process's RSS growth (builds run one at a time for this), at least the
        model's size plus the constants it computes."""
        model = parsed(model_bytes) if model_bytes else None
        footprint = self.footprint(model)
        zipmaps = strip(model) if model is not None else []
        if self._warn_own_arenas:
            self._warn_own_arenas = False
            log.warning("this process was forked while another thread was inside ONNX Runtime: its sessions use arenas "
                        "of their own, not the arena shared under max_arena_bytes (%d bytes), whose lock may have been "
                        "held at the fork", self.max_arena_bytes)
        with self._build_lock:
            before, start = process_rss(), time.perf_counter_ns()
            _in_ort.add(threading.get_ident())
            build = watchdog().building()
            try:
                session = self.create_session(model.SerializeToString() if zipmaps else model_bytes, footprint)
                if zipmaps and not all_float(session, zipmaps):  # ZipMap over another type: ONNX Runtime refuses it
                    session, zipmaps = self.create_session(model_bytes, footprint), []
            finally:
                _in_ort.discard(threading.get_ident())
                grown = process_rss() - before
                watchdog().built(build, grown)
                METRICS.loaded(time.perf_counter_ns() - start)
        return LoadedModel(session, max(grown, len(model_bytes) + footprint.computed_bytes), footprint.string_copies,
                           zipmaps)

    def inspect(self, sha256: str, model_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Load ``model_bytes``, keep the session warm under ``sha256`` and return (inputs, outputs) specs.

        Inputs are the required ones (``session.get_inputs()``), then the optional ones: initializers that are also
        graph inputs (``get_overridable_initializers()``), which a request may override; an optional input of a
        dtype ModelForge cannot feed is left out (it keeps its default); one declaring no shape has shape None.
        Raises ``InvalidModelError`` for bytes ONNX Runtime cannot load, and for models with a required input
        ModelForge cannot feed (a non-tensor input, or a dtype outside float16/32/64, (u)int8-64, bool, string).
        """
        loaded = self.load(model_bytes)
        inputs, optional = input_specs(loaded.session, lambda: parsed(model_bytes))
        for spec in inputs:
            if spec.dtype not in NUMPY_DTYPES:
                raise InvalidModelError(f"input {spec.name!r} has type {spec.dtype}, which ModelForge cannot feed")
        inputs += [spec for spec in optional if spec.dtype in NUMPY_DTYPES]
        self._install(sha256, loaded)
        return inputs, list(loaded.outputs)

    def run(
        self, sha256: str, load_bytes: Callable[[], bytes], feed: dict[str, np.ndarray], model_name: str = "",
        timeout: float = 0.0, cancel: Cancellation | None = None,
    ) -> dict[str, Any]:
        """Run the model on ``feed`` (validated arrays) and return ``{output name: JSON-safe value}``
        (``outputs.json_data`` of ``predict``). Raises what ``predict`` raises."""
        return json_data(self.predict(sha256, load_bytes, feed, model_name, timeout, cancel))

    def predict(
        self, sha256: str, load_bytes: Callable[[], bytes], feed: dict[str, np.ndarray], model_name: str = "",
        timeout: float = 0.0, cancel: Cancellation | None = None,
    ) -> dict[str, Any]:
        """Run the model on ``feed`` (validated arrays) and return ``{output name: value}`` as ``outputs`` documents:
        ndarrays as ONNX Runtime returns them, a ZipMap output as ``MapRows`` (``maps()``: ONNX Runtime's own dicts).

        ``timeout`` (s, 0 = none) bounds the run: past it the ``deadline.watchdog()`` sets ``RunOptions.terminate``
        (checked between nodes) and this raises ``InferenceTimeoutError`` (504); ``cancel.cancel()`` from another
        thread stops it the same way (``RequestCancelledError``, 499); a cancelled request does not start.
        Raises ``ResourceLimitError`` (413) when the run needs more than the arena has left, takes the process more
        than ``max_request_memory_bytes`` above its steady state (stopped by the watchdog), or its outputs hold more
        than ``max_output_bytes``; ``InferenceError`` (422) when ONNX Runtime rejects values that passed validation.
        """
        loaded, values, name = self.run_outputs(sha256, load_bytes, feed, model_name, timeout, cancel)
        if not loaded.zipmaps:
            return dict(zip(loaded.output_names, values))
        return {n: v if z is None else MapRows(z.rows(v, name), z.keys)
                for n, v, z in zip(loaded.output_names, values, loaded.zipmaps)}

    def run_outputs(
        self, sha256: str, load_bytes: Callable[[], bytes], feed: dict[str, np.ndarray], model_name: str = "",
        timeout: float = 0.0, cancel: Cancellation | None = None,
    ) -> tuple[LoadedModel, list[Any], str]:
        """The one session run behind ``predict``: (the loaded model, the session's outputs once their size is checked: a
        ZipMap's tensor where the model gives maps, the model's name for messages). Raises as ``predict``."""
        return self.run_loaded(self.session(sha256, load_bytes), feed, model_name or sha256[:12], timeout, cancel)

    def run_loaded(self, loaded: LoadedModel, feed: dict[str, np.ndarray], name: str, timeout: float = 0.0,
                   cancel: Cancellation | None = None) -> tuple[LoadedModel, list[Any], str]:
        """``run_outputs`` on a given loaded model (a reload's warm-up runs the new one before it is installed)."""
        if not timeout and cancel is None and not self.max_request_memory_bytes:
            try:
                values = self._run(loaded, feed, name, self._run_options())
            except ResourceLimitError:
                raise
            except Exception as err:
                raise _inference_error(err, name) from None
        else:
            values = self._watched(loaded, feed, name, timeout, cancel)
        if self.max_output_bytes:
            check_output(loaded.output_names, values, loaded.zipmaps, self.max_output_bytes, name)
        return loaded, values, name

    def _watched(self, loaded: LoadedModel, feed: dict[str, np.ndarray], name: str, timeout: float,
                 cancel: Cancellation | None) -> list[Any]:
        """``_run`` under the watchdog (timeout and memory budget) and ``cancel``."""
        options = ort.RunOptions()
        options.log_severity_level = 4  # a stopped run is not an error to log on stderr: the caller gets the error
        if self._run_options() is not None:
            options.add_run_config_entry(SHRINK, "cpu:0")
        if cancel is not None:
            cancel.attach(options, name)
        dog = watchdog()
        run = dog.start(options, timeout, self.max_request_memory_bytes)
        try:
            return self._run(loaded, feed, name, options)
        except Exception as err:
            raise self._stopped(run, err, name, timeout, cancel) from None
        finally:
            dog.finish(run)
            if cancel is not None:
                cancel.detach()

    def _stopped(self, run: Run, err: Exception, name: str, timeout: float, cancel: Cancellation | None) -> Exception:
        """The error a watched run that raised ``err`` answers: why it was stopped, else ONNX Runtime's complaint. After
        a stop, the arena's free regions and then the C heap's free pages go back to the OS (``limits``)."""
        if run.over or run.expired or (cancel is not None and cancel.cancelled):
            self._shrink()
            release_free_memory()
        if run.over:
            return request_memory_error(name, run.over, run.budget)
        if run.expired:
            return timeout_error(name, timeout)
        if cancel is not None and cancel.cancelled:
            return cancel.error(name)
        return err if isinstance(err, ResourceLimitError) else _inference_error(err, name)

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
            check_string_copies(loaded.string_copies, feed, self.arena_bytes, name)
        thread = threading.get_ident()
        _in_ort.add(thread)
        start = time.perf_counter_ns()
        try:  # counted: the run's duration and batch size (``metrics``)
            return ran(start, feed, self._run_in_arena(loaded, feed, name, options))
        finally:
            _in_ort.discard(thread)

    def _run_in_arena(self, loaded: LoadedModel, feed: dict[str, np.ndarray], name: str, options: Any) -> list[Any]:
        try:
            return loaded.session.run(loaded.run_names, feed, options)
        except Exception as err:
            if not self.arena_bytes or arena_full(err) is None:
                raise
        self._shrink()
        try:
            return loaded.session.run(loaded.run_names, feed, options)
        except Exception as err:
            asked = arena_full(err)
            if asked is None:
                raise
        raise arena_full_error(asked, self.arena_bytes, name)

    def _shrink(self) -> None:
        """Return the shared arena's free regions to the OS now: one run of a one-node model with shrinkage on."""
        if not self.arena_bytes:
            return
        if self._shrinker is None:
            self._shrinker = self.create_session(identity_model())
        self._shrinker.run(None, {"x": np.zeros(1, np.float32)}, self._shrink_options)

    def _after_fork_in_child(self) -> None:
        """In a forked child (after ``SessionLRU``'s own reset): a new build lock. Loaded sessions are kept, their memory
        shared copy-on-write: a session built and run before the fork gives the same outputs in the child, with
        intra_op_num_threads 1, 2 and 4 alike (ORT 1.32; its parallel sections let the calling thread run work no
        pool thread picked up).

        Unless another thread was inside ONNX Runtime at the fork (``_in_ort``) with the shared arena: its mutex may
        then be held for good in the child (3 children in 20 hung in ``session.run`` before this), so the child's
        sessions are rebuilt with arenas of their own (one warning is logged at the first build)."""
        self._build_lock = threading.Lock()
        if self.arena_bytes and (_in_ort or _arena_unusable):
            # the old sessions and shrinker parked: never run nor freed here (freeing returns memory to that arena)
            park(*self._drop_all(), self._shrinker)
            self._shrinker = None
            self.arena_bytes = 0
            self._warn_own_arenas = True


def _inference_error(err: Exception, model_name: str) -> InferenceError:
    return InferenceError(f"model {model_name!r} failed on this input: {first_line(err)}")


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


def quantize_dynamic(model: Any, op_types: list[str]) -> bytes:
    """ONNX bytes of ``model`` (an ``onnx.ModelProto``) with the constant weights of its ``op_types`` nodes in int8 by
    ONNX Runtime's dynamic quantisation (QInt8 weights per tensor, uint8 activations quantised at run time): here, as
    only this module imports onnxruntime; ``prepare`` checks the result. Raises what the quantiser raises."""
    from onnxruntime.quantization import QuantType, quantize_dynamic as quantize

    with tempfile.TemporaryDirectory(prefix="mf-quantize-") as tmp:
        out = os.path.join(tmp, "quantized.onnx")
        quantize(model, out, op_types_to_quantize=list(op_types), weight_type=QuantType.QInt8)
        return Path(out).read_bytes()
