"""Input conversion, validation messages and JSON-safe outputs, through the API and against raw onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.errors import InvalidInputError

from .mf_plugin import SAMPLES, mf_identity_model, mf_raw_run, mf_scale_model, mf_unshaped_model, mf_zipmap

CASES = {  # dtype: (nested-list input, numpy dtype raw onnxruntime gets)
    "float32": ([[1, 2.5, -3]], np.float32),
    "float64": ([[1e300, 2.5, -3]], np.float64),
    "float16": ([[1, 0.5, 65504]], np.float16),
    "int64": ([[2**40, -7, 0]], np.int64),
    "int32": ([[2**31 - 1, -7, 3.0]], np.int32),
    "int8": ([[127, -128, 5]], np.int8),
    "uint8": ([[255, 0, 7]], np.uint8),
    "bool": ([[True, False, 1]], np.bool_),
    "string": ([["setosa", "", "ünïcode"]], object),
}


@pytest.fixture
def forge(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings) as mf:
        yield mf


@pytest.mark.parametrize("dtype", list(CASES))
def test_nested_lists_convert_to_declared_dtype_and_match_raw(forge, dtype):
    model = mf_identity_model(dtype, [None, 3])
    rec = forge.register(f"id-{dtype}", model.SerializeToString())
    values, np_dtype = CASES[dtype]

    first = forge.predict(rec.name, {"x": values})
    hit = forge.predict(rec.name, {"x": values})

    (raw,) = mf_raw_run(model.SerializeToString(), {"x": np.array(values, dtype=np_dtype)})
    assert rec.inputs[0].dtype == dtype
    assert first.output_data["y"] == raw.tolist()
    assert hit.cached is True and hit.output_data == first.output_data
    orjson.dumps(first.output_data)  # JSON-encodable as is


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        ("float32", [["a", "b", "c"]], "input 'x': expected float32 [?, 3], got strings of shape [1, 3]"),
        ("float32", [[1, None, 3]], "got mixed or non-numeric values"),
        ("float32", [[1, 2], [3]], "ragged"),
        ("float32", [1, 2, 3], "(rank 2), got shape [3]; a single sample needs a batch"),
        ("float32", [[1, 2, 3, 4]], "got shape [1, 4] (axis 1 must be 3)"),
        ("float32", np.zeros((0, 3), np.float32), "empty batch"),
        ("int64", [[1.5, 2, 3]], "input 'x': expected int64 [?, 3], got floats of shape [1, 3] with non-integer values"),
        ("int8", [[300, 1, 2]], "outside int8's range"),
        ("bool", [[2, 0, 1]], "bool inputs take true/false or 0/1"),
        ("string", [[1, 2, 3]], "string inputs take text values"),
    ],
)
def test_bad_input_names_input_expected_and_given(forge, dtype, value, message):
    forge.register("m", mf_identity_model(dtype, [None, 3]).SerializeToString())

    with pytest.raises(InvalidInputError) as err:
        forge.predict("m", {"x": value})

    assert message in str(err.value)
    assert err.value.status == 400


def test_wrong_or_missing_input_names(forge, mf_silero_path):
    forge.register("silero", mf_silero_path, sample={"input": np.zeros((1, 512), np.float32),
                                                     "state": np.zeros((2, 1, 128), np.float32), "sr": 16000})

    with pytest.raises(InvalidInputError, match="unknown: 'audio'; missing: 'input'"):
        forge.predict("silero", {"audio": [[0.0]], "state": np.zeros((2, 1, 128)), "sr": 16000})
    with pytest.raises(InvalidInputError, match="the model has 3 inputs .* pass a dict"):
        forge.predict("silero", [[0.0] * 512])
    with pytest.raises(InvalidInputError, match=r"input 'state': expected float32 \[2, \?, 128\]"):
        forge.predict("silero", {"input": [[0.0] * 512], "state": np.zeros((3, 1, 128)), "sr": 16000})


def test_non_finite_outputs_become_null_from_engine_and_cache(forge):
    model = mf_identity_model("float32", [None, 3]).SerializeToString()
    forge.register("nan", model)
    X = np.array([[math.nan, math.inf, -1.5]], np.float32)

    first = forge.predict("nan", X)
    hit = forge.predict("nan", X)

    assert first.output_data == {"y": [[None, None, -1.5]]} == hit.output_data
    assert hit.cached is True
    assert orjson.loads(orjson.dumps(first.output_data)) == first.output_data


@pytest.mark.parametrize("poison", [None, math.nan], ids=["finite", "nan-row"])
def test_zipmap_rows_get_string_keys_and_raw_values(forge, poison):
    """ZipMap maps: the fast path (all finite) and the row-by-row path (a NaN row) both give raw ORT's values under
    string keys, NaN as None, identical from the cache."""
    forge.register("iris", SAMPLES / "iris.onnx")
    X = np.random.default_rng(3).uniform(0, 5, (50, 4)).astype(np.float32)
    if poison is not None:
        X[7] = poison
    _, raw_maps = mf_raw_run(SAMPLES / "iris.onnx", {"float_input": X})

    first = forge.predict("iris", X)
    hit = forge.predict("iris", X)

    expected = mf_zipmap(raw_maps, none_for_nan=True)
    assert first.output_data["output_probability"] == expected == hit.output_data["output_probability"]
    assert hit.cached is True
    assert all(list(row) == ["0", "1", "2"] for row in first.output_data["output_probability"])
    if poison is not None:
        assert first.output_data["output_probability"][7] == {"0": None, "1": None, "2": None}


def test_numpy_input_of_declared_dtype_is_used_without_conversion(forge):
    forge.register("iris", SAMPLES / "iris.onnx")
    X = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)

    via_array = forge.predict("iris", X, use_cache=False)
    via_dict_other_order = forge.predict("iris", {"float_input": X.astype(np.float64)})

    assert via_array.output_data == via_dict_other_order.output_data
    assert via_array.output_data["output_label"] == mf_raw_run(SAMPLES / "iris.onnx", {"float_input": X})[0].tolist()


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        ("int64", [[2**63, 1, 2]], "outside int64's range"),  # would wrap to -2**63
        ("int64", [[9.223372036854775807e18, 1, 2]], "outside int64's range"),  # rounds to 2**63 in float64
        ("int64", [[2**70, 1, 2]], "integers outside the 64-bit range"),
        # JSON's -9223372036854775809, one past int64's minimum, which orjson parses to the float -2**63
        ("int64", orjson.loads("[[-9223372036854775809, 1, 2]]"), "outside int64's range"),
        ("uint8", [[256.0, 0, 1]], "outside uint8's range"),
        ("float32", [[1e39, 1, 2]], "outside float32's range"),  # would become inf
        ("float16", [[70000, 1, 2]], "outside float16's range"),
        ("float32", [[True, False, True]], "got bools of shape [1, 3]: numbers are needed"),
    ],
)
def test_values_that_would_change_in_conversion_are_refused(forge, dtype, value, message):
    forge.register("m", mf_identity_model(dtype, [None, 3]).SerializeToString())

    with pytest.raises(InvalidInputError) as err:
        forge.predict("m", {"x": value})

    assert message in str(err.value)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [("int64", [[2**63 - 1, -(2**63), 0]]), ("uint8", [[255.0, 0, 1]]), ("float32", [[2**70, 3e38, -3e38]])],
)
def test_values_at_the_edges_of_the_range_convert_exactly(forge, dtype, value):
    model = mf_identity_model(dtype, [None, 3]).SerializeToString()
    forge.register("m", model)

    res = forge.predict("m", {"x": value})

    np_dtype = {"int64": np.int64, "uint8": np.uint8, "float32": np.float32}[dtype]
    (raw,) = mf_raw_run(model, {"x": np.array(value, dtype=np.float64 if dtype == "float32" else None).astype(np_dtype)})
    assert res.output_data["y"] == raw.tolist()


def test_an_input_with_a_default_is_optional_and_can_be_overridden(mf_forge):
    from modelforge_jupyter.core.records import TensorSpec

    data = mf_scale_model().SerializeToString()
    rec = mf_forge.register("scaled", data)
    X = np.array([[1.5, -2.0]], np.float32)

    default = mf_forge.predict("scaled", {"x": X}).output_data
    bare = mf_forge.predict("scaled", X).output_data  # one required input: a bare value feeds it
    overridden = mf_forge.predict("scaled", {"x": X, "scale": 3}).output_data
    again = mf_forge.predict("scaled", {"x": X, "scale": 3})

    assert mf_forge.get("scaled").inputs == rec.inputs == [
        TensorSpec("x", "float32", [None, 2]), TensorSpec("scale", "float32", [], optional=True)
    ]
    assert default == bare == {"y": mf_raw_run(data, {"x": X})[0].tolist()} == {"y": [[3.0, -4.0]]}
    raw = mf_raw_run(data, {"x": X, "scale": np.array(3, np.float32)})[0]
    assert overridden == {"y": raw.tolist()} == {"y": [[4.5, -6.0]]}
    assert again.cached is True and again.output_data == overridden
    with pytest.raises(InvalidInputError, match=r"missing: 'x'") as err:
        mf_forge.predict("scaled", {"scale": 3})
    assert "'scale' float32 [] (optional)" in str(err.value)
    with pytest.raises(InvalidInputError, match=r"input 'scale': expected float32 \[\] \(rank 0\), got shape \[2\]"):
        mf_forge.predict("scaled", {"x": X, "scale": [1, 2]})


def test_an_input_with_no_declared_shape_takes_any_shape(mf_forge):
    from modelforge_jupyter.core.batches import fixed_batch, sample_feed
    from modelforge_jupyter.core.records import TensorSpec

    # Given a model whose input declares no shape (ONNX Runtime reports [] for it, as for a scalar)
    data = mf_unshaped_model().SerializeToString()
    rec = mf_forge.register("unshaped", data)
    x = np.array([[1.5, -2.0, 3.0], [-0.5, 4.0, 0.0]], np.float32)

    # When a 2-D array, a 3-D nested list and a scalar are predicted
    matrix = mf_forge.predict("unshaped", x).output_data
    cube = mf_forge.predict("unshaped", {"x": x.reshape(2, 3, 1).tolist()}).output_data
    scalar = mf_forge.predict("unshaped", -3).output_data

    # Then each equals raw onnxruntime's output, and the stored spec says "any shape" (None), not a scalar's []
    assert mf_forge.get("unshaped").inputs == rec.inputs == [TensorSpec("x", "float32", None)]
    assert matrix == {"y": mf_raw_run(data, {"x": x})[0].tolist()} == {"y": [[3.0, 0.0, 6.0], [0.0, 8.0, 0.0]]}
    assert cube == {"y": mf_raw_run(data, {"x": x.reshape(2, 3, 1)})[0].tolist()}
    assert scalar == {"y": mf_raw_run(data, {"x": np.array(-3, np.float32)})[0].tolist()} == {"y": 0.0}
    # the dtype and the empty-batch rules still hold; a declared scalar ([]) still takes scalars only
    with pytest.raises(InvalidInputError, match=r"^input 'x': expected float32 of any shape, got strings of shape"):
        mf_forge.predict("unshaped", [["a"]])
    with pytest.raises(InvalidInputError, match=r"^input 'x': expected float32 of any shape, got an empty batch"):
        mf_forge.predict("unshaped", np.zeros((0, 3), np.float32))
    # a benchmark or warm-up input for it: any batch, one axis
    assert fixed_batch(rec.inputs) is None and sample_feed(rec.inputs, 3)["x"].shape == (3,)
    mf_forge.register("scalar", mf_identity_model("float32", []).SerializeToString())
    assert mf_forge.get("scalar").inputs == [TensorSpec("x", "float32", [])]
    with pytest.raises(InvalidInputError, match=r"^input 'x': expected float32 \[\] \(rank 0\), got shape \[2, 3\]"):
        mf_forge.predict("scalar", x)


def test_tensor_specs_stored_before_optional_existed_still_load():
    from modelforge_jupyter.core.records import TensorSpec

    old = {"name": "x", "dtype": "float32", "shape": [None, 4]}

    assert TensorSpec.from_dict(old) == TensorSpec("x", "float32", [None, 4], optional=False)
    spec = TensorSpec("scale", "float32", [], optional=True)
    assert TensorSpec.from_dict(orjson.loads(orjson.dumps(spec.to_dict()))) == spec
    anyshape = TensorSpec("x", "float32", None)
    assert anyshape.to_dict()["shape"] is None and TensorSpec.from_dict(anyshape.to_dict()) == anyshape


def test_names_read_from_a_model_file_are_escaped_in_messages(forge):
    name = "x\nERROR forged log line \x1b[31m"
    forge.register("m", mf_identity_model("float32", [None, 3], name=name).SerializeToString())

    for bad in ({name: [[1, 2]]}, {"z": [[1, 2, 3]]}, [[1, 2]]):
        with pytest.raises(InvalidInputError) as err:
            forge.predict("m", bad)
        message = str(err.value)
        assert repr(name) in message and "\n" not in message and "\x1b" not in message
