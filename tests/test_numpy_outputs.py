"""Outputs stay NumPy from the engine to the door (``core/outputs.py``): ``PredictionResult.outputs`` equals raw ONNX
Runtime's, a cache hit returns the same arrays without a JSON decode, the cached value is the tagged binary form
(``pack``), and a value another version of ModelForge wrote is a miss, never an error."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelforge_jupyter.core.outputs import TAG, MapRows, json_data, json_ready, pack, unpack
from modelforge_jupyter.core.protocol import encode_result
from modelforge_jupyter.core.records import PredictionResult
from modelforge_jupyter.core.tensors import json_safe

from .mf_plugin import SAMPLES, mf_cache_value, mf_identity_model

IRIS, RF = SAMPLES / "iris.onnx", SAMPLES / "breast_cancer_rf.onnx"
X_IRIS = np.float32([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])
VALUES = {
    "f32": np.float32([[0.1, np.nan], [np.inf, -np.inf]]),
    "f16": np.float16([1.5, -0.0, 65504]),
    "f64": np.float64([1e300, 5e-324]),
    "i64": np.int64([[-(2**63), 2**63 - 1]]),
    "u8": np.uint8([0, 255]),
    "bool": np.array([True, False]),
    "rank0": np.array(3.25, np.float32),
    "strided": np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
    "text": np.array([["a", "ü€"], ["", "x" * 300]], dtype=object),
    "maps": MapRows(np.float32([[0.25, 0.75], [np.nan, 1.0]]), (0, 1)),
    "named_maps": MapRows(np.float32([[0.5, 0.5]]), ("cat", "dog")),
    "sequence": [np.float32([1.0, 2.0]), np.float32([3.0])],
}


def test_pack_and_unpack_keep_every_value_bit_for_bit():
    # Given outputs of every kind (NaN and ±Inf, float16, extreme ints, rank 0, a strided view, strings, maps)
    # When they are packed as a cache value and read back
    data = pack(VALUES)
    back = unpack(data)
    # Then the value carries the tag, and every output comes back equal, same dtype and shape, writable
    assert data[:4] == TAG and list(back) == list(VALUES)
    for name, want in VALUES.items():
        got = back[name]
        if isinstance(want, MapRows):
            assert got.keys == want.keys
            np.testing.assert_array_equal(got.rows, want.rows)
            assert got.maps()[0] == want.maps()[0]
        elif isinstance(want, list):
            assert got == json_safe(want)  # a sequence is kept in its JSON form
        else:
            assert (got.dtype, got.shape) == (want.dtype, want.shape), name
            np.testing.assert_array_equal(got, want)
            assert got.dtype.kind == "O" or got.flags.writeable
    # and the JSON form of what came back is the JSON form of what went in
    assert orjson.dumps(json_data(back)) == orjson.dumps(json_data(VALUES))


@pytest.mark.parametrize("data", [
    None, b"", b"MFO", orjson.dumps({"y": [[1.0]]}), b"MFO1\xff\xff\xff\x7f", TAG + b"\x04\0\0\0{bad",
    pack({"y": np.float32([1, 2])})[:-3],
])
def test_a_value_this_version_did_not_write_is_a_miss(data):
    # an older process's orjson value, a foreign or truncated value: None (a miss), never an exception
    assert unpack(data) is None


def test_json_ready_encodes_to_the_json_of_output_data():
    # orjson straight from the arrays gives the same JSON as output_data's nested lists (float32 widened, NaN null)
    for name, value in VALUES.items():
        fast = orjson.dumps(json_ready(value), option=orjson.OPT_SERIALIZE_NUMPY)
        assert orjson.loads(fast) == orjson.loads(orjson.dumps(json_data({name: value})[name])), name
    result = PredictionResult("p", "m", 1, None, 0.1, False, "m", outputs=dict(VALUES))
    assert orjson.loads(encode_result(result)) == orjson.loads(orjson.dumps(result.to_dict()))


def test_outputs_equal_raw_onnxruntime_s_on_a_miss_and_on_a_hit(mf_forge):
    # Given the forest and the iris classifier (ZipMap) registered, and raw sessions with the engine's options
    mf_forge.register("rf", RF)
    mf_forge.register("iris", IRIS)
    x_rf = np.random.default_rng(0).normal(size=(50, 30)).astype(np.float32) * 100
    cases = {"rf": {"float_input": x_rf}, "iris": {"float_input": X_IRIS}}
    for name, feed in cases.items():
        raw = mf_forge.raw_session(name)
        want = dict(zip([o.name for o in raw.get_outputs()], raw.run(None, feed)))
        # When it is predicted twice with NumPy in
        miss, hit = mf_forge.predict(name, feed), mf_forge.predict(name, feed)
        # Then both give raw ONNX Runtime's arrays (ZipMap: its very maps), and the JSON form of them
        assert (miss.cached, hit.cached) == (False, True)
        for result in (miss, hit):
            for output, value in want.items():
                got = result.outputs[output]
                if isinstance(value, list):
                    assert isinstance(got, MapRows) and got.maps() == value
                else:
                    assert got.dtype == value.dtype
                    np.testing.assert_array_equal(got, value)
            assert result.output_data == {k: json_safe(v) for k, v in want.items()}


@pytest.mark.parametrize("foreign", [
    orjson.dumps({"y": [[9.0, 9.0]]}),  # an older version's value: the JSON of output_data
    pack({}),  # tagged, but no outputs
    pack({"z": np.float32([[9, 9]])}),  # tagged, another model's outputs
    pack({"y": np.float32([[9, 9]]), "z": np.float32([1])}),  # tagged, one output too many
])
def test_an_entry_another_writer_left_is_a_miss_and_is_replaced(mf_forge, foreign):
    # Given the cache entry of a prediction holding a value this model version did not write
    model = mf_forge.register("id", mf_identity_model("float32", [None, 2]))
    x = np.float32([[1, 2]])
    key = mf_forge.cache_key("id", x)
    mf_forge.cache.set(key, foreign, 60, model.id)
    # When the same input is predicted
    result = mf_forge.predict("id", x)
    # Then it is a miss computed by the engine (not the old value, not an error), and the entry now holds the new form
    assert not result.cached and result.output_data == {"y": [[1.0, 2.0]]}
    assert unpack(mf_cache_value(mf_forge, key))["y"].tolist() == [[1.0, 2.0]]
    assert mf_forge.predict("id", x).cached


def test_a_result_built_from_json_gives_arrays_and_one_built_from_arrays_gives_json():
    from_json = PredictionResult("p", "m", 1, {"y": [[1.0, 2.0]], "p": [{"0": 0.5}], "n": [None, 1.0]})
    assert from_json.outputs["y"].dtype == np.float64 and from_json.outputs["p"] == [{"0": 0.5}]
    assert from_json.outputs["n"] == [None, 1.0]  # a NaN sent as null stays as it came
    from_arrays = PredictionResult("p", "m", 1, outputs={"y": np.float32([[np.nan, 1]])})
    assert from_arrays.output_data == {"y": [[None, 1.0]]}
    assert from_arrays == PredictionResult("p", "m", 1, {"y": [[None, 1.0]]})
