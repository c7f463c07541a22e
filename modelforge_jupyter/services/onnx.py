"""``from modelforge_jupyter.services.onnx import ONNXService``: the import path the product's performance
documentation profiles (``python -m cProfile`` on the engine alone). The service is ``core.onnx_service``."""

from ..core.onnx_service import InferenceResult, ONNXService  # noqa: F401

__all__ = ["InferenceResult", "ONNXService"]
