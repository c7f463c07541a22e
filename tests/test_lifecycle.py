"""A version's life (``core.lifecycle``): warmed up before it becomes current, refused when its warm-up fails (400) or
is refused for memory (503) with nothing changed, V2 model-ready false while it warms, loaded at once by the other
processes that served the model, the forced reload seen by a second process, and updates under load with zero errors
and zero stale answers. Real registries and caches on both backends; a second ``ModelForge`` on the same registry and
cache stands for another process (its own engine, listener and resolver)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core import v2
from modelforge_jupyter.core.errors import (InvalidModelError, ModelNotFoundError, ModelNotReadyError,
                                            ServiceUnavailableError)
from modelforge_jupyter.core.schema import blobs, model_versions

from .mf_plugin import mf_raw_run, mf_spin_input, mf_spin_model, mf_wait_until

DOC = b"\x32\x00"  # ModelProto field 6 (doc_string), empty: appended, other bytes of the same model
X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)


def scale_by(k: float, doc: str = "") -> bytes:
    """y = x * k, x float32 [N, 2]: versions that answer apart (``doc`` makes other bytes of the same model)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.array(k, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, doc_string=doc)
    return model.SerializeToString()


def rows_of_three() -> bytes:
    """Loads, but runs only on a multiple of 3 rows (Reshape to [3, -1]): the generated batch-1 input fails."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "threes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([3, -1], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def version_rows(forge) -> int:
    with forge.registry.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model_versions)).scalar()


def test_a_version_whose_warm_up_fails_never_becomes_current(mf_forge):
    mf_forge.register("m", scale_by(1.0))
    bad = rows_of_three()
    rows, loaded = version_rows(mf_forge), mf_forge.engine.loaded()

    # an update and a registration that fail their warm-up run: 400 naming the failure, nothing stored
    for call in (lambda: mf_forge.update("m", bad), lambda: mf_forge.register("new", bad)):
        with pytest.raises(InvalidModelError) as err:
            call()
        assert "failed its warm-up run on an input generated from its declared inputs (batch 1)" in str(err.value)
        assert "cannot be reshaped to the requested shape" in str(err.value)
        assert "the model was not changed; give sample= an input it runs on (ModelForge.register" in str(err.value)
    assert mf_forge.get("m").versions == [1] and version_rows(mf_forge) == rows
    with pytest.raises(ModelNotFoundError):
        mf_forge.get("new")
    with mf_forge.registry.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(blobs)).scalar() == 1  # v1's bytes only
    assert mf_forge.engine.loaded() == loaded  # the refused session was unloaded
    np.testing.assert_array_equal(mf_forge.predict("m", X, use_cache=False).outputs["y"],
                                  mf_raw_run(scale_by(1.0), {"x": X})[0])  # the old version serves

    # with a sample it runs on, the same model becomes current, warmed on the sample, which is kept for others
    record = mf_forge.update("m", bad, sample=X)
    assert (record.version, record.warmup["rows"]) == (2, 3) and "warmup" not in record.to_dict()
    assert mf_forge.get("m").warmup == record.warmup
    np.testing.assert_array_equal(mf_forge.predict("m", X).outputs["y"], mf_raw_run(bad, {"x": X})[0])
    # an update given no sample (PUT over HTTP) warms up on the one stored with the latest version
    assert mf_forge.update("m", bad + DOC).warmup == record.warmup


def test_a_warm_up_refused_for_memory_is_a_503_and_changes_nothing(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings, max_output_bytes=4) as forge:  # y of one row is 8 bytes
        with pytest.raises(ServiceUnavailableError) as err:
            forge.register("m", scale_by(1.0))
        assert "warm-up run on an input generated from its declared inputs (batch 1) was refused for lack of " \
               "memory" in str(err.value) and "max_output_bytes" in str(err.value)
        assert forge.models() == []


def test_v2_model_ready_is_false_while_a_version_warms_then_true(mf_forge):
    model = mf_spin_model().SerializeToString()
    spin = mf_spin_input(6_000)  # its warm-up run spins for a few hundred ms
    seen: list = []

    def watch(call, done: threading.Event) -> None:
        while not done.is_set():
            try:
                seen.append(call())
            except (ModelNotReadyError, ModelNotFoundError) as err:
                seen.append(type(err).__name__)
            time.sleep(0.005)

    for step, version in ((lambda: mf_forge.register("spin", model, sample=spin), None),
                          (lambda: mf_forge.update("spin", model + DOC, sample=spin), "2")):
        done = threading.Event()
        seen.clear()
        watcher = threading.Thread(target=watch, args=(lambda: v2.model_ready(mf_forge, "spin", version)["ready"],
                                                       done))
        watcher.start()
        try:
            step()
        finally:
            done.set()
            watcher.join()
        # Then: 404 before the call started warming, then not ready (400, as Triton answers) while it warmed, then
        # ready once registered, and never back
        states = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
        assert states in (["ModelNotReadyError"], ["ModelNotFoundError", "ModelNotReadyError"],
                          ["ModelNotReadyError", True], ["ModelNotFoundError", "ModelNotReadyError", True]), states
        assert v2.model_ready(mf_forge, "spin", version) == {"name": "spin", "ready": True}
    assert v2.model_ready(mf_forge, "spin", "1")["ready"]
    with pytest.raises(ModelNotFoundError):
        v2.model_ready(mf_forge, "spin", "3")
    index = v2.repository_index(mf_forge, b"")
    assert index == [{"name": "spin", "version": "2", "state": "READY"}]


@pytest.mark.parametrize("mf_backend", ["services"])
def test_updates_and_forced_reloads_reach_the_processes_serving_the_model(mf_settings, mf_forge):
    other = ModelForge(**mf_settings)  # another process: its own engine, listener and resolver
    try:
        v1 = mf_forge.register("m", scale_by(1.0))
        np.testing.assert_array_equal(other.predict("m", X, use_cache=False).outputs["y"], X)
        assert other.engine.loaded() == [v1.sha256]

        # an update: the other process loads v2 on the change event, before any request of its own asks for it
        loads, events = other.engine.loads, other.listener.events
        v2_record = mf_forge.update("m", scale_by(2.0), sample=X)
        assert mf_wait_until(lambda: other.lifecycle.background_loads == 1, 10)
        assert other.engine.loaded() == [v2_record.sha256] and other.engine.loads == loads + 1
        np.testing.assert_array_equal(other.predict("m", X, use_cache=False).outputs["y"], X * 2)
        assert other.engine.loads == loads + 1 and other.listener.events > events  # the request loaded nothing

        # a request sent the moment the update returns waits for that one load: never two, never the old answer
        loads, events = other.engine.loads, other.listener.events
        v3 = mf_forge.update("m", scale_by(3.0))
        np.testing.assert_array_equal(other.predict("m", X, use_cache=False).outputs["y"], X * 3)
        assert mf_wait_until(lambda: other.listener.events >= events + 2, 10)  # the load event, then the cleanup's
        time.sleep(0.2)  # a background load, if the event came first, has finished
        assert other.engine.loads == loads + 1 and other.engine.loaded() == [v3.sha256]

        # the forced reload: a new session here and in the other process, the old one serving until then
        before, loads_here = other.engine.session(v3.sha256, lambda: b""), mf_forge.engine.loads
        background = other.lifecycle.background_loads
        assert mf_forge.load("m").version == 3 and mf_forge.engine.loads == loads_here + 1
        assert mf_wait_until(lambda: other.lifecycle.background_loads == background + 1, 10)
        after = other.engine.session(v3.sha256, lambda: b"")
        assert after is not before and other.engine.loaded() == [v3.sha256]
        np.testing.assert_array_equal(other.predict("m", X, use_cache=False).outputs["y"], X * 3)
    finally:
        other.close()


def test_forced_reload_of_a_model_not_loaded_here_loads_and_warms_it(mf_forge):
    record = mf_forge.register("m", scale_by(1.0))
    assert mf_forge.unload("m") and mf_forge.engine.loaded() == []
    assert mf_forge.load("m") == record and mf_forge.engine.loaded() == [record.sha256]
    with pytest.raises(ModelNotFoundError):
        mf_forge.load("nope")


def test_updates_under_load_give_no_error_and_no_stale_answer(mf_settings, mf_forge):
    # Given: clients predicting on two processes while the model is updated a few times
    other = ModelForge(**mf_settings)
    mf_forge.register("m", scale_by(1.0))
    answers: list[tuple[float, float]] = []  # (start time, scale answered)
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(forge) -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                y = forge.predict("m", X, use_cache=False).outputs["y"]
                answers.append((start, float(y[0, 0])))
            except BaseException as err:  # noqa: BLE001 - every error counts
                errors.append(err)

    clients = [threading.Thread(target=client, args=(forge,)) for forge in (mf_forge, other) * 2]
    for thread in clients:
        thread.start()
    returned: list[tuple[float, float]] = []
    try:
        for k in (2.0, 3.0, 4.0, 5.0):
            time.sleep(0.15)
            mf_forge.update("m", scale_by(k))
            returned.append((time.monotonic(), k))
        time.sleep(0.15)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
        other.close()
    # Then: no error, and every request started after an update returned answered from that version or a later one
    assert errors == []
    for at, k in returned:
        after = [scale for start, scale in answers if start > at]
        assert after and min(after) >= k, (k, sorted(set(after)))
    assert {scale for _, scale in answers} >= {1.0, 5.0}
