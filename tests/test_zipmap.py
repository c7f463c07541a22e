"""ZipMap outputs (skl2onnx classifiers' ``seq(map(int64|string, tensor(float)))``): the engine runs the graph without
its ZipMap nodes and builds the maps itself after the answer's size is checked (``core/zipmap.py``). The maps, their
key order and the specs a model reports are raw onnxruntime's on the original model."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.engine import Engine
from modelforge_jupyter.core.errors import InferenceError, ResourceLimitError
from modelforge_jupyter.core.outputs import MapRows
from modelforge_jupyter.core.tensors import json_safe, spec_from_ort

from .mf_plugin import SAMPLES, MiB, mf_peak_rss_growth, mf_raw_run, mf_raw_session

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]


def _maps_type(key: int) -> onnx.TypeProto:
    return helper.make_sequence_type_proto(helper.make_map_type_proto(key, helper.make_tensor_type_proto(
        TensorProto.FLOAT, [])))


def zipmap_model(shape: list, keys: str = "ints", labels: list | None = None, extra: bool = False) -> onnx.ModelProto:
    """``y = ZipMap(x)`` with ``labels``; ``extra``: ``x`` (a graph input) is an output too, before ``y``."""
    labels = labels or ([2, 0, 7] if keys == "ints" else ["setosa", "ünï", "Z"])
    attr = {"classlabels_int64s": labels} if keys == "ints" else {"classlabels_strings": labels}
    key_type = TensorProto.INT64 if keys == "ints" else TensorProto.STRING
    nodes = [helper.make_node("ZipMap", ["x"], ["y"], domain="ai.onnx.ml", **attr)]
    outputs = [helper.make_value_info("y", _maps_type(key_type))]
    if extra:
        outputs.insert(0, helper.make_tensor_value_info("x", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "zipmap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs)
    return helper.make_model(graph, opset_imports=OPSETS, ir_version=8)


def rows_from_request() -> onnx.ModelProto:
    """The issue's bomb: ``ZipMap(ConstantOfShape(shape))``, the shape a request's value: a 61-byte request asks 10⁶
    maps."""
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [0.5])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["p"], value=fill),
         helper.make_node("ZipMap", ["p"], ["y"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])],
        "zip", [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_value_info("y", _maps_type(TensorProto.INT64))])
    return helper.make_model(graph, opset_imports=OPSETS, ir_version=8)


def _x(rows: int, columns: int, poison: float | None = None) -> np.ndarray:
    x = np.random.default_rng(rows).uniform(-2, 2, (rows, columns)).astype(np.float32)
    if poison is not None:
        x[rows // 2, 1] = poison
    return x


CASES = {  # name: (model bytes, feed)
    "iris": (SAMPLES.joinpath("iris.onnx").read_bytes(), {"float_input": _x(50, 4)}),
    "int labels unsorted": (zipmap_model([None, 3]), {"x": _x(20, 3)}),
    "int labels repeated": (zipmap_model([None, 4], labels=[5, 1, 5, -3]), {"x": _x(7, 4)}),
    "string labels": (zipmap_model([None, 3], "strings"), {"x": _x(9, 3)}),
    "string labels repeated": (zipmap_model([None, 3], "strings", ["b", "a", "b"]), {"x": _x(4, 3)}),
    "one row, 1-D": (zipmap_model([3]), {"x": _x(1, 3)[0]}),
    "NaN and Inf": (zipmap_model([None, 3], "strings"), {"x": _x(6, 3, math.nan) * np.float32([1, 1, np.inf])}),
    "input also an output": (zipmap_model([None, 3], extra=True), {"x": _x(5, 3)}),
}


def _items(row: dict) -> list[tuple]:
    """A map's entries in order, with their key types, NaN comparable."""
    return [(type(k), k, v if v == v else "NaN") for k, v in row.items()]


@pytest.mark.parametrize("case", list(CASES))
def test_maps_are_raw_onnxruntime_s(case):
    model, feed = CASES[case]
    data = model if isinstance(model, bytes) else model.SerializeToString()
    raw = mf_raw_run(data, feed)
    engine = Engine()
    engine.inspect("m", data)

    outputs = engine.predict("m", lambda: data, feed)
    names, values = list(outputs), [v.maps() if isinstance(v, MapRows) else v for v in outputs.values()]
    answer = engine.run("m", lambda: data, feed)

    for got, want in zip(values, raw):
        if isinstance(want, list):  # the maps: same keys, values, types and order as onnxruntime's own
            assert [_items(m) for m in got] == [_items(m) for m in want]
        else:
            np.testing.assert_array_equal(got, want)
    assert answer == {name: json_safe(value) for name, value in zip(names, raw)}


@pytest.mark.parametrize("case", ["iris", "string labels", "input also an output"])
def test_output_specs_are_the_original_graph_s(case, mf_embedded_settings):
    model, _feed = CASES[case]
    data = model if isinstance(model, bytes) else model.SerializeToString()
    raw = [spec_from_ort(node) for node in mf_raw_session(data, engine_options=False).get_outputs()]
    with ModelForge(**mf_embedded_settings) as mf:
        record = mf.register("m", data)
    assert record.outputs == raw
    assert raw[-1].dtype.startswith("seq(map(")


def test_rows_zipmap_refuses_fail_as_onnxruntime_does():
    data = zipmap_model([None, None]).SerializeToString()  # 3 labels; rows of any length get through validation
    with pytest.raises(Exception, match="features_per_batch"):
        mf_raw_run(data, {"x": _x(2, 2)})
    engine = Engine()
    engine.inspect("m", data)

    with pytest.raises(InferenceError) as refused:
        engine.run("m", lambda: data, {"x": _x(2, 2)})

    assert refused.value.status == 422 and "rows of 3 values" in str(refused.value) and "[2, 2]" in str(refused.value)


def test_maps_are_sized_before_they_are_built(mf_warm_engine):
    # Given ZipMap(ConstantOfShape(shape)), the shape a request's value, and answers limited to 1 MiB
    engine = Engine(max_output_bytes=MiB)
    data = rows_from_request().SerializeToString()
    engine.inspect("zip", data)
    assert engine.run("zip", lambda: data, {"shape": np.array([2, 2], np.int64)}) == {"y": [{"0": 0.5, "1": 0.5}] * 2}
    errors: list = []

    def ask() -> None:
        with pytest.raises(ResourceLimitError) as refused:
            engine.run("zip", lambda: data, {"shape": np.array([100_000, 2], np.int64)})
        errors.append(refused.value)

    # When a request asks 10⁵ maps: 3.2 MB as counted, ~46 MB of Python dicts had onnxruntime built them
    grown = mf_peak_rss_growth(ask)

    # Then it is refused from the 800 kB tensor, before any map exists
    assert grown < 4 * MiB, grown
    assert errors[0].status == 413 and "3200000 bytes" in str(errors[0]) and "'y' 100000 maps of 2 classes" in str(
        errors[0])
