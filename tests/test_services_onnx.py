"""The documented profiling entry point: ``ONNXService().run_inference(Path, {"input": [[1.0] * 10]})``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelforge_jupyter.core.errors import InvalidInputError
from modelforge_jupyter.services.onnx import ONNXService

from .mf_plugin import mf_raw_run


@pytest.fixture
def gemm_model(tmp_path) -> Path:
    """A linear model y = x·W + b with input "input" float32 [N, 10] and output "output" [N, 1]."""
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.normal(size=(10, 1)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.array([0.5], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "b"], ["output"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        initializer=[W, b],
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    return path


def test_run_inference_as_documented(gemm_model):
    service = ONNXService()

    result = service.run_inference(gemm_model, {"input": [[1.0] * 10]})

    (raw,) = mf_raw_run(gemm_model, {"input": np.ones((1, 10), np.float32)})
    assert result.output_data == {"output": raw.tolist()}
    assert result.inference_time_ms > 0
    with pytest.raises(InvalidInputError, match=r"input 'input': expected float32 \[\?, 10\]"):
        service.run_inference(gemm_model, {"input": [[1.0] * 9]})


def test_documented_profile_script_runs_under_cprofile(gemm_model, tmp_path):
    script = tmp_path / "profile_prediction.py"
    script.write_text(
        "from pathlib import Path\n"
        "from modelforge_jupyter.services.onnx import ONNXService\n\n"
        'if __name__ == "__main__":\n'
        "    service = ONNXService()\n"
        f"    model_path = Path({str(gemm_model)!r})\n"
        '    input_data = {"input": [[1.0] * 10]}\n'
        "    result = service.run_inference(model_path, input_data)\n"
        '    print(f"Inference time: {result.inference_time_ms:.2f}ms")\n'
    )

    proc = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(tmp_path / "profile.stats"), str(script)],
        capture_output=True, text=True, timeout=60,
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Inference time: ") and proc.stdout.strip().endswith("ms")
    assert (tmp_path / "profile.stats").stat().st_size > 0
