"""Test models built with ``onnx.helper`` for what the sample models do not show: every dtype, a run as long as asked,
an optional input, tensors kept as external data."""

from __future__ import annotations

import numpy as np

FOREVER = 1e9  # trips of ``mf_spin_model``: hours of computing, so only a timeout or a cancellation ends the run


def mf_identity_model(dtype: str, shape: list, name: str = "x"):
    """A one-node ONNX model (Identity) with input ``name`` of ``dtype``/``shape`` and output ``y``."""
    from onnx import TensorProto, helper

    elem = {
        "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
        "int64": TensorProto.INT64, "int32": TensorProto.INT32, "int8": TensorProto.INT8,
        "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL, "string": TensorProto.STRING,
    }[dtype]
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["y"])],
        f"identity_{dtype}",
        [helper.make_tensor_value_info(name, elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mf_unshaped_model():
    """``y = Relu(x) * 2`` (as ``Relu(x) + Relu(x)``) with x and y float32 declared with no shape at all: the
    ValueInfos have no shape field, not even a rank, as some exporters write them (ONNX Runtime reports ``[]``)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "r"], ["y"])], "unshaped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert not model.graph.input[0].type.tensor_type.HasField("shape")
    return model


def mf_constant_of_shape_model(n: int):
    """``y = x + sum(ConstantOfShape([n]))`` (x, y float32 [1]): a model computing an ``n``-element float32 constant
    (4n bytes) that it reduces to one number, so only the model's build holds it (constant folding sizes it)."""
    from onnx import TensorProto, helper, numpy_helper

    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    shape = numpy_helper.from_array(np.array([n], np.int64), "shape")
    nodes = [helper.make_node("Constant", [], ["shape"], value=shape),
             helper.make_node("ConstantOfShape", ["shape"], ["big"], value=fill),
             helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0), helper.make_node("Add", ["x", "r"], ["y"])]
    graph = helper.make_graph(nodes, "memory", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mf_spin_model(n: int = 256):
    """A model that computes for as long as its input says: one input ``x`` float32 [N, n]; ``y = tanh(... tanh(x @
    W) ... @ W)`` applied ``int(max(x))`` times (a Loop of a 256x256 MatMul + Tanh). ``mf_spin_input(3)`` runs 3
    iterations (well under 1 ms), ``mf_spin_input(FOREVER)`` for hours."""
    from onnx import TensorProto, helper

    w = (np.random.default_rng(0).standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_in", "w"], ["mm"]), helper.make_node("Tanh", ["mm"], ["x_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor("w", TensorProto.FLOAT, [n, n], w.ravel())],
    )
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
         helper.make_node("Cast", ["top"], ["trips"], to=TensorProto.INT64),
         helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)],
        "spin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mf_spin_input(trips: float, rows: int = 1) -> np.ndarray:
    """Input of ``mf_spin_model``: float32 [rows, 256] whose max is ``trips`` (the iterations it runs)."""
    x = np.zeros((rows, 256), np.float32)
    x[:, 1] = 0.5
    x[0, 0] = trips
    return x


def mf_scale_model():
    """y = x * scale, where ``scale`` (float32 scalar) is a graph input with an initializer: 2.0 unless given."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [2.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


MF_SECRET = b"SECRET-bytes-outside-the-registry"  # what a model's external data must never read


def mf_external_model(where: str, location: str = "README.md", length: int = 8):
    """A model whose output ``y`` (uint8 [length]) is a tensor kept as external data at ``location``, placed
    ``where``: a main-graph initializer, an If branch's initializer, a Constant's attribute, a sparse initializer."""
    from onnx import TensorProto, helper

    def external(name: str) -> TensorProto:
        tensor = helper.make_tensor(name, TensorProto.UINT8, [length], vals=b"\0" * length, raw=True)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor

    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [length])
    inputs, initializers, sparse = [], [], []
    if where == "initializer":
        nodes, initializers = [helper.make_node("Identity", ["W"], ["y"])], [external("W")]
    elif where == "constant":
        nodes = [helper.make_node("Constant", [], ["y"], value=external("W"))]
    elif where == "sparse":
        values = external("values")
        indices = helper.make_tensor("indices", TensorProto.INT64, [length], list(range(length)))
        sparse = [helper.make_sparse_tensor(values, indices, [length])]
        nodes = [helper.make_node("Identity", ["values"], ["y"])]
    else:  # an If whose branches read W from their own initializers
        def branch(name):
            return helper.make_graph([helper.make_node("Identity", [f"W{name}"], ["y"])], name, [], [y],
                                     [external(f"W{name}")])

        inputs = [helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch("then"), else_branch=branch("else"))]
    graph = helper.make_graph(nodes, f"external_{where}", inputs, [y], initializers, sparse_initializer=sparse)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mf_assert_registers_refused(forge, cases) -> None:
    """Each ``(register keyword arguments, error class, message start)`` of ``cases`` is refused by
    ``forge.register("m", ...)`` with exactly that class, status 400 and a one-line message starting so; and the
    registry is left empty."""
    import pytest

    for kwargs, cls, start in cases:
        with pytest.raises(cls) as info:
            forge.register("m", **kwargs)
        assert type(info.value) is cls and info.value.status == 400 and "\n" not in str(info.value)
        assert str(info.value).startswith(start), str(info.value)
    assert forge.models() == []
