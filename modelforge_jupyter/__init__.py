"""ModelForge for Jupyter: low-latency ONNX model serving in the kernel and over HTTP.

Entry points only; heavy modules (onnxruntime, SQLAlchemy, redis) load lazily on first use.
"""

from ._version import __version__

__all__ = ["ModelForge", "Settings", "__version__"]


def _jupyter_server_extension_points() -> list[dict]:
    """The Jupyter server extension (``jupyter server`` loads it when pip installs the package)."""
    from .server_extension import ModelForgeApp

    return [{"module": "modelforge_jupyter.server_extension", "app": ModelForgeApp}]


def load_ipython_extension(ipython) -> None:
    """``%load_ext modelforge_jupyter``: register the magics (``%mf_predict``, ``%mf_bench``, ``%mf_models``...)."""
    from .kernel.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext modelforge_jupyter``: close the magics' ModelForge and remove the magics."""
    from .kernel.magics import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name: str):
    if name == "ModelForge":
        from .core.api import ModelForge

        return ModelForge
    if name == "Settings":
        from .core.settings import Settings

        return Settings
    raise AttributeError(f"module 'modelforge_jupyter' has no attribute {name!r}")
