"""Preparing a model for serving (``core.prepare``): int8 dynamic quantisation checked against the float model, output
pruning, what each step did, over the Python API (both backends), HTTP (a real jupyter server) and the magics."""

from __future__ import annotations

import warnings
from urllib.parse import urlencode

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.errors import InvalidModelError, ModelForgeError, ModelNotFoundError
from modelforge_jupyter.core.prepare import MAX_SCORE_ERROR, MIN_LABEL_AGREEMENT, SYNTHETIC_ROWS
from modelforge_jupyter.core.samples import build_wide_mlp
from modelforge_jupyter.kernel.preparation import PreparationTable

from .mf_plugin import SAMPLES, mf_assert_registers_refused, mf_http, mf_raw_run, mf_run_cell

IRIS = SAMPLES / "iris.onnx"


@pytest.fixture(scope="module")
def digits():
    """An MLPClassifier (64 -> 256 -> 128 -> 10) after a scaler, fitted on 1,500 digits; the other 297 as float32."""
    X, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=200,
                                                             random_state=0)).fit(X[:1500], y[:1500])
    return pipe, X[1500:].astype(np.float32)


def nodes(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_model_from_string(data).graph.node]


def test_dynamic_quantisation_of_an_mlp_gives_a_smaller_model_and_reports_its_agreement(mf_forge, mf_settings, digits):
    pipe, X = digits
    mf_forge.register("digits-f32", pipe, sample=X)  # the float model: converted with float32 inputs
    # a float64 sample: quantize converts with float32 inputs anyway (dynamic quantisation takes float32 weights)
    rec = mf_forge.register("digits", pipe, sample=X.astype(np.float64), quantize="dynamic", measure=True)

    prep, (step,) = rec.preparation, rec.preparation["steps"]
    quantized, reference = mf_forge.predict("digits", X).outputs, mf_forge.predict("digits-f32", X).outputs
    # independently: the stored quantised bytes in raw onnxruntime, against the float32 conversion's answers
    raw_label, raw_proba = mf_raw_run(mf_forge.model_bytes("digits"), {"input": X})
    assert np.array_equal(quantized["label"], raw_label) and np.array_equal(quantized["probabilities"], raw_proba)
    agreement = float(np.mean(raw_label == reference["label"]))
    error = float(np.abs(raw_proba.astype(np.float64) - reference["probabilities"]).max())
    assert (step["step"], step["mode"], step["weights_quantized"]) == ("quantize", "dynamic", 3)
    assert step["label_agreement"] == pytest.approx(agreement) and agreement >= MIN_LABEL_AGREEMENT
    assert step["max_score_error"] == pytest.approx(error, rel=1e-6) and 0 < error <= MAX_SCORE_ERROR
    assert step["tolerance"] == {"min_label_agreement": 0.99, "max_score_error": 0.1}
    assert prep["sample"] == {"rows": len(X), "kind": "given"}
    assert prep["size_before"] == len(mf_forge.model_bytes("digits-f32")) == step["size_before"]
    assert prep["size_after"] == rec.size_bytes == step["size_after"] < prep["size_before"] / 3  # int8 weights
    assert "MatMulInteger" in nodes(mf_forge.model_bytes("digits")) and "MatMul" not in nodes(
        mf_forge.model_bytes("digits"))
    assert [row["batch"] for row in prep["latency_p50_ms"]] == [1, 1000]
    assert all(row[k] > 0 for row in prep["latency_p50_ms"] for k in ("before", "after"))
    assert [s.dtype for s in rec.inputs] == ["float32"] and "note" in rec.conversion
    assert rec.conversion["converter"] == "skl2onnx" and "preparation" not in rec.conversion
    with ModelForge(**mf_settings) as other:  # stored: another process reads it back, in the HTTP form too
        assert other.get("digits").preparation == prep and other.get("digits").to_dict()["preparation"] == prep
        assert other.get("digits").conversion == rec.conversion and other.get("digits-f32").preparation is None


def test_gemm_weights_are_quantised_and_synthetic_rows_are_named(mf_forge):
    model = build_wide_mlp(features=32, hidden=128, classes=5)  # Gemm nodes: rewritten as MatMul + Add first

    rec = mf_forge.register("wide", model, quantize="dynamic", sample="synthetic")

    (step,) = rec.preparation["steps"]
    assert step["weights_quantized"] == 3 and rec.preparation["sample"] == {"rows": SYNTHETIC_ROWS, "kind": "synthetic"}
    assert "Gemm" not in nodes(mf_forge.model_bytes("wide")) and rec.size_bytes < len(model) / 3
    assert "latency_p50_ms" not in rec.preparation  # measure=False
    feed = {"input": np.random.default_rng(1).uniform(0, 5, (20, 32)).astype(np.float32)}
    (full,) = mf_raw_run(model, feed)
    np.testing.assert_allclose(mf_forge.predict("wide", feed).outputs["probabilities"], full, atol=MAX_SCORE_ERROR)


def outlier_model() -> bytes:
    """``scores = (x @ W)[:, :2]``, ``label = argmax(scores)``: W's first two columns are ~0.01 and one weight of its
    third is 100, so int8 per tensor (step 100/127) rounds the first two to 0 and every label changes (1 -> 0)."""
    W = np.zeros((4, 3), np.float32)
    W[:, 0], W[:, 1], W[0, 2] = 0.010, 0.011, 100.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]),
         helper.make_node("Slice", ["y", "start", "end", "axis"], ["scores"]),
         helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)],
        "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 2])],
        initializer=[numpy_helper.from_array(W, "W"), *(numpy_helper.from_array(np.array([v], np.int64), n)
                                                        for n, v in (("start", 0), ("end", 2), ("axis", 1)))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_refusals_nothing_to_quantise_answers_changed_bad_options(mf_forge):
    X, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    x = X[:10].astype(np.float32)
    cases = [
        (dict(model=IRIS, quantize="dynamic", sample=x), ModelForgeError,
         "quantize: nothing to quantise: the model has no MatMul or Gemm with constant float32 weights (its "
         "operators: Cast, LinearClassifier, Normalizer, ZipMap)"),
        (dict(model=forest, quantize="dynamic", sample=X), ModelForgeError,
         "quantize: nothing to quantise: the model has no MatMul or Gemm"),
        (dict(model=outlier_model(), quantize="dynamic", sample=X[:20].astype(np.float32)), InvalidModelError,
         "the quantised model changes the answers on the sample (20 rows): label agreement 0.0% (at least 99.0%), "
         f"max score error {0.011 * X[:20].astype(np.float32).sum(axis=1).max():.3g} (at most 0.1); row 0 label "
         "[1] -> [0], row 1 label [1] -> [0], row 2 label [1] -> [0]; register it without quantize="),  # scores -> 0
        (dict(model=IRIS, quantize="dynamic"), ModelForgeError, "quantize='dynamic' needs a sample to check"),
        (dict(model=IRIS, quantize="static"), ModelForgeError, "quantize must be 'dynamic' (or left out), got 'static'"),
        (dict(model=IRIS, outputs=["nope", "output_label"]), ModelForgeError,
         "outputs: the model has no output 'nope'; its outputs: output_label, output_probability"),
        (dict(model=IRIS, outputs=""), ModelForgeError, "outputs takes output names separated by commas, none empty"),
        (dict(model=IRIS, outputs=[]), ModelForgeError, "outputs takes output names separated by commas, none empty"),
        (dict(model=IRIS, outputs=3), ModelForgeError, "outputs takes output names (a list, or names separated"),
        (dict(model=IRIS, measure="yes"), ModelForgeError, "measure must be True or False, got 'yes'"),
        (dict(model=IRIS, sample=x[:, :3]), ModelForgeError, "sample: input 'float_input'"),  # its warm-up input
        (dict(model=IRIS, sample="real", outputs="output_label"), ModelForgeError,
         "sample must be an input, or 'synthetic'"),
        (dict(model=IRIS, sample=X[:3, :2], measure=True), ModelForgeError, "sample: input 'float_input'"),
        (dict(model=forest, sample="synthetic"), ModelForgeError, "sample='synthetic' is for ONNX models"),
    ]
    mf_assert_registers_refused(mf_forge, cases)
    with pytest.raises(ModelNotFoundError):
        mf_forge.get("m")


def test_output_pruning_drops_the_unused_branch_and_keeps_the_answers(mf_forge, digits):
    pipe, X = digits
    mf_forge.register("full", pipe, sample=X, outputs=["label", "probabilities"])  # every output: nothing cut
    rec = mf_forge.register("proba", pipe, sample=X, outputs=["probabilities"])
    iris = mf_forge.register("iris-label", IRIS, outputs="output_label", measure=True)

    (step,) = rec.preparation["steps"]
    assert [s.name for s in rec.outputs] == ["probabilities"] and step["dropped"] == ["label"]
    # the label branch (ArgMax, ArrayFeatureExtractor, Reshape, Cast) is gone; the probabilities are the same
    assert step["nodes_after"] == step["nodes_before"] - 4 == len(nodes(mf_forge.model_bytes("proba")))
    assert "ArgMax" not in nodes(mf_forge.model_bytes("proba"))
    full = mf_forge.predict("full", X).outputs["probabilities"]
    assert np.array_equal(mf_forge.predict("proba", X).outputs["probabilities"], full)
    assert (step["label_agreement"], step["max_score_error"]) == (None, 0.0)
    (istep,) = iris.preparation["steps"]
    assert (istep["kept"], istep["dropped"]) == (["output_label"], ["output_probability"])
    assert nodes(mf_forge.model_bytes("iris-label")) == ["LinearClassifier", "Cast"] and istep["nodes_before"] == 4
    assert iris.preparation["sample"]["kind"] == "synthetic" and istep["label_agreement"] == 1.0
    assert iris.size_bytes < istep["size_before"]
    x = load_iris().data.astype(np.float32)
    assert mf_forge.predict("iris-label", x).output_data["output_label"] == mf_raw_run(IRIS, {"float_input": x})[
        0].tolist()
    # both steps, in order; update prepares too
    both = mf_forge.update("proba", pipe, sample=X, outputs="probabilities", quantize="dynamic")
    assert [s["step"] for s in both.preparation["steps"]] == ["outputs", "quantize"] and both.version == 2
    assert both.preparation["size_after"] < both.preparation["size_before"]


def test_put_query_parameters_on_a_live_server(mf_live_server, mf_live_settings, digits):
    server = mf_live_server
    pipe, X = digits
    with ModelForge(**mf_live_settings) as forge:
        mlp = forge.model_bytes(forge.register("prep-src", pipe, sample=X).name)

    def put(name, body, **query):
        url = f"{server.url}modelforge/models/{name}" + (f"?{urlencode(query, doseq=True)}" if query else "")
        status, answer = mf_http("PUT", url, body, server.token)
        return status, orjson.loads(answer)

    wide = build_wide_mlp(features=32, hidden=128, classes=5)
    status, rec = put("prep-q", wide, quantize="dynamic")
    assert status == 201 and rec["preparation"]["steps"][0]["weights_quantized"] == 3
    assert rec["preparation"]["sample"] == {"rows": SYNTHETIC_ROWS, "kind": "synthetic"}
    assert rec["size_bytes"] < len(wide) / 3
    got = mf_http("GET", f"{server.url}modelforge/models/prep-q", token=server.token)
    assert orjson.loads(got[1])["preparation"] == rec["preparation"]
    feed = np.random.default_rng(2).uniform(0, 5, (5, 32)).astype(np.float32)
    request = orjson.dumps({"model_id": "prep-q", "input_data": feed.tolist(), "use_cache": False})
    answer = orjson.loads(mf_http("POST", f"{server.url}modelforge/predict", request, server.token)[1])
    with ModelForge(**mf_live_settings) as forge:
        (raw,) = mf_raw_run(forge.model_bytes("prep-q"), {"input": feed})
    np.testing.assert_allclose(answer["output_data"]["probabilities"], raw, rtol=1e-6)
    status, rec = put("prep-p", mlp, outputs="probabilities")
    assert status == 201 and [o["name"] for o in rec["outputs"]] == ["probabilities"]
    assert rec["preparation"]["steps"][0]["dropped"] == ["label"] and "latency_p50_ms" not in rec["preparation"]
    # the scaled MLP on synthetic rows (uniform in [0, 5) where digits' pixels are 0-16, some always 0): scaled inputs
    # far outside the training range, where int8 activations are coarse; refused (on its test rows it agrees: above)
    status, answer = put("prep-mlp", mlp, quantize="dynamic")
    assert status == 400 and answer["message"].startswith(
        "the quantised model changes the answers on the sample (100 rows): label agreement "), answer
    assert mf_http("GET", f"{server.url}modelforge/models/prep-mlp", token=server.token)[0] == 404
    assert put("prep-l", IRIS.read_bytes(), outputs="output_label")[1]["preparation"]["steps"][0]["dropped"] == [
        "output_probability"]
    assert put("prep-plain", IRIS.read_bytes())[1]["preparation"] is None

    refused = [
        (dict(quantize="static"), "quantize must be 'dynamic' (or left out), got 'static'"),
        (dict(quantize=""), "quantize must be 'dynamic' (or left out), got ''"),
        (dict(outputs="nope"), "outputs: the model has no output 'nope'; its outputs: label, probabilities"),
        (dict(outputs=""), "outputs takes output names separated by commas, none empty; got ''"),
        (dict(outputs=["label", "probabilities"]), "query parameter 'outputs' given 2 times; give it once"),
        (dict(version="1"), "unknown query parameter 'version' for this endpoint; it takes outputs, quantize"),
        (dict(quantise="dynamic"), "unknown query parameter 'quantise' for this endpoint; it takes outputs, quantize"),
    ]
    for query, message in refused:
        assert put("prep-bad", mlp, **query) == (400, {"message": message})
    status, answer = put("prep-bad", IRIS.read_bytes(), quantize="dynamic")
    assert status == 400 and answer["message"].startswith("quantize: nothing to quantise")
    assert mf_http("GET", f"{server.url}modelforge/models/prep-bad", token=server.token)[0] == 404
    status, _ = mf_http("GET", f"{server.url}modelforge/models/prep-q?quantize=dynamic", token=server.token)
    assert status == 400  # GET takes version only


def test_magic_shows_the_preparation_table(mf_ip, mf_forge, digits, capsys):
    pipe, X = digits
    mf_ip.user_ns.update(mlp=pipe, X_test=X)

    mf_run_cell(mf_ip, "%mf_register digits mlp --sample X_test --quantize dynamic --outputs probabilities")
    mf_run_cell(mf_ip, f"%mf_register iris {IRIS} --outputs output_label --no-measure")
    out = capsys.readouterr().out
    rec, iris = mf_forge.get("digits"), mf_forge.get("iris")
    quant = rec.preparation["steps"][1]

    table = PreparationTable(rec.preparation)
    assert table.columns == ["", "size", "labels agree", "max score error", "p50 batch 1", "p50 batch 1000"]
    assert [row[0] for row in table.rows] == ["as given", "outputs: probabilities", "quantize: dynamic int8 (3 weights)"]
    assert table.rows[2][3] == f"{quant['max_score_error']:.2g}" and table.rows[1][3] == "0"
    assert table.rows[0][4].endswith(" ms") and table.rows[1][4] == "" and table.rows[2][5].endswith(" ms")
    assert out.startswith("✓ registered digits v1\n") and repr(table) in out
    assert f"checked on {len(X)} rows of the sample" in out
    html = table._repr_html_()
    assert "<table" in html and "quantize: dynamic int8 (3 weights)" in html and "p50 batch 1000" in html
    iris_table = PreparationTable(iris.preparation)
    assert iris_table.columns == ["", "size", "labels agree", "max score error"]  # --no-measure
    assert iris_table.rows[1][:3] == ["outputs: output_label", iris_table.rows[1][1], "100.0%"]
    assert repr(iris_table) in out and "rows of synthetic rows built from the inputs" in out

    mf_ip.run_cell("%mf_register bad mlp --sample X_test --quantize int4")
    mf_ip.run_cell(f"%mf_update iris {IRIS} --outputs nope")
    assert capsys.readouterr().err.splitlines() == [
        "ModelForgeError: quantize must be 'dynamic' (or left out), got 'int4'",
        "ModelForgeError: outputs: the model has no output 'nope'; its outputs: output_label, output_probability",
    ]
