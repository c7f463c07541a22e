"""Dynamic batching: concurrent requests coalesce into one run, each caller gets exactly its own rows."""

from __future__ import annotations

import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_breast_cancer, load_iris

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.batching import batchable
from modelforge_jupyter.core.errors import InferenceError
from modelforge_jupyter.core.samples import build_wide_mlp

from .mf_plugin import SAMPLES, mf_identity_model, mf_raw_run, mf_zipmap

BATCHING = {"dynamic_batching": True, "max_batch_size": 64, "max_queue_delay_us": 20000}


@pytest.fixture
def forge(mf_embedded_settings):
    with ModelForge(**mf_embedded_settings, **BATCHING) as mf:
        yield mf


def concurrently(fn, items, workers=16):
    barrier = threading.Barrier(min(workers, len(items)))

    def call(item):
        barrier.wait()
        return fn(item)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(call, items))


def test_concurrent_requests_coalesce_and_each_gets_its_rows(forge):
    mlp = build_wide_mlp(hidden=1024)  # a run of ~0.1-1 ms: requests arriving meanwhile queue up behind it
    forge.register("mlp", mlp)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 3, 256)).astype(np.float32) for i in range(48)]  # 1 to 3 rows each

    results = concurrently(lambda X: forge.predict("mlp", X, use_cache=False), inputs)

    (batcher,) = forge.batchers
    assert batcher.requests == 48 and batcher.batches < 48
    for X, res in zip(inputs, results):
        (proba,) = mf_raw_run(mlp, {"input": X})
        np.testing.assert_allclose(res.output_data["probabilities"], proba, rtol=1e-5, atol=1e-7)
        assert len(res.output_data["probabilities"]) == len(X)
    assert len({r.prediction_id for r in results}) == 48


@pytest.mark.parametrize("instances", [1, 2])
def test_requests_arriving_while_every_instance_is_busy_form_the_next_batch(mf_embedded_settings, instances):
    # Given no queue delay at all: only a busy instance can make requests wait for each other
    settings = {**mf_embedded_settings, "dynamic_batching": True, "max_queue_delay_us": 0, "model_instances": instances}
    # a run of ~1-4 ms (19 MB of weights): long enough that, on a loaded 2-core box too, more requests arrive while
    # every instance is busy than there are instances (with hidden=1024 a loaded box ran all 64 alone, once)
    mlp = build_wide_mlp()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1, 256)).astype(np.float32) for _ in range(64)]
    with ModelForge(**settings) as forge:
        forge.register("mlp", mlp)

        # When 16 clients send 4 requests each, back to back
        results = concurrently(lambda X: forge.predict("mlp", X, use_cache=False), inputs)

        # Then at most `instances` batches ran at once, requests were merged, and each got its own row
        (batcher,) = forge.batchers
        assert batcher.peak_running <= instances and batcher.waits == 0
        assert batcher.requests == 64 and batcher.batches < 64
        for X, res in zip(inputs, results):
            (proba,) = mf_raw_run(mlp, {"input": X})
            np.testing.assert_allclose(res.output_data["probabilities"], proba, rtol=1e-5, atol=1e-7)


def test_a_single_client_is_not_delayed(forge):
    forge.register("rf", SAMPLES / "breast_cancer_rf.onnx")
    X = load_breast_cancer().data[:1].astype(np.float32)

    for _ in range(5):
        forge.predict("rf", X, use_cache=False)

    (batcher,) = forge.batchers
    assert (batcher.requests, batcher.batches, batcher.waits) == (5, 5, 0)


def test_zipmap_sequences_are_split_per_request(forge):
    forge.register("iris", SAMPLES / "iris.onnx")
    data = load_iris().data.astype(np.float32)
    inputs = [data[i : i + 2] for i in range(0, 32, 2)]

    results = concurrently(lambda X: forge.predict("iris", X, use_cache=False), inputs)

    for X, res in zip(inputs, results):
        label, proba = mf_raw_run(SAMPLES / "iris.onnx", {"float_input": X})
        assert res.output_data["output_label"] == label.tolist()
        assert res.output_data["output_probability"] == mf_zipmap(proba)


def test_requests_of_other_trailing_shapes_are_not_merged(forge):
    forge.register("id", mf_identity_model("float32", [None, None]).SerializeToString())
    inputs = [np.full((1, 3 + i % 2), i, np.float32) for i in range(12)]

    results = concurrently(lambda X: forge.predict("id", X, use_cache=False), inputs)

    assert [r.output_data["y"] for r in results] == [X.tolist() for X in inputs]


def test_a_bad_request_in_a_batch_fails_alone(forge):
    # Gather from a 10-value table: index 99 is rejected by ONNX Runtime at run time, not by validation
    table = numpy_helper.from_array(np.arange(10, dtype=np.float32) * 1.5, "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["value"])], "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1])],
        initializer=[table],
    )
    forge.register("lookup", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    indices = [[[i % 10]] if i != 5 else [[99]] for i in range(12)]

    def predict(idx):
        try:
            return forge.predict("lookup", idx, use_cache=False).output_data["value"]
        except InferenceError as err:
            return err

    results = concurrently(predict, indices)

    assert isinstance(results[5], InferenceError) and "lookup" in str(results[5])
    assert [r for i, r in enumerate(results) if i != 5] == [[[1.5 * (i % 10)]] for i in range(12) if i != 5]


def test_only_models_with_one_input_of_dynamic_leading_dim_are_batched(forge, mf_silero_path):
    audio = np.zeros((1, 512), np.float32)
    rec = forge.register("silero", mf_silero_path,
                         sample={"input": audio, "state": np.zeros((2, 1, 128), np.float32), "sr": 16000})
    assert not batchable(rec.inputs, rec.outputs)  # state is [2, N, 128]
    rf = forge.register("rf", SAMPLES / "breast_cancer_rf.onnx")
    iris = forge.register("iris", SAMPLES / "iris.onnx")  # ZipMap: a sequence output, split by length
    assert batchable(rf.inputs, rf.outputs) and batchable(iris.inputs, iris.outputs)
    audio = np.zeros((1, 512), np.float32)

    results = concurrently(
        lambda _: forge.predict("silero", {"input": audio, "state": np.zeros((2, 1, 128), np.float32), "sr": 16000},
                                use_cache=False), range(4))

    assert forge.batchers == () or all(b.requests == 0 for b in forge.batchers)
    assert len({str(r.output_data) for r in results}) == 1


def test_a_model_with_two_inputs_is_never_batched_and_each_caller_gets_its_own_answer(forge):
    # Given y = a @ b.T, a [N, 4] and b [M, 4]: which rows of b go with which of a is the model's business
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["b"], ["bt"]), helper.make_node("MatMul", ["a", "bt"], ["y"])], "outer",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["M", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])],
    )
    rec = forge.register("outer", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    assert not batchable(rec.inputs, rec.outputs)

    # When 16 callers send one row each at once
    results = concurrently(lambda i: forge.predict("outer", {"a": [[1.0] * 4], "b": [[float(i)] * 4]},
                                                   use_cache=False).output_data["y"], range(16))

    # Then each gets its own 1 x 1 answer (merged, caller 1 would get a 1 x 16 row of everybody's)
    assert results == [[[4.0 * i]] for i in range(16)]
    assert forge.batchers == () or all(b.requests == 0 for b in forge.batchers)


class Interrupted(BaseException):
    """What the tests raise in the main thread where a notebook's interrupt raises KeyboardInterrupt (a BaseException)."""


def test_a_leader_interrupted_while_it_waits_hands_over_and_the_model_keeps_serving(mf_embedded_settings):
    settings = {**mf_embedded_settings, "dynamic_batching": True, "max_queue_delay_us": 0, "model_instances": 1}
    mlp = build_wide_mlp(hidden=512)
    one = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    big = np.repeat(one, 40000, axis=0)  # a run of a few hundred ms: the one instance stays busy
    (expected,) = mf_raw_run(mlp, {"input": one})

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with ModelForge(**settings) as forge, ThreadPoolExecutor(2) as pool:
            forge.register("mlp", mlp)
            forge.predict("mlp", one, use_cache=False)
            busy = pool.submit(forge.predict, "mlp", big, use_cache=False)
            time.sleep(0.05)
            threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)).start()

            # When this thread, leading the next batch while the instance is busy, is interrupted
            with pytest.raises(Interrupted):
                forge.predict("mlp", one, use_cache=False)

            # Then the busy run and every later request still complete, with their own answers
            assert len(busy.result(timeout=60).output_data["probabilities"]) == 40000
            later = [pool.submit(forge.predict, "mlp", one, use_cache=False) for _ in range(4)]
            for f in later:
                np.testing.assert_allclose(f.result(timeout=10).output_data["probabilities"], expected, rtol=1e-5)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_outputs_not_of_the_batch_make_a_model_unbatchable_and_answers_stay_exact(forge):
    # Given a row-wise classifier that also outputs its class list, [3], whatever the batch
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    classes = numpy_helper.from_array(np.array([10, 20, 30], np.int64), "classes_value")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"]),
         helper.make_node("Identity", ["classes_value"], ["classes"])], "with_classes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, [3])],
        initializer=[w, classes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    rec = forge.register("cls", model)
    assert not batchable(rec.inputs, rec.outputs)
    inputs = [np.full((1 + i % 3, 4), i, np.float32) for i in range(32)]  # 1 to 3 rows: some batches total 3

    results = concurrently(lambda X: forge.predict("cls", X, use_cache=False).output_data, inputs)

    for X, out in zip(inputs, results):
        probs, classes_out = mf_raw_run(model.SerializeToString(), {"x": X})
        assert out == {"probs": probs.tolist(), "classes": [10, 20, 30]}


@pytest.mark.parametrize("where", ["_hand_over", "_run_batch"])
def test_an_interrupt_at_any_point_of_leading_reaches_only_its_caller(mf_embedded_settings, monkeypatch, where):
    """A signal handler runs at a Python call in the main thread: inject one there, once, while the main thread leads
    a batch of followers from other threads. Only the main thread sees it; the followers get their answers (run by
    another leader) and the queue ends empty."""
    from modelforge_jupyter.core import batching

    settings = {**mf_embedded_settings, "dynamic_batching": True, "max_queue_delay_us": 2000, "model_instances": 1}
    mlp = build_wide_mlp(hidden=256)
    armed = threading.Event()
    original = getattr(batching.DynamicBatcher, where)

    def interrupted(*args, **kwargs):
        if where == "_run_batch":
            leading_followers = len(args[1]) > 1  # (self, batch, ...): a merged run
        else:
            leading_followers = sys._getframe(1).f_code.co_name == "_lead"  # batch taken, lead not yet handed on
        if armed.is_set() and leading_followers and threading.current_thread() is threading.main_thread():
            armed.clear()
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(batching.DynamicBatcher, where, interrupted if where == "_run_batch" else staticmethod(
        interrupted))
    with ModelForge(**settings) as forge:
        forge.register("mlp", mlp)
        stop, errors, answered = threading.Event(), [], []

        def client(i):
            X = np.full((1, 256), i / 10, np.float32)
            (expected,) = mf_raw_run(mlp, {"input": X})
            while not stop.is_set():
                try:
                    out = forge.predict("mlp", X, use_cache=False).output_data["probabilities"]
                except BaseException as err:  # noqa: BLE001 - any error a follower gets is the bug
                    errors.append(err)
                    return
                np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
                answered.append(i)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        armed.set()
        with pytest.raises(Interrupted):
            for _ in range(2000):
                forge.predict("mlp", np.ones((1, 256), np.float32), use_cache=False)
        before = len(answered)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(timeout=20)

        assert not armed.is_set() and errors == [] and not any(t.is_alive() for t in threads)
        assert len(answered) > before  # the other callers kept being served after the interrupt
        (batcher,) = forge.batchers
        (queue,) = batcher._queues.values()
        assert (queue.running, queue.pending, queue.leader, queue.active) == (0, [], None, 0)


@pytest.mark.parametrize("bad, message", [
    ({"model_instances": 0}, "model_instances must be a whole number from 1 to 1024, got 0"),
    ({"max_queue_delay_us": 10**16}, "max_queue_delay_us must be a whole number from 0 to 10000000"),
    ({"max_batch_size": 0}, "max_batch_size must be a whole number from 1 to 1048576, got 0"),
    ({"model_batching": {"rf": 5}}, "model_batching['rf'] must map setting names to values, got 5"),
    ({"model_batching": {"rf": {"dynamic_batching": "false"}}},
     "model_batching['rf'].dynamic_batching must be true or false, got 'false'"),
    ({"model_batching": {"rf": {"dynamic_batchin": True}}}, "model_batching['rf'].dynamic_batchin: not a batching"),
])
def test_batching_settings_out_of_range_are_refused_when_built(mf_embedded_settings, tmp_path, bad, message):
    with pytest.raises(ValueError) as refused:
        ModelForge(**mf_embedded_settings, **bad)

    assert str(refused.value).startswith(message)
    assert not (tmp_path / "registry.db").exists()  # refused before anything was opened (mf_embedded's registry)


def test_per_model_settings_override_the_global_ones(mf_embedded_settings):
    settings = {**mf_embedded_settings,
                "model_batching": {"rf": {"dynamic_batching": True, "max_queue_delay_us": 1000}}}
    with ModelForge(**settings) as forge:
        forge.register("rf", SAMPLES / "breast_cancer_rf.onnx")
        forge.register("diabetes", SAMPLES / "diabetes.onnx")

        forge.predict("diabetes", np.zeros((1, 10), np.float32), use_cache=False)
        assert forge.batchers == ()
        forge.predict("rf", np.zeros((1, 30), np.float32), use_cache=False)
        (batcher,) = forge.batchers
        assert (batcher.max_batch_size, batcher.max_queue_delay_us, batcher.instances, batcher.requests) == (
            64, 1000, 1, 1)
