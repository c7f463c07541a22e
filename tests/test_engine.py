"""The engine's LRU, single-flight loading and concurrent runs, on real sample models."""

from __future__ import annotations

import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.engine import Engine
from modelforge_jupyter.core.errors import InferenceError, InvalidModelError

from .mf_plugin import SAMPLES, mf_identity_model, mf_raw_run


def test_concurrent_first_use_builds_one_session(mf_forge):
    rec = mf_forge.register("rf", SAMPLES / "breast_cancer_rf.onnx")
    mf_forge.unload("rf")
    loads_before = mf_forge.engine.loads
    X = load_breast_cancer().data[:4].astype(np.float32)
    barrier = threading.Barrier(8)

    def first_use(i):
        barrier.wait()
        return mf_forge.predict("rf", X, use_cache=False).output_data

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(first_use, range(8)))

    assert mf_forge.engine.loads - loads_before == 1
    assert mf_forge.engine.loaded() == [rec.sha256]
    label, proba = mf_raw_run(SAMPLES / "breast_cancer_rf.onnx", {"float_input": X})
    assert all(r == {"label": label.tolist(), "probabilities": proba.tolist()} for r in results)


def test_lru_keeps_at_most_max_sessions(mf_settings):
    with ModelForge(**mf_settings, max_sessions=2) as forge:
        shas = [forge.register(n, SAMPLES / f"{n}.onnx").sha256 for n in ("iris", "diabetes", "breast_cancer_rf")]
        assert forge.engine.loaded() == shas[1:]  # register loads; the oldest was evicted

        forge.predict("iris", [[1, 2, 3, 4]], use_cache=False)  # reloads iris, evicts diabetes

        assert forge.engine.loaded() == [shas[2], shas[0]]
        assert forge.engine.loads == 4


def test_unload_makes_next_predict_a_cold_load_from_registry_bytes(mf_forge):
    mf_forge.register("iris", SAMPLES / "iris.onnx")

    assert mf_forge.unload("iris") is True
    assert mf_forge.unload("iris") is False
    loads = mf_forge.engine.loads
    res = mf_forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]], use_cache=False)

    assert mf_forge.engine.loads == loads + 1 and res.output_data["output_label"] == [0]


def _os_threads() -> int:
    """This process's OS threads that are not Python threads (ONNX Runtime's pools): Python threads of the services
    (Redis, health probes) may start or end meanwhile without changing the count."""
    python = {t.native_id for t in threading.enumerate()}
    return sum(int(tid) not in python for tid in os.listdir("/proc/self/task"))


def test_hundred_models_mean_no_thread_pools_and_at_most_max_sessions_loaded(mf_settings):
    """A server's sessions run on the caller's thread (server_intra_op_num_threads=1, inter 1): loading 100 models
    adds no OS thread, and only ``max_sessions`` of them stay loaded."""
    with ModelForge(**mf_settings, max_sessions=8, serving=True) as forge:
        before = _os_threads()
        for k in range(1, 101):
            forge.register(f"m{k}", mf_identity_model("float32", [None, k]).SerializeToString())
            out = forge.predict(f"m{k}", np.full((2, k), k, np.float32), use_cache=False).output_data
            assert out == {"y": [[float(k)] * k] * 2}

        assert _os_threads() - before <= 1  # not one pool per model (ORT's default would add one thread per session)
        assert len(forge.engine.loaded()) == 8
        assert forge.engine.loads == 100


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell one thread from one per core")
def test_threads_per_use_a_kernel_s_session_takes_every_core_a_server_s_one(mf_settings, tmp_path):
    # Given the same settings, a ModelForge built as in a kernel or script, and one built as a server builds it
    model = mf_identity_model("float32", [None, 2]).SerializeToString()
    defaults = {k: v for k, v in mf_settings.items() if k != "intra_op_num_threads"}  # the product's defaults
    for serving, want in ((False, 0), (True, 1)):
        with ModelForge(**defaults, serving=serving) as forge:
            forge.save("threads", model)
            forge.predict("threads", np.ones((1000, 2), np.float32), use_cache=False)  # the process's threads started
            forge.unload("threads")
            gc.collect()  # the unloaded session's pool ends now, not during the count
            before = _os_threads()
            # When its session is loaded again for a prediction
            forge.predict("threads", np.ones((1000, 2), np.float32), use_cache=False)
            # Then the kernel's uses ONNX Runtime's default (one thread per physical core: a pool of at least one
            # more thread), the server's runs on the caller's thread alone
            assert forge.engine.intra_op_num_threads == want
            assert forge.engine.session_options().intra_op_num_threads == want
            added = _os_threads() - before
            assert added >= 1 if not serving else added == 0, (serving, added)
            # and whatever the count, the forest answers as raw ONNX Runtime with the same SessionOptions, bit for bit
            forge.save("rf", SAMPLES / "breast_cancer_rf.onnx")
            raw = forge.raw_session("rf")
            for rows in (1, 1000):
                x = load_breast_cancer().data[:rows].astype(np.float32)
                got = forge.predict("rf", x, use_cache=False).outputs
                for output, want_value in zip(got, raw.run(None, {"float_input": x})):
                    np.testing.assert_array_equal(got[output], want_value)


def test_session_options_are_the_documented_ones():
    so = Engine(intra_op_num_threads=1).session_options()

    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level.name == "ORT_ENABLE_ALL"
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_concurrent_predictions_on_one_session_are_each_correct(mf_forge):
    mf_forge.register("rf", SAMPLES / "breast_cancer_rf.onnx")
    data = load_breast_cancer().data.astype(np.float32)
    batches = [data[i : i + 1 + i % 7] for i in range(64)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda X: mf_forge.predict("rf", X, use_cache=False), batches))

    for X, res in zip(batches, results):
        label, proba = mf_raw_run(SAMPLES / "breast_cancer_rf.onnx", {"float_input": X})
        assert res.output_data == {"label": label.tolist(), "probabilities": proba.tolist()}


def tiny_model(opset: int = 17, ir_version: int = 8, input_name: str = "x"):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["y"])], "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def assert_no_internals(message: str) -> None:
    for internal in ("onnxruntime_src", ".cc:", ".h:", "::", "std::", "[ONNXRuntimeError]", "\n"):
        assert internal not in message, message


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"opset": 99}, "Opset 99 is under development"),
    ({"ir_version": 99}, "Unsupported model IR version: 99, max supported IR version:"),
])
def test_a_too_new_model_is_refused_with_the_first_meaningful_line_only(kwargs, says):
    with pytest.raises(InvalidModelError) as err:
        Engine().inspect("sha", tiny_model(**kwargs).SerializeToString())

    assert says in str(err.value) and str(err.value).startswith("not a valid ONNX model (")
    assert_no_internals(str(err.value))


def test_onnxruntime_failures_at_run_time_show_no_internals(mf_forge):
    from onnx import TensorProto, helper

    # Given a Gather whose index passes validation (int64) but is out of range for ONNX Runtime
    graph = helper.make_graph(
        [helper.make_node("Gather", ["data", "i"], ["y"])], "gather",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [helper.make_tensor("data", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    mf_forge.register("gather", model.SerializeToString())

    with pytest.raises(InferenceError) as err:
        mf_forge.predict("gather", {"i": [7]}, use_cache=False)

    assert str(err.value).startswith("model 'gather' failed on this input: ") and "out of data bounds" in str(err.value)
    assert_no_internals(str(err.value))


def test_first_line_strips_paths_and_escapes_control_characters():
    from modelforge_jupyter.core.errors import first_line

    raw = ('[ONNXRuntimeError] : 1 : FAIL : External data path validation failed for initializer: W. Error: '
           'tensorprotoutils.cc:619 ValidateExternalDataPathFromDir External data path does not exist: "/srv/x/a.bin"'
           '\nsecond line')
    assert first_line(RuntimeError(raw)) == (
        'External data path validation failed for initializer: W. Error: External data path does not exist: "<path>"'
    )
    assert first_line(RuntimeError("\n  \nname \x1b[2J here\x00")) == "name \\x1b[2J here\\x00"
    assert first_line(ValueError()) == "ValueError"
    start = time.perf_counter()  # a long name in ORT's message costs linear time, and is cut
    assert len(first_line("a." * 50_000)) == len(first_line("x" * 100_000)) == 2000
    assert time.perf_counter() - start < 2.0


def test_an_unfeedable_input_is_named_with_escapes():
    from onnx import TensorProto, helper

    name = "s\nforged"
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["y"])], "seq",
        [helper.make_tensor_sequence_value_info(name, TensorProto.FLOAT, None)],
        [helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    with pytest.raises(InvalidModelError) as err:
        Engine().inspect("sha", model.SerializeToString())

    assert str(err.value).startswith(f"input {name!r} has type ") and "\n" not in str(err.value)


def test_a_kernel_s_threads_spin_as_onnx_runtime_s_default_a_server_s_never(mf_embedded_settings):
    # Given the product's defaults, built as a kernel and as a server, and a kernel with spinning turned off
    defaults = {k: v for k, v in mf_embedded_settings.items() if k != "intra_op_num_threads"}
    spin = "session.intra_op.allow_spinning"
    with ModelForge(**defaults) as kernel, ModelForge(**defaults, serving=True) as server, \
            ModelForge(**defaults, intra_op_spinning=False) as quiet:
        # Then the kernel's sessions spin as a plain InferenceSession's (ORT's default: unset means spinning), the
        # others do not
        with pytest.raises(RuntimeError, match="does not have configuration"):
            ort.SessionOptions().get_session_config_entry(spin)
        assert kernel.engine.session_options().get_session_config_entry(spin) == "1"
        assert server.engine.session_options().get_session_config_entry(spin) == "0"
        assert quiet.engine.session_options().get_session_config_entry(spin) == "0"
