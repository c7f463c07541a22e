"""Memory a run takes outside ONNX Runtime's arena (strings copied inside a Loop) is bounded per request by
``max_request_memory_bytes``: the watchdog reads the RSS while runs are in flight and stops the run whose thread took
the pages (``deadline``). Budgets are 32 MiB, so a test grows a process by tens of MB, ~220 MB on code without it
(in a server subprocess)."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper

from modelforge_jupyter.core.engine import Engine
from modelforge_jupyter.core.errors import ResourceLimitError

from .mf_plugin import MiB, mf_http, mf_isolated_env, mf_proc_status, mf_spin_input, mf_spin_model, mf_start_server

BUDGET = 32 * MiB


def string_loop(chars: int = 4000) -> onnx.ModelProto:
    """The tester's model: a Loop run ``n`` times (``n`` a request's value) whose body outputs a ``chars``-character
    constant string; ``y`` is the shape of the ``n`` strings collected, so the answer is two numbers."""
    text = helper.make_tensor("text", TensorProto.STRING, [1], [b"L" * chars])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Constant", [], ["t"], value=text)],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("t", TensorProto.STRING, [1])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", ""], ["all"], body=body), helper.make_node("Shape", ["all"], ["y"])], "loop",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_run_past_the_budget_is_stopped_and_the_server_keeps_its_memory(tmp_path):
    # Given a server whose requests may each raise its memory by 32 MiB
    env = mf_isolated_env(tmp_path, MODELFORGE_DATA_DIR=str(tmp_path / "modelforge"),
                       MODELFORGE_MAX_REQUEST_MEMORY_BYTES=str(BUDGET))
    server = mf_start_server(tmp_path / "server", env)
    try:
        def predict(n: int) -> tuple[int, dict]:
            body = orjson.dumps({"model_id": "loop", "input_data": n, "use_cache": False})
            status, answer = mf_http("POST", server.url + "modelforge/predict", body, server.token)
            return status, orjson.loads(answer)

        assert mf_http("PUT", server.url + "modelforge/models/loop", string_loop().SerializeToString(),
                    server.token)[0] == 201
        status, body = predict(1000)
        assert status == 200 and body["output_data"] == {"y": [1000, 1]}
        start = mf_proc_status("VmHWM", server.pid)

        # When a 58-byte request asks 50,000 copies of the 4,000-character string: 200 MB outside the arena
        status, body = predict(50_000)

        # Then its run is stopped near the budget: 413 naming it, and the server's peak stayed near it
        grown = mf_proc_status("VmHWM", server.pid) - start
        assert grown < BUDGET + 24 * MiB, grown >> 20
        assert status == 413 and f"({BUDGET} bytes: max_request_memory_bytes" in body["message"]
        assert "MODELFORGE_MAX_REQUEST_MEMORY_BYTES" in body["message"] and "/" not in body["message"]

        # and stopping it again and again does not pile up: what it took went back, small requests are served
        for _ in range(3):
            assert predict(50_000)[0] == 413
        assert mf_proc_status("VmRSS", server.pid) - start < 16 * MiB
        status, body = predict(2000)
        assert status == 200 and body["output_data"] == {"y": [2000, 1]}
    finally:
        server.stop()


def spin_in_a_thread(engine: Engine, spin: bytes, outcome: dict[str, object]) -> threading.Thread:
    """Start a thread running the CPU-bound Loop (allocates nothing, ~1-2 s); ``outcome["spin"]`` gets its answer or
    the error that stopped it."""

    def spin_for_a_while() -> None:
        try:
            outcome["spin"] = engine.run("spin", lambda: spin, {"x": mf_spin_input(600_000)}, "spin")
        except Exception as err:  # noqa: BLE001 - recorded for the assertion
            outcome["spin"] = err

    thread = threading.Thread(target=spin_for_a_while)
    thread.start()
    return thread


def test_the_run_that_takes_the_memory_is_the_one_stopped():
    # Given a long run that allocates nothing (a CPU-bound Loop), started first, and a string Loop beside it
    engine = Engine(max_request_memory_bytes=BUDGET)
    spin, strings = mf_spin_model().SerializeToString(), string_loop().SerializeToString()
    engine.inspect("spin", spin)
    engine.inspect("strings", strings)
    outcome: dict[str, object] = {}

    innocent = spin_in_a_thread(engine, spin, outcome)
    time.sleep(0.1)

    # When the string Loop takes 200 MB while the other runs
    with pytest.raises(ResourceLimitError) as stopped:
        engine.run("strings", lambda: strings, {"n": np.array(50_000, np.int64)}, "strings")
    running = innocent.is_alive()
    innocent.join(60)

    # Then the string Loop is stopped (its thread took the pages), not the older run, which completes
    assert isinstance(outcome["spin"], dict) and len(outcome["spin"]["y"]) == 1, outcome["spin"]
    assert stopped.value.status == 413 and "model 'strings' was stopped" in str(stopped.value)
    assert running, "the CPU-bound run ended before the string Loop was stopped: make it longer"


def test_memory_another_thread_takes_stops_no_run():
    # Given a long run that allocates nothing, watched with a 32 MiB budget
    engine = Engine(max_request_memory_bytes=BUDGET)
    spin = mf_spin_model().SerializeToString()
    engine.inspect("spin", spin)
    outcome: dict[str, object] = {}

    runner = spin_in_a_thread(engine, spin, outcome)
    time.sleep(0.1)

    # When another thread (a request body being decoded, a user's array) takes 4x the budget while it runs
    held = np.ones(4 * BUDGET // 8)
    time.sleep(1.0)  # the watchdog looks at least every 0.5 s
    running = runner.is_alive()
    runner.join(60)
    del held

    # Then the run is not blamed for it: it completes
    assert isinstance(outcome["spin"], dict) and len(outcome["spin"]["y"]) == 1, outcome["spin"]
    assert running, "the run ended before the other thread's memory was seen: make it longer"
