"""ModelForge for Jupyter: low-latency ONNX model serving in the kernel and over HTTP.

Entry points only; heavy modules (onnxruntime, SQLAlchemy, redis) load lazily on first use.
"""

__version__ = "0.1.0"

__all__ = ["ModelForge", "__version__"]


def __getattr__(name: str):
    if name == "ModelForge":
        from .api import ModelForge

        return ModelForge
    raise AttributeError(f"module 'modelforge_jupyter' has no attribute {name!r}")
