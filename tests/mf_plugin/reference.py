"""Real models and the reference every answer is compared with: raw onnxruntime, outside ModelForge.

This is the one test module that imports onnxruntime: a test compares ModelForge's answer with ``mf_raw_run`` (or
``mf_raw_outputs``, the same as ModelForge would put it in JSON), never with another ModelForge call.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "modelforge_jupyter" / "sample_models"


def mf_raw_session(model: Path | bytes, engine_options: bool = True) -> ort.InferenceSession:
    """A raw onnxruntime session of ``model`` (a path or ONNX bytes): with the product's SessionOptions (tree
    ensembles sum in another order with another thread count) on the CPU provider, or with ``engine_options=False``
    onnxruntime's defaults throughout."""
    from modelforge_jupyter.core.engine import Engine

    src = str(model) if isinstance(model, Path) else model
    if not engine_options:
        return ort.InferenceSession(src)
    return ort.InferenceSession(src, sess_options=Engine().session_options(), providers=["CPUExecutionProvider"])


def mf_raw_run(model: Path | bytes, feed: dict[str, np.ndarray]) -> list:
    """Raw onnxruntime on the same model and input: the reference every prediction is compared with. Returns
    ``session.run(None, feed)``: numpy arrays, and lists of dicts for ZipMap outputs, in the model's output order."""
    return mf_raw_session(model).run(None, feed)


def mf_zipmap(maps, none_for_nan: bool = False) -> list[dict]:
    """skl2onnx's ZipMap output (a list of ``{class: probability}``) as ModelForge returns it: keys as strings, and
    with ``none_for_nan`` a NaN (not JSON) as None, as a row-by-row answer holds it."""
    if none_for_nan:
        return [{str(k): (v if math.isfinite(v) else None) for k, v in m.items()} for m in maps]
    return [{str(k): v for k, v in m.items()} for m in maps]


def mf_raw_outputs(model: Path | bytes, feed: dict[str, np.ndarray]) -> dict:
    """Raw onnxruntime's outputs as ModelForge's ``output_data`` holds them: ``{output name: nested lists}``, a ZipMap
    output as ``mf_zipmap`` gives it."""
    session = mf_raw_session(model)
    values = session.run(None, feed)
    return {out.name: (value.tolist() if isinstance(value, np.ndarray) else mf_zipmap(value))
            for out, value in zip(session.get_outputs(), values)}


def mf_raw_providers() -> list[str]:
    """The execution providers of this onnxruntime build, as onnxruntime itself lists them."""
    return ort.get_available_providers()


@pytest.fixture(scope="session")
def mf_silero_path() -> Path:
    """silero-vad's pretrained ONNX network, shipped in its PyPI wheel (installed with --no-deps)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        pytest.fail("silero-vad is not installed: pip install --no-deps silero-vad (the README's setup does)")
    return Path(spec.origin).parent / "data" / "silero_vad.onnx"
