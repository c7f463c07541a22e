"""``ONNXService``: run an ONNX file directly, as the product's performance documentation profiles it.

    from pathlib import Path
    from modelforge_jupyter.services.onnx import ONNXService

    result = ONNXService().run_inference(Path("model.onnx"), {"input": [[1.0] * 10]})
    print(f"Inference time: {result.inference_time_ms:.2f}ms")

It uses the same engine code, input validation and output conversion as ``ModelForge.predict``, without the registry
or the cache: the path for ``python -m cProfile`` on the engine alone.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import Engine
from .errors import ModelForgeError
from .modelfile import read_model_file
from .records import TensorSpec
from .settings import Settings
from .tensors import prepare_feed


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """``output_data``: ``{output name: JSON-safe value}``; ``inference_time_ms``: wall time of the call (ms),
    validation and session run included (the model load too, on a file's first run)."""

    output_data: dict[str, Any]
    inference_time_ms: float
    sha256: str


class ONNXService:
    """Run ONNX files by path on one ``Engine`` (sessions stay loaded, keyed by the file's sha256)."""

    def __init__(self, engine: Engine | None = None) -> None:
        if engine is None:
            s = Settings()
            engine = Engine(s.max_sessions, s.intra_op_num_threads, s.providers)
        self.engine = engine
        self._files: dict[tuple[str, int, int], tuple[str, list[TensorSpec]]] = {}
        self._lock = threading.Lock()

    def run_inference(self, model_path: Path | str, input_data: Any) -> InferenceResult:
        """Run the model at ``model_path`` on ``input_data`` (``{input name: nested list | ndarray}``, or the bare
        value for a single-input model). Raises ``ModelForgeError`` subclasses as ``ModelForge.predict`` does."""
        start = time.perf_counter()
        sha256, inputs = self._load(Path(model_path))
        feed = prepare_feed(inputs, input_data)
        output_data = self.engine.run(sha256, lambda: read_model_file(Path(model_path)), feed, Path(model_path).name)
        return InferenceResult(output_data, (time.perf_counter() - start) * 1000.0, sha256)

    def _load(self, path: Path) -> tuple[str, list[TensorSpec]]:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ModelForgeError(f"no model file at {str(path)!r}") from None
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        with self._lock:
            known = self._files.get(key)
        if known is None:
            data = read_model_file(path)  # external data beside it packed in: sessions read only bytes
            sha256 = hashlib.sha256(data).hexdigest()
            inputs, _outputs = self.engine.inspect(sha256, data)
            known = (sha256, inputs)
            with self._lock:
                self._files[key] = known
        return known
