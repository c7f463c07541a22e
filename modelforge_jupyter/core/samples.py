"""Sample models: the committed skl2onnx files (``SAMPLE_MODELS``), and a compute-bound MLP built on demand (too big
to commit).

``build_wide_mlp`` needs the ``onnx`` package (in the ``test`` extra); its weights come from a fixed seed, so every
build is the same model.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


# The committed sample models (built by scripts/build_models.py with skl2onnx), by the name the doors register them
# under: the README's "Sample models" describes each. The CLI's bench measures these; the demo registers them.
SAMPLE_MODELS = {"iris": "iris.onnx", "breast_cancer_rf": "breast_cancer_rf.onnx", "diabetes": "diabetes.onnx"}
NEXT_VERSIONS = {"iris": "iris_v2.onnx"}  # a second version of a sample model: what an update shows


def sample_path(filename: str) -> Path:
    """Path of a sample model shipped in the package (``modelforge_jupyter/sample_models``)."""
    return Path(str(files("modelforge_jupyter") / "sample_models" / filename))


def identity_model() -> bytes:
    """ONNX bytes of ``y = Identity(x)``, float32 ``[1]``: the engine's shrinker's model."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "shrink", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def build_wide_mlp(features: int = 256, hidden: int = 2048, classes: int = 10, seed: int = 0,
                   layers: int = 2) -> bytes:
    """ONNX bytes of a float32 MLP ``input [N, features] -> hidden (x layers) -> softmax [N, classes]``.

    With the defaults its weights are 4.7 M floats (19 MB), so a batch-1 run reads 19 MB and takes ~1-3 ms on one
    core, while a batch of 32 costs little more: the model the dynamic batcher is measured on. Each extra layer adds
    ``hidden**2`` floats (16 MB at 2048).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [features, *[hidden] * layers, classes]
    nodes, inits, x = [], [], "input"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        W = numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}")
        B = numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}")
        inits += [W, B]
        y = f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [y]))
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [y], [f"{y}_relu"]))
            y = f"{y}_relu"
        x = y
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, "wide_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()
