"""Memory bounds: constants a model computes (refused before any session), the LRU's bytes, the shared capped arena
of runs and the output size, on tiny models whose sizes are set by a constant or an input value. Budgets are small
(MiB) so no test allocates more than a few tens of MB even on code without the bounds."""

from __future__ import annotations

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.engine import Engine
from modelforge_jupyter.core.errors import InvalidModelError, ResourceLimitError
from modelforge_jupyter.core.settings import Settings

from .mf_plugin import (
    MiB,
    mf_cached_keys,
    mf_constant_of_shape_model,
    mf_http,
    mf_isolated_env,
    mf_peak_rss_growth,
    mf_proc_status,
    mf_raw_run,
    mf_start_server,
)

N = 4_000_000  # float32 elements: 16 MB, over the 1 MiB budgets below


def _model(nodes: list, inputs: list, outputs: list, initializers: list = (), sparse: list = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "memory", inputs, outputs, list(initializers), sparse_initializer=list(sparse))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _const(name: str, values: list[int]):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64), name))


def _summed(nodes: list, big: str) -> onnx.ModelProto:
    """``y = x + sum(big)``: the large constant is reduced to one number, so only the build holds it."""
    nodes = [*nodes, helper.make_node("ReduceSum", [big], ["r"], keepdims=0),
             helper.make_node("Add", ["x", "r"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])


def constant_of_shape() -> onnx.ModelProto:
    """The issue's upload: ``ConstantOfShape`` of a constant shape; the model's output is the whole constant."""
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    return _model([_const("shape", [N]), helper.make_node("ConstantOfShape", ["shape"], ["y"], value=fill)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])])


def reduced_constant_of_shape(n: int = N) -> onnx.ModelProto:
    return mf_constant_of_shape_model(n)


def tiled() -> onnx.ModelProto:
    one = helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.ones(1, np.float32), "one"))
    return _summed([one, _const("repeats", [N]), helper.make_node("Tile", ["one", "repeats"], ["big"])], "big")


def sparse_constant() -> onnx.ModelProto:
    """A ``Constant`` with a sparse value of one non-zero: ONNX Runtime makes it dense when it loads the model."""
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("i", TensorProto.INT64, [1], [0])
    sparse = helper.make_sparse_tensor(values, indices, [N])
    return _summed([helper.make_node("Constant", [], ["big"], sparse_value=sparse)], "big")


def shape_from_input() -> onnx.ModelProto:
    """``y = ConstantOfShape(shape)``, the shape a request's input value: the issue's ``cos`` model."""
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    return _model([helper.make_node("ConstantOfShape", ["shape"], ["y"], value=fill)],
                  [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])


def weights(seed: int, megabytes: int) -> bytes:
    """``y = x + W`` with W of ``megabytes`` MB (distinct per seed, so distinct sha256s)."""
    w = np.random.default_rng(seed).standard_normal(megabytes * MiB // 4).astype(np.float32)
    return _model([helper.make_node("Add", ["x", "W"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [w.size])],
                  [numpy_helper.from_array(w, "W")]).SerializeToString()


@pytest.mark.parametrize("build, node", [
    (constant_of_shape, "ConstantOfShape"), (reduced_constant_of_shape, "ConstantOfShape"), (tiled, "Tile"),
    (sparse_constant, "Constant"),
])
def test_constants_over_budget_are_refused_before_any_session(build, node, mf_warm_engine):
    engine = Engine(max_constant_bytes=MiB)
    data = build().SerializeToString()

    def load() -> None:
        with pytest.raises(InvalidModelError) as refused:
            engine.inspect("bomb", data)
        errors.append(refused.value)

    errors: list = []
    assert mf_peak_rss_growth(load) < 4 * MiB  # the 16 MB constant was never built
    refused = errors[0]

    message = str(refused)
    assert refused.status == 400 and len(data) < 400
    assert node in message and str(N * 4) in message and str(MiB) in message
    assert "MODELFORGE_MAX_CONSTANT_BYTES" in message
    assert engine.loads == 0 and engine.loaded() == []


def test_constants_inference_cannot_size_are_not_folded_past_the_budget(mf_warm_engine):
    # Given a 32 MB constant whose shape ONNX shape inference cannot read without data propagation (a Concat)
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    model = _summed([_const("a", [2 * N // 1000]), _const("b", [1000]),
                     helper.make_node("Concat", ["a", "b"], ["s"], axis=0),
                     helper.make_node("ConstantOfShape", ["s"], ["big"], value=fill)], "big")
    engine = Engine(max_constant_bytes=MiB)

    # When it is loaded: accepted, but ONNX Runtime's per-node folding cap (what the budget leaves) keeps it unfolded
    grown = mf_peak_rss_growth(lambda: engine.inspect("concat", model.SerializeToString()))

    assert grown < 16 * MiB  # folding it takes over 64 MB at peak
    y = engine.run("concat", lambda: b"", {"x": np.zeros(1, np.float32)})["y"]
    assert y == [float(2 * N)]  # computed at run time instead


def test_sessions_are_evicted_by_bytes_as_well_as_count():
    engine = Engine(max_sessions=32, max_session_bytes=7 * MiB)
    models = {f"m{i}": weights(i, 3) for i in range(3)}  # each charged at least its 3 MB

    for sha, data in models.items():
        engine.inspect(sha, data)

    loaded = engine.loaded()
    assert loaded[-1] == "m2" and "m0" not in loaded
    assert engine.session_bytes() <= 7 * MiB or loaded == ["m2"]
    x = np.ones(1, np.float32)
    y = engine.run("m0", lambda: models["m0"], {"x": x})["y"]  # evicted: built again from its bytes
    assert y == mf_raw_run(models["m0"], {"x": x})[0].tolist()
    assert engine.loaded()[-1] == "m0" and "m1" not in engine.loaded()


def test_output_over_the_limit_is_413_and_never_cached(mf_settings):
    with ModelForge(**mf_settings, max_output_bytes=64 * 1024) as forge:
        forge.register("cos", shape_from_input())
        small = forge.predict("cos", [100])
        assert small.output_data == {"y": [1.0] * 100}

        for _ in range(2):  # a second ask is refused again: nothing was cached
            with pytest.raises(ResourceLimitError) as refused:
                forge.predict("cos", [100_000])
            assert refused.value.status == 413
            assert "400000 bytes" in str(refused.value) and "65536 bytes" in str(refused.value)
            assert "MODELFORGE_MAX_OUTPUT_BYTES" in str(refused.value)

        assert len(mf_cached_keys(forge)) == 1  # the small answer only


def test_server_memory_stays_within_budgets(tmp_path):
    # Given a server whose ONNX Runtime arena holds 8 MiB and whose answers hold at most 1 MiB
    env = mf_isolated_env(tmp_path, MODELFORGE_DATA_DIR=str(tmp_path / "modelforge"),
                       MODELFORGE_MAX_ARENA_BYTES=str(8 * MiB), MODELFORGE_MAX_SESSION_BYTES=str(4 * MiB),
                       MODELFORGE_MAX_OUTPUT_BYTES=str(MiB), MODELFORGE_MAX_CONSTANT_BYTES=str(MiB))
    server = mf_start_server(tmp_path / "server", env)
    try:
        def call(method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
            status, answer = mf_http(method, server.url + path, body, server.token)
            return status, orjson.loads(answer) if answer else {}

        def predict(n: int) -> tuple[int, dict]:
            return call("POST", "modelforge/predict", orjson.dumps({"model_id": "cos", "input_data": [n]}))

        assert call("PUT", "modelforge/models/cos", shape_from_input().SerializeToString())[0] == 201
        status, body = predict(1000)
        assert status == 200 and body["output_data"]["y"] == [1.0] * 1000
        start = mf_proc_status("VmHWM", server.pid)

        def refused_round() -> None:
            status, body = call("PUT", "modelforge/models/bomb", reduced_constant_of_shape().SerializeToString())
            assert status == 400 and "ConstantOfShape" in body["message"]
            assert "MODELFORGE_MAX_CONSTANT_BYTES" in body["message"]
            status, body = predict(N // 4)  # a 4 MB answer: over the output limit, within the arena
            assert status == 413 and f"{N} bytes" in body["message"] and f"{MiB} bytes" in body["message"]
            status, body = predict(N)  # 16 MB: more than the arena holds
            assert status == 413 and f"{N * 4} bytes" in body["message"]
            assert "MODELFORGE_MAX_ARENA_BYTES" in body["message"]

        # When: a model computing a 16 MB constant is uploaded, then answers of 4 MB and runs of 16 MB are asked
        refused_round()  # the first also loads ONNX's operator schemas and the arena's 4 MB region: kept after
        warm = mf_proc_status("VmHWM", server.pid)
        for _ in range(2):
            refused_round()

        # Then the server grew by less than one of those answers' JSON, then not at all, and still serves
        assert warm - start < 24 * MiB
        assert mf_proc_status("VmHWM", server.pid) - warm < 8 * MiB
        assert predict(200_000)[0] == 200
        assert call("GET", "modelforge/models/bomb")[0] == 404
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["max_session_bytes", "max_constant_bytes", "max_arena_bytes", "max_output_bytes",
                                  "max_request_memory_bytes"])
def test_negative_memory_limits_are_refused_naming_the_setting(name):
    with pytest.raises(ValueError, match=f"{name} must be a number of bytes >= 0"):
        Settings(**{name: -1})


def _string(name: str, text: str):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.STRING, [1],
                                                                             [text.encode()]))


def function_bomb() -> onnx.ModelProto:
    """The tester's ``m1_func``, smaller: a model-local function whose body folds two 8 MB constants, called as one
    node that looks like a scalar."""
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    body = [_const("s", [N // 2]), helper.make_node("ConstantOfShape", ["s"], ["a"], value=fill),
            helper.make_node("ConstantOfShape", ["s"], ["b"], value=fill),
            helper.make_node("Concat", ["a", "b"], ["big"], axis=0),
            helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0)]
    bomb = helper.make_function("loc", "Bomb", [], ["r"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Bomb", [], ["k"], domain="loc"),
                               helper.make_node("Add", ["x", "k"], ["y"])], "memory",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, functions=[bomb], ir_version=9,
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("loc", 1)])


def string_constant_bomb(n: int = N // 8) -> onnx.ModelProto:
    """The tester's ``m2_strconst``: a 300-character constant expanded to ``n`` strings at load (n × 332 bytes; ONNX
    Runtime's folding cap sees 32 bytes each), reduced to one number."""
    nodes = [_string("s", "A" * 300), _const("shape", [n]), helper.make_node("Expand", ["s", "shape"], ["big"]),
             helper.make_node("Size", ["big"], ["count"]), helper.make_node("Cast", ["count"], ["f"], to=1)]
    return _summed(nodes, "f")


def test_constants_inside_local_functions_are_sized(mf_warm_engine):
    engine = Engine(max_constant_bytes=MiB)
    data = function_bomb().SerializeToString()
    errors: list = []

    def load() -> None:
        with pytest.raises(InvalidModelError) as refused:
            engine.inspect("func", data)
        errors.append(refused.value)

    assert mf_peak_rss_growth(load) < 4 * MiB  # ONNX Runtime inlines the function and folds 16 MB
    assert len(data) < 1000 and errors[0].status == 400
    assert "'Concat'" in str(errors[0]) and str(N * 4) in str(errors[0]) and "MODELFORGE_MAX_CONSTANT_BYTES" in str(
        errors[0])


def test_local_functions_that_expand_without_bound_are_refused():
    # Given functions f0..f17, each calling the previous one twice: 2**17 nodes once inlined, from 35 call nodes
    functions = [helper.make_function("loc", "f0", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])],
                                      [helper.make_opsetid("", 17)])]
    for i in range(1, 18):
        calls = [helper.make_node(f"f{i - 1}", ["x"], ["t"], domain="loc"),
                 helper.make_node(f"f{i - 1}", ["t"], ["y"], domain="loc")]
        functions.append(helper.make_function("loc", f"f{i}", ["x"], ["y"], calls, [helper.make_opsetid("loc", 1)]))
    graph = helper.make_graph([helper.make_node("f17", ["x"], ["y"], domain="loc")], "memory",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, functions=functions, ir_version=9,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("loc", 1)])

    with pytest.raises(InvalidModelError, match="expand to more than 100000 nodes"):
        Engine().inspect("deep", model.SerializeToString())


def test_string_constants_are_sized_with_their_characters(mf_warm_engine):
    engine = Engine(max_constant_bytes=8 * MiB)
    data = string_constant_bomb().SerializeToString()  # 500000 strings: 16 MB as ONNX Runtime counts, 166 MB held
    errors: list = []

    def load() -> None:
        with pytest.raises(InvalidModelError) as refused:
            engine.inspect("strings", data)
        errors.append(refused.value)

    assert mf_peak_rss_growth(load) < 4 * MiB
    assert "'Expand'" in str(errors[0]) and str(N // 8 * 332) in str(errors[0])


def test_string_constants_inference_cannot_size_stay_within_the_budget(mf_warm_engine):
    # Given a 1000-character constant expanded to 2**15 strings by a shape ONNX shape inference cannot read (Concat):
    # ONNX Runtime's folding cap counts 1 MB (32 bytes each), the strings hold 34 MB
    text = "S" * 1000
    nodes = [_string("s", text), _const("a", [2 ** 8]), _const("b", [2 ** 7]),
             helper.make_node("Concat", ["a", "b"], ["shape"], axis=0),
             helper.make_node("Expand", ["s", "shape"], ["big"]),
             helper.make_node("Size", ["big"], ["count"]), helper.make_node("Cast", ["count"], ["f"], to=1)]
    model = _summed(nodes, "f")
    engine = Engine(max_constant_bytes=8 * MiB)

    grown = mf_peak_rss_growth(lambda: engine.inspect("strings", model.SerializeToString()))

    assert grown < 16 * MiB  # not folded: computed at run time instead
    assert engine.run("strings", lambda: b"", {"x": np.zeros(1, np.float32)})["y"] == [float(2 ** 15)]


@pytest.mark.parametrize("strings", ["input", "long constant"])
def test_strings_a_request_could_multiply_are_refused_at_registration(strings):
    # Given Expand(s, shape) with the shape a request's value: one 400-character string asked 2·10⁶ times would
    # hold 860 MB of characters where the arena sees 64 MB
    inputs = [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])]
    nodes = [helper.make_node("Expand", ["s", "shape"], ["big"]),
             helper.make_node("Gather", ["big", "i"], ["y"], axis=0), _const("i", [0])]
    if strings == "input":
        inputs.append(helper.make_tensor_value_info("s", TensorProto.STRING, [1]))
    else:
        nodes.insert(0, _string("s", "L" * 48))
    model = _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.STRING, [1])])

    with pytest.raises(InvalidModelError) as refused:
        Engine().inspect("strings", model.SerializeToString())

    assert refused.value.status == 400
    assert "'Expand' node #" in str(refused.value) and "'s'" in str(refused.value)
    assert "max_arena_bytes" in str(refused.value)


def test_short_constant_strings_and_constant_counts_are_served():
    # skl2onnx's classifiers: ArrayFeatureExtractor(labels, argmax) copies constant labels of at most 47 bytes;
    # a constant count over any strings is sized by the model
    labels = helper.make_tensor("labels", TensorProto.STRING, [2], [b"setosa", b"v" * 47])
    nodes = [helper.make_node("ArgMax", ["p"], ["k"], axis=1, keepdims=0),
             helper.make_node("ArrayFeatureExtractor", ["labels", "k"], ["label"], domain="ai.onnx.ml"),
             _const("reps", [3]), helper.make_node("Tile", ["s", "reps"], ["tiled"])]
    graph = helper.make_graph(nodes, "memory", [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2]),
                                                helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
                              [helper.make_tensor_value_info("label", TensorProto.STRING, [1, None]),
                               helper.make_tensor_value_info("tiled", TensorProto.STRING, [3])], [labels])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("ai.onnx.ml", 3)])
    engine = Engine()
    engine.inspect("labels", model.SerializeToString())

    out = engine.run("labels", lambda: b"", {"p": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32),
                                              "s": np.array(["ab"], object)})
    assert out == {"label": [["setosa", "v" * 47]], "tiled": ["ab", "ab", "ab"]}


def test_string_outputs_are_counted_with_their_characters(mf_settings):
    # Given Tile(s, 1000): a 200-character string gives a 200 kB answer, 8 kB as pointers
    model = _model([_const("reps", [1000]), helper.make_node("Tile", ["s", "reps"], ["y"])],
                   [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.STRING, [1000])])
    with ModelForge(**mf_settings, max_output_bytes=64 * 1024) as forge:
        forge.register("tile", model)
        assert forge.predict("tile", {"s": ["c" * 20]}).output_data == {"y": ["c" * 20] * 1000}

        for text in ("C" * 200, "é" * 100):  # UTF-8: 2 bytes a character
            with pytest.raises(ResourceLimitError) as refused:
                forge.predict("tile", {"s": [text]})
            assert refused.value.status == 413 and "208000 bytes" in str(refused.value)

        assert len(mf_cached_keys(forge)) == 1


def test_zipmap_string_labels_are_counted_in_every_row(mf_settings):
    # Given a ZipMap whose one class label is 4000 characters: each row of the answer repeats it (a fresh-clone tester
    # got a 401 MB answer, cached, past an 8 MiB limit: map entries were counted at 16 bytes, keys' text ignored)
    zipmap = helper.make_node("ZipMap", ["x"], ["y"], domain="ai.onnx.ml", classlabels_strings=["Z" * 4000])
    y = helper.make_value_info("y", helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, []))))
    graph = helper.make_graph([zipmap], "zipmap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
                              [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              ir_version=8)
    with ModelForge(**mf_settings, max_output_bytes=64 * 1024) as forge:
        forge.register("zip", model)
        assert forge.predict("zip", {"x": [[0.5]] * 10}).output_data == {"y": [{"Z" * 4000: 0.5}] * 10}

        # When 100 rows would answer 401,600 bytes of keys
        with pytest.raises(ResourceLimitError) as refused:
            forge.predict("zip", {"x": [[0.5]] * 100})

        # Then it is refused naming the size, and only the small answer is cached
        assert refused.value.status == 413 and "401600 bytes" in str(refused.value)
        assert len(mf_cached_keys(forge)) == 1


@pytest.mark.parametrize("copier", ["Tile", "Concat"])
def test_request_strings_a_model_copies_are_bounded_before_the_run(tmp_path, copier):
    # Given Tile(s, 100000), or one Concat listing s 100000 times (one node: the watchdog could not stop it midway),
    # behind Gather(·, 0) on a server whose arena holds 8 MiB: a 1000-character string would hold 100 MB of characters
    # outside the arena, its answer one string
    copy = (helper.make_node("Tile", ["s", "reps"], ["big"]) if copier == "Tile"
            else helper.make_node("Concat", ["s"] * 100_000, ["big"], axis=0))
    model = _model([_const("reps", [100_000]), copy, _const("i", [0]),
                    helper.make_node("Gather", ["big", "i"], ["y"], axis=0)],
                   [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.STRING, [1])])
    env = mf_isolated_env(tmp_path, MODELFORGE_DATA_DIR=str(tmp_path / "modelforge"),
                       MODELFORGE_MAX_ARENA_BYTES=str(8 * MiB))
    server = mf_start_server(tmp_path / "server", env)
    try:
        def predict(text: str) -> tuple[int, dict]:
            body = orjson.dumps({"model_id": "tile", "input_data": {"s": [text]}})
            status, answer = mf_http("POST", server.url + "modelforge/predict", body, server.token)
            return status, orjson.loads(answer)

        assert mf_http("PUT", server.url + "modelforge/models/tile", model.SerializeToString(), server.token)[0] == 201
        status, body = predict("d" * 40)  # 4 MB of copies: served
        assert status == 200 and body["output_data"] == {"y": ["d" * 40]}
        start = mf_proc_status("VmHWM", server.pid)

        status, body = predict("D" * 1000)

        assert status == 413 and "100000 times" in body["message"] and "MODELFORGE_MAX_ARENA_BYTES" in body["message"]
        assert mf_proc_status("VmHWM", server.pid) - start < 16 * MiB  # not run: 100 MB otherwise
    finally:
        server.stop()


@pytest.mark.parametrize("body, expected", [("Add", [2.0, 4.0]), ("F", "the model's local function 'F' calls itself")])
def test_local_functions_are_served_and_recursion_is_refused(body, expected):
    inner = helper.make_node("Add", ["a", "a"], ["b"]) if body == "Add" else helper.make_node("F", ["a"], ["b"],
                                                                                            domain="loc")
    function = helper.make_function("loc", "F", ["a"], ["b"], [inner],
                                    [helper.make_opsetid("", 17), helper.make_opsetid("loc", 1)])
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="loc")], "memory",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, functions=[function], ir_version=9,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("loc", 1)])
    engine = Engine()
    if isinstance(expected, str):
        with pytest.raises(InvalidModelError, match=expected):
            engine.inspect("f", model.SerializeToString())
        return
    engine.inspect("f", model.SerializeToString())
    assert engine.run("f", lambda: b"", {"x": np.array([1, 2], np.float32)}) == {"y": expected}
