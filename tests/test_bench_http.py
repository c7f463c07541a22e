"""``%mf_bench --http``, ``python -m modelforge_jupyter.cli.bench --http`` and the kernel's HTTP client, against a real
``jupyter server`` subprocess (``mf_live_server``, embedded backend) that shares its registry and cache with the
``ModelForge`` of each test."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_iris

from modelforge_jupyter import ModelForge
from modelforge_jupyter.cli.bench import HTTP_PATHS, V2_PATHS, Budget, check_served, main, plan_bench, run_bench
from modelforge_jupyter.core.errors import ModelForgeError, ModelNotFoundError
from modelforge_jupyter.kernel.client import (
    ModelForgeClient,
    ServerNotFoundError,
    ServerUnreachableError,
    connect,
    find_server,
)
from modelforge_jupyter.core.records import PredictionResult

from .mf_plugin import SAMPLES, mf_embedded, mf_http, mf_raw_run, mf_run_in_server_kernel

IRIS = SAMPLES / "iris.onnx"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_server_env(monkeypatch):
    """No server configured: neither MODELFORGE_URL/TOKEN nor a JPY_PARENT_PID."""
    for var in ("MODELFORGE_URL", "MODELFORGE_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def shared_forge(mf_live_settings):
    """A ``ModelForge`` on the live server's registry and cache, as a kernel under that server has."""
    with ModelForge(**mf_live_settings) as forge:
        yield forge


@pytest.fixture
def model(shared_forge, request):
    """iris registered under a name of this test in the shared registry; deleted after."""
    name = "http_" + request.node.name.split("[")[0].removeprefix("test_")[:40]
    shared_forge.register(name, IRIS)
    yield name
    shared_forge.delete(name)


def test_find_server_takes_config_then_env_then_the_kernels_parent_server(mf_live_server, no_server_env,
                                                                            monkeypatch):
    # Given no configuration at all: one line saying what to set
    with pytest.raises(ServerNotFoundError, match="no Jupyter server found: this process is not a kernel") as err:
        find_server()
    assert "\n" not in str(err.value) and "MODELFORGE_URL" in str(err.value)
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))
    with pytest.raises(ServerNotFoundError, match=rf"JPY_PARENT_PID={os.getpid()}\) is not a running Jupyter"):
        find_server()

    # a kernel of the live server: its parent pid and the server's runtime dir (both inherited from the server)
    monkeypatch.setenv("JPY_PARENT_PID", str(mf_live_server.pid))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(mf_live_server.runtime_dir))
    found = find_server()
    assert (found.url, found.token) == (mf_live_server.url, mf_live_server.token)
    assert found.source == f"the Jupyter server of this kernel (pid {mf_live_server.pid})"
    assert mf_live_server.token not in repr(found)

    # the environment wins over the parent server, explicit values over both
    monkeypatch.setenv("MODELFORGE_URL", "http://127.0.0.1:9/env")
    monkeypatch.setenv("MODELFORGE_TOKEN", "env-token")
    assert (find_server().url, find_server().token) == ("http://127.0.0.1:9/env/", "env-token")
    assert find_server("http://127.0.0.1:8/given/", "t").token == "t"
    assert find_server("http://127.0.0.1:8/given").url == "http://127.0.0.1:8/given/"
    with pytest.raises(ServerNotFoundError, match="not an http"):
        find_server("127.0.0.1:8888")


def test_client_predicts_as_the_kernel_does_and_shares_its_cache(mf_live_server, shared_forge, model):
    X = load_iris().data[:3].astype(np.float32)

    with connect(mf_live_server.url, mf_live_server.token) as server:
        by_server = server.predict(model, {"float_input": X})
        conn = server._conn
        again = server.predict(model, X)  # a single-input model takes the bare array

        # Then the server computed it, over one keep-alive connection; the kernel's cache has the server's answer
        assert isinstance(by_server, PredictionResult) and (by_server.cached, again.cached) == (False, True)
        assert server._conn is conn
        label, _ = mf_raw_run(IRIS, {"float_input": X})
        assert by_server.output_data["output_label"] == label.tolist()
        in_kernel = shared_forge.predict(model, X)
        assert in_kernel.cached and in_kernel.output_data == by_server.output_data
        assert by_server.model_id == shared_forge.get(model).id
        assert [m["name"] for m in server.models()] == [m.name for m in shared_forge.models()]
        assert server.health()["database"] == "connected"
        with pytest.raises(ModelNotFoundError, match=r"'nope' is not registered \(HTTP 404, POST "):
            server.predict("nope", X)

    with ModelForgeClient(mf_live_server.url, "wrong-token") as wrong, pytest.raises(
            ModelForgeError, match="authentication required") as err:
        wrong.predict(model, X)
    assert err.value.status == 403
    with pytest.raises(ServerUnreachableError, match="cannot reach the Jupyter server at http://127.0.0.1:9/"):
        ModelForgeClient("http://127.0.0.1:9/").health()


def test_client_infer_speaks_v2_binary_and_equals_raw_onnxruntime(mf_live_server, shared_forge, model):
    from sklearn.datasets import load_breast_cancer

    forest = SAMPLES / "breast_cancer_rf.onnx"
    shared_forge.register("http_v2_forest", forest)
    try:
        x = np.resize(load_breast_cancer().data.astype(np.float32), (200, 30))
        xi = load_iris().data[::7].astype(np.float32)
        with connect(mf_live_server.url, mf_live_server.token) as server:
            assert server.has_v2 and "binary_tensor_data" in server.v2_metadata()["extensions"]
            # the forest, binary both ways: raw onnxruntime's arrays, dtypes included
            got = server.infer("http_v2_forest", {"float_input": x}, use_cache=False)
            label, proba = mf_raw_run(forest, {"float_input": x})
            assert list(got) == ["label", "probabilities"]
            assert (got["label"].dtype, got["probabilities"].dtype) == (label.dtype, proba.dtype)
            np.testing.assert_array_equal(got["label"], label)
            np.testing.assert_array_equal(got["probabilities"], proba)
            # iris: ZipMap as float32 [N, 3] in label order, the labels in the answer; the outputs filter; a version
            body, length = server.infer_body({"float_input": xi})
            answer = server.post_infer(model, body, length, version=1)
            labels, maps = mf_raw_run(IRIS, {"float_input": xi})
            np.testing.assert_array_equal(answer.outputs["output_label"], labels)
            assert answer.labels == {"output_probability": [0, 1, 2]} and answer.model_version == 1
            np.testing.assert_array_equal(answer.outputs["output_probability"],
                                          np.array([[m[k] for k in (0, 1, 2)] for m in maps], np.float32))
            only = server.infer(model, {"float_input": xi}, outputs=["output_label"])
            assert list(only) == ["output_label"]
            # one cache entry with the kernel's predict: the V2 call above cached it
            assert shared_forge.predict(model, xi).cached and server.post_infer(model, body, length).cached
            # refusals: Triton's wording, the ModelForgeError of the status
            with pytest.raises(ModelForgeError, match=r"inference input data-type is 'FP64', model expects 'FP32' "
                                                      r"for input 'float_input' of model .*\(HTTP 400, POST ") as err:
                server.infer(model, {"float_input": xi.astype(np.float64)})
            assert err.value.status == 400
            with pytest.raises(ModelNotFoundError, match=r"model 'nope' is not registered \(HTTP 404"):
                server.infer("nope", {"float_input": xi})
            with pytest.raises(ModelNotFoundError, match=r"has no version 9; versions: 1 \(HTTP 404"):
                server.infer(model, {"float_input": xi}, version=9)
        # a server without V2 routes (here: a path that is no ModelForge) is told apart
        with ModelForgeClient(mf_live_server.url + "elsewhere/", mf_live_server.token) as other:
            assert other.v2_metadata() is None and not other.has_v2
    finally:
        shared_forge.delete("http_v2_forest")


def test_run_bench_measures_the_endpoint_beside_raw_onnxruntime(mf_live_server, shared_forge, model):
    plan = plan_bench(shared_forge, model, [1, 16], paths=("raw_ort", "api_cache_off", *HTTP_PATHS))

    with connect(mf_live_server.url, mf_live_server.token) as server:
        result = run_bench(shared_forge, plan, Budget(iterations=5, warmup=2), server=server)

    assert [(r.batch, r.path) for r in result.rows] == [
        (b, p) for b in (1, 16) for p in ("raw_ort", "api_cache_off", "http_miss", "http_hit")]
    assert result.notes == ()
    for r in result.rows:
        assert r.iterations == 5 and 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
        if r.path in HTTP_PATHS:
            raw = result.row(r.batch, "raw_ort")
            assert r.ratio_p50 == pytest.approx(r.p50_ms / raw.p50_ms) and r.ratio_p50 > 1
            assert r.predictions_per_s > 0
    # the stage split of the HTTP paths is the server's own counts (the kernel ran none of those calls)
    assert [s for s, _ in result.row(16, "http_hit").stages_us] == ["cache_hit"]
    assert [s for s, _ in result.row(16, "http_miss").stages_us] == [
        "compute_input", "queue", "compute_infer", "compute_output"]


def test_run_bench_measures_v2_binary_beside_the_json_endpoint(mf_live_server, shared_forge, model):
    paths = ("raw_ort", *HTTP_PATHS, *V2_PATHS)
    plan = plan_bench(shared_forge, model, [1, 32], paths=paths)

    with connect(mf_live_server.url, mf_live_server.token) as server:
        assert server.has_v2
        result = run_bench(shared_forge, plan, Budget(iterations=5, warmup=2), server=server)

    assert [(r.batch, r.path) for r in result.rows] == [(b, p) for b in (1, 32) for p in paths]
    assert result.notes == ()  # the V2 cache-hit row found its entry cached
    for r in result.rows:
        assert r.iterations == 5 and 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
        if r.path in V2_PATHS:
            assert r.ratio_p50 == pytest.approx(r.p50_ms / result.row(r.batch, "raw_ort").p50_ms) and r.ratio_p50 > 1
            assert r.predictions_per_s > 0


def test_bench_refuses_a_server_that_does_not_share_the_registry(mf_live_server, tmp_path):
    # Given a kernel whose registry is not the server's
    with ModelForge(**mf_embedded(tmp_path)) as other, connect(mf_live_server.url, mf_live_server.token) as server:
        other.register("only_here", IRIS)
        plan = plan_bench(other, "only_here", [1], paths=("raw_ort", "http_miss"))

        with pytest.raises(ModelForgeError, match="has no model under 'only_here'.*do not share a registry"):
            check_served(server, plan.record)
        with pytest.raises(ModelForgeError, match="do not share a registry"):
            run_bench(other, plan, Budget(iterations=1), server=server)
        with pytest.raises(ValueError, match="need a server"):
            run_bench(other, plan, Budget(iterations=1))


def test_magic_bench_http_uses_the_configured_server(mf_live_server, mf_live_settings, model, no_server_env, mf_shell,
                                                     capsys):
    settings = {k: v for k, v in mf_live_settings.items() if k != "celery_broker_url"}
    ip = mf_shell(**settings, server_url=mf_live_server.url, server_token=mf_live_server.token)

    ip.run_cell(f"res = %mf_bench {model} --http --batch-sizes 1,8 --iterations 3 --warmup 1 --text").raise_error()

    res = ip.user_ns["res"]
    ip.run_cell("from modelforge_jupyter.kernel.client import find_server\nfound = find_server()").raise_error()
    assert (ip.user_ns["found"].url, ip.user_ns["found"].source) == (mf_live_server.url, "config")
    assert [(r.batch, r.path) for r in res.rows if r.path.startswith(("http", "v2"))] == [
        (b, p) for b in (1, 8) for p in HTTP_PATHS + V2_PATHS]
    for r in res.rows:  # the V2 binary rows have real figures, each with its ratio to raw ORT at its batch
        if r.path in V2_PATHS:
            assert r.iterations == 3 and 0 < r.p50_ms <= r.p99_ms and r.predictions_per_s > 0
            assert r.ratio_p50 == pytest.approx(r.p50_ms / res.row(r.batch, "raw_ort").p50_ms)
    out = capsys.readouterr()
    figures = "\n".join(line for line in out.out.splitlines() if line.startswith(model))  # the table's rows
    assert out.err == "" and figures.count(" http_hit ") == 2 and figures.count(" v2_miss ") == 2
    assert "where the time goes" in out.out  # then the stage split, the HTTP rows' from the server's counts
    # --no-cache drops the cache-hit paths
    ip.run_cell(f"res = %mf_bench {model} --http --no-cache --batch-sizes 2 --iterations 2 --text").raise_error()
    assert [r.path for r in ip.user_ns["res"].rows] == ["raw_cold", "cold", "raw_ort", "api_cache_off", "http_miss",
                                                        "v2_miss"]


def test_magic_bench_http_without_a_server_prints_one_line(mf_live_settings, model, no_server_env, mf_shell, capsys):
    settings = {k: v for k, v in mf_live_settings.items() if k != "celery_broker_url"}
    ip = mf_shell(**settings)

    result = ip.run_cell(f"%mf_bench {model} --http --iterations 2")

    result.raise_error()
    assert result.result is None
    err = capsys.readouterr().err
    assert err.startswith("ServerNotFoundError: no Jupyter server found: this process is not a kernel")
    assert err.count("\n") == 1


def test_magic_bench_http_in_a_kernel_the_server_started_finds_it_unconfigured(mf_live_server):
    # Given a kernel started by the server (REST API): no MODELFORGE_URL, only JPY_PARENT_PID and the server's
    # exported registry settings
    cells = [
        "import os; print(os.environ.get('MODELFORGE_URL'), os.environ['JPY_PARENT_PID'])",
        f"%load_ext modelforge_jupyter\n%mf_register kernel_iris {IRIS}",
        "res = %mf_bench kernel_iris --http --batch-sizes 1 --iterations 3 --warmup 1 --text",
        "print([r.path for r in res.rows])",
        "from modelforge_jupyter.kernel.client import connect\nprint(connect().url, connect().server.source)",
        "%mf_delete kernel_iris",
    ]

    env, _, bench, paths, found, _ = mf_run_in_server_kernel(mf_live_server, cells)

    assert env["stdout"] == f"None {mf_live_server.pid}\n"
    assert bench["error"] == "" and bench["stderr"] == "", bench
    assert paths["stdout"] == str(["raw_cold", "cold", "raw_ort", "api_cache_off", "api_hit", "http_miss",
                                   "http_hit", "v2_miss", "v2_hit"]) + "\n"
    assert found["stdout"] == f"{mf_live_server.url} the Jupyter server of this kernel (pid {mf_live_server.pid})\n"


def test_cli_http_refusing_a_sample_deletes_the_ones_it_uploaded_first(mf_live_server, capsys):
    # Given a server with other bytes under a sample's name
    url, token = mf_live_server.url, mf_live_server.token
    assert mf_http("PUT", url + "modelforge/models/breast_cancer_rf", (SAMPLES / "iris_v2.onnx").read_bytes(),
                token=token, **{"Content-Type": "application/octet-stream"})[0] == 201
    try:
        # When the bench uploads iris, then meets that name
        code = main(["--models", "iris,breast_cancer_rf", "--batch-sizes", "1", "--seconds", "0.01", "--http", url,
                     "--token", token])

        # Then it refuses in one line, and iris is gone from the server again
        assert code == 2
        assert "has another model named 'breast_cancer_rf'" in capsys.readouterr().err
        assert mf_http("GET", url + "modelforge/models/iris", token=token)[0] == 404
    finally:
        mf_http("DELETE", url + "modelforge/models/breast_cancer_rf", token=token)


def test_cli_http_uploads_missing_samples_measures_and_deletes_them(mf_live_server, tmp_path, capsys):
    out = tmp_path / "bench.json"

    code = main(["--models", "iris", "--batch-sizes", "1,4", "--seconds", "0.01", "--json", str(out),
                 "--http", mf_live_server.url, "--token", mf_live_server.token])

    assert code == 0
    rows = orjson.loads(out.read_bytes())["rows"]
    assert [(r["batch"], r["path"]) for r in rows if r["path"].startswith(("http", "v2"))] == [
        (b, p) for b in (1, 4) for p in ("http_miss", "http_hit", "v2_miss", "v2_hit")]
    text = capsys.readouterr().out
    assert f"HTTP: POST {mf_live_server.url}modelforge/predict, one keep-alive connection" in text
    assert f"V2: POST {mf_live_server.url}modelforge/v2/models/{{model}}/infer, binary tensors" in text
    assert text.count(" http_miss ") == 2 and text.count(" v2_hit ") == 2
    assert "V2 binary cache off, batch 4: >= 0.5x raw predictions/s" in text
    # the server's registry is as it was: the uploaded sample is gone
    status, body = mf_http("GET", mf_live_server.url + "modelforge/models/iris", token=mf_live_server.token)
    assert status == 404, body


def test_cli_http_without_a_server_exits_2_with_one_line(no_server_env, capsys):
    assert main(["--models", "iris", "--http"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ServerNotFoundError: no Jupyter server found") and err.count("\n") == 1

    assert main(["--models", "iris", "--http", "http://127.0.0.1:9/"]) == 2
    assert capsys.readouterr().err.startswith("ServerUnreachableError: cannot reach the Jupyter server")


def test_bench_http_script_reports_percentiles_per_scenario(mf_live_server):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_http.py"), "--url", mf_live_server.url,
         "--token", mf_live_server.token, "--name", "script_rf", "--seconds", "0.1", "--batch", "1,8",
         "--concurrency", "1,2"],
        capture_output=True, text=True, timeout=90, check=True,
    )

    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| ") and "batch" not in line]
    assert [(int(r[0]), int(r[1]), r[2].strip()) for r in rows] == [
        (b, c, cache) for b in (1, 8) for cache in ("hit", "miss") for c in (1, 2)]
    for r in rows:
        p50, p95, p99 = (float(v) for v in r[4:7])
        assert 0 < p50 <= p95 <= p99 and float(r[8]) == pytest.approx(float(r[7]) * int(r[0]), rel=0.01, abs=1)
    mf_http("DELETE", mf_live_server.url + "modelforge/models/script_rf", token=mf_live_server.token)


def test_bench_http_script_measures_the_floor_and_batching_on_a_started_server():
    """``scripts/bench_http.py`` as the README runs it: its own server (batching on), an MLP built on the fly, Jupyter's
    floor, then one row per batch size x cache x concurrency with figures that add up."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_http.py"), "--start-server", "--mlp", "64x1", "--name",
           "mlp", "--batch", "1,4", "--concurrency", "1,3", "--cache", "miss", "--seconds", "0.3", "--floor",
           "--server-arg=--ModelForgeApp.dynamic_batching=true", "--server-arg=--ModelForgeApp.max_workers=4"]

    built_before = set(Path(tempfile.gettempdir()).glob("mf-mlp-*"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=ROOT)

    assert done.returncode == 0, done.stderr[-2000:]
    assert set(Path(tempfile.gettempdir()).glob("mf-mlp-*")) == built_before  # the built model is deleted
    lines = done.stdout.splitlines()
    assert any(line.startswith("# floor: GET /api/status (Jupyter's own handler, token auth)") for line in lines)
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [(int(r[0]), r[2].strip(), int(r[1])) for r in rows] == [(1, "miss", 1), (1, "miss", 3), (4, "miss", 1),
                                                                     (4, "miss", 3)]
    for r in rows:
        requests, p50, p95, p99, per_s, predictions_per_s = (float(v) for v in (r[3], *r[4:]))
        assert requests > 0 and 0 < p50 <= p95 <= p99
        assert predictions_per_s == pytest.approx(per_s * int(r[0]), abs=int(r[0]))  # both rounded to 1
