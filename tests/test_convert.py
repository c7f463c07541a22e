"""Registering a fitted model: converted (skl2onnx; onnxmltools for XGBoost and LightGBM), verified on its sample
through the engine, stored with its conversion record. Real estimators fitted on scikit-learn's bundled datasets, on both backends."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxmltools
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.semi_supervised import LabelPropagation
from sklearn.tree import DecisionTreeClassifier
from xgboost import XGBClassifier, XGBRanker, XGBRegressor

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core import database
from modelforge_jupyter.core.convert import sample_feed
from modelforge_jupyter.core.errors import InvalidModelError, ModelForgeError, ModelNotFoundError
from modelforge_jupyter.core.verify import TOLERANCES

from .mf_plugin import SAMPLES, mf_assert_registers_refused, mf_embedded, mf_run_cell

NUMERIC = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def assert_within(got, expected, dtype: str) -> None:
    """``got`` equals ``expected`` within the tolerance ``verify`` states for ``dtype`` outputs."""
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64).reshape(np.shape(expected)), expected,
                               rtol=rtol, atol=atol)


def iris_frame():
    """Iris as a DataFrame with a string column (``size``: small / medium / large by sepal length), and its target."""
    data = load_iris(as_frame=True)
    frame = data.data.copy()
    frame.columns = NUMERIC
    frame["size"] = np.select([frame.sepal_length < 5.4, frame.sepal_length < 6.3], ["small", "medium"], "large")
    return frame, data.target.to_numpy()


def churn_pipeline(frame, y):
    pre = ColumnTransformer([("num", StandardScaler(), NUMERIC), ("cat", OneHotEncoder(), ["size"])])
    return Pipeline([("pre", pre), ("lr", LogisticRegression(max_iter=1000))]).fit(frame, y)


def test_pipeline_on_a_dataframe_registers_one_input_per_column_and_predicts_as_the_original(mf_forge, mf_settings):
    frame, y = iris_frame()
    pipe = churn_pipeline(frame, y)

    rec = mf_forge.register("churn", pipe, sample=frame.iloc[::3])
    result = mf_forge.predict("churn", sample_feed(frame), use_cache=False)

    assert [(s.name, s.dtype, s.shape) for s in rec.inputs] == [
        *[(c, "float64", [None, 1]) for c in NUMERIC], ("size", "string", [None, 1])]
    assert [s.name for s in rec.outputs] == ["label", "probabilities"]  # plain tensors: zipmap=False
    assert result.output_data["label"] == pipe.predict(frame).tolist()
    assert_within(result.output_data["probabilities"], pipe.predict_proba(frame), "float64")
    conv = rec.conversion
    assert (conv["converter"], conv["source"], conv["sample_rows"]) == (
        "skl2onnx", "sklearn.pipeline.Pipeline", 50)
    assert conv["compared"] == {"label": "predict", "probabilities": "predict_proba"}
    assert conv["tolerance"] == {"float64": {"rtol": 1e-6, "atol": 1e-9}} and "note" not in conv
    assert 0 <= conv["max_abs_error"] < 1e-9 and conv["max_rel_error"] < 1e-6
    # stored in the database (PostgreSQL JSON / SQLite JSON text), read back by another ModelForge, in to_dict()
    engine = sa.create_engine(mf_settings["database_url"])
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT conversion FROM mf_model_versions")).scalars().all()
    engine.dispose()
    (column,) = [s if isinstance(s, dict) else json.loads(s) for s in stored]
    assert column.pop("warmup")["rows"] == 8 and column == conv  # with the warm-up input: 8 of the sample's rows
    with ModelForge(**mf_settings) as other:
        assert other.get("churn").to_dict()["conversion"] == conv


def test_an_estimator_fitted_on_a_numeric_dataframe_takes_its_columns_as_one_input(mf_forge):
    # Given a plain estimator (no ColumnTransformer) fitted on a numeric DataFrame
    frame, y = iris_frame()
    numeric = frame[NUMERIC]
    model = LogisticRegression(max_iter=500).fit(numeric, y)
    # When it is registered with the DataFrame as its sample
    rec = mf_forge.register("lr_frame", model, sample=numeric.iloc[::3])
    # Then its columns are one 2-D input, as the estimator saw them, and it predicts as the original
    assert [(s.name, s.shape) for s in rec.inputs] == [("input", [None, len(NUMERIC)])]
    result = mf_forge.predict("lr_frame", numeric.to_numpy(), use_cache=False)
    assert result.output_data["label"] == model.predict(numeric).tolist()
    # and text columns without a ColumnTransformer to route them are refused, naming them
    with pytest.raises(ModelForgeError, match=r"text columns \('size'\) need a model that routes columns by name"):
        mf_forge.register("lr_text", model, sample=frame.iloc[::3])


def test_updating_with_the_same_fitted_model_adds_no_version(mf_forge):
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(X.astype(np.float32), y)
    first = mf_forge.register("same", model, sample=X[:20].astype(np.float32))
    again = mf_forge.update("same", model, sample=X[:20].astype(np.float32))
    assert (again.version, again.sha256) == (1, first.sha256)


def test_a_path_that_is_no_file_says_so_before_sample_is_questioned(mf_forge):
    with pytest.raises(ModelForgeError, match=r"^no model file at 'undefined_var'"):
        mf_forge.register("x", "undefined_var", sample=np.zeros((2, 2)))


def test_gradient_boosting_on_float64_rows_is_converted_with_float32_inputs(mf_forge):
    X, y = load_breast_cancer(return_X_y=True)
    model = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(X, y)

    rec = mf_forge.register("gb", model, sample=X[:80])
    result = mf_forge.predict("gb", X, use_cache=False)  # float64 rows, cast to the float32 input

    assert [(s.name, s.dtype, s.shape) for s in rec.inputs] == [("input", "float32", [None, 30])]
    assert result.output_data["label"] == model.predict(X).tolist()
    assert_within(result.output_data["probabilities"], model.predict_proba(X), "float32")
    assert rec.conversion["note"] == "float inputs declared float32 (the sample's float64 is cast, as requests are)"
    assert rec.conversion["tolerance"] == {"float32": {"rtol": 1e-4, "atol": 1e-4}}


def test_random_forest_regressor_and_mlp_classifier(mf_forge):
    Xd, yd = load_diabetes(return_X_y=True)
    forest = RandomForestRegressor(n_estimators=10, random_state=0).fit(Xd, yd)
    Xi, yi = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0).fit(Xi, yi)

    forest_rec = mf_forge.register("forest", forest, sample=Xd[:40].astype(np.float32))
    mlp_rec = mf_forge.register("mlp", mlp, sample=Xi[::5])  # float64: MLPs convert in float64

    assert [s.dtype for s in forest_rec.inputs + forest_rec.outputs] == ["float32", "float32"]
    assert_within(mf_forge.predict("forest", Xd).output_data["variable"], forest.predict(Xd), "float32")
    assert forest_rec.conversion["max_abs_error"] > 0  # float32 sums of leaves: measured, not assumed
    assert [s.dtype for s in mlp_rec.inputs] == ["float64"]
    out = mf_forge.predict("mlp", Xi).output_data
    assert out["label"] == mlp.predict(Xi).tolist()
    assert_within(out["probabilities"], mlp.predict_proba(Xi), "float64")


BOOSTED = {  # name: (estimator, dataset loader); LightGBM's verbosity=-1: no log lines (warnings are errors here)
    "xgb_classifier": (lambda: XGBClassifier(n_estimators=20, max_depth=3, random_state=0), load_breast_cancer),
    "xgb_regressor": (lambda: XGBRegressor(n_estimators=20, max_depth=3, random_state=0), load_diabetes),
    "lgbm_classifier": (lambda: LGBMClassifier(n_estimators=20, verbosity=-1, random_state=0), load_iris),
    "lgbm_regressor": (lambda: LGBMRegressor(n_estimators=20, verbosity=-1, random_state=0), load_diabetes),
}


@pytest.mark.parametrize("name", list(BOOSTED))
def test_xgboost_and_lightgbm_register_by_object_and_predict_as_the_original(mf_forge, name):
    # Given an XGBoost / LightGBM scikit-learn model fitted on float64 rows of a bundled dataset
    make, load = BOOSTED[name]
    X, y = load(return_X_y=True)
    model = make().fit(X, y)
    classifier = "classifier" in name
    # When it is registered by object with a few rows as its sample, then predicted on every row with NumPy
    rec = mf_forge.register(name, model, sample=X[::4])
    out = mf_forge.predict(name, X, use_cache=False).output_data
    # Then its input is float32 (both libraries' trees split in float32) with a dynamic batch, outputs are plain
    # tensors with one row per input row, labels equal the original's predict() and scores are within tolerance
    assert [(s.name, s.dtype, s.shape) for s in rec.inputs] == [("input", "float32", [None, X.shape[1]])]
    if classifier:
        assert [(s.name, s.shape) for s in rec.outputs] == [
            ("label", [None]), ("probabilities", [None, len(np.unique(y))])]
        assert out["label"] == model.predict(X).tolist()
        assert_within(out["probabilities"], model.predict_proba(X), "float32")
    else:
        assert [(s.name, s.dtype, s.shape) for s in rec.outputs] == [("variable", "float32", [None, 1])]
        assert_within(out["variable"], model.predict(X), "float32")
    conv = rec.conversion
    assert (conv["converter"], conv["converter_version"], conv["source"], conv["sample_rows"]) == (
        "onnxmltools", onnxmltools.__version__, f"{type(model).__module__}.{type(model).__name__}", len(X[::4]))
    assert conv["compared"] == ({"label": "predict", "probabilities": "predict_proba"} if classifier
                                else {"variable": "predict"})
    assert conv["tolerance"] == {"float32": {"rtol": 1e-4, "atol": 1e-4}} and "note" in conv
    assert 0 < conv["max_abs_error"] <= 1e-4 and conv["max_rel_error"] <= 1e-4  # float32 sums: measured, not 0
    assert mf_forge.get(name).conversion == conv


def test_boosted_models_fitted_on_a_dataframe_or_string_labels_convert(mf_forge):
    # Given XGBoost fitted on a DataFrame (its trees name the columns: onnxmltools reads only f0, f1...) and LightGBM
    # fitted with string class labels
    frame, y = iris_frame()
    numeric = frame[NUMERIC]
    xgb = XGBClassifier(n_estimators=10, max_depth=3, random_state=0).fit(numeric, y)
    species = np.array(["setosa", "versicolor", "virginica"])[y]
    lgbm = LGBMClassifier(n_estimators=10, verbosity=-1, random_state=0).fit(numeric.to_numpy(), species)
    # When both are registered and predicted
    xgb_rec = mf_forge.register("xgb_frame", xgb, sample=numeric.iloc[::3])
    lgbm_rec = mf_forge.register("lgbm_names", lgbm, sample=numeric.to_numpy()[::3])
    # Then they answer as the originals, and the user's XGBoost model keeps its feature names
    assert xgb_rec.inputs[0].shape == [None, len(NUMERIC)] and xgb.get_booster().feature_names == NUMERIC
    assert mf_forge.predict("xgb_frame", numeric.to_numpy()).output_data["label"] == xgb.predict(numeric).tolist()
    assert lgbm_rec.outputs[0].dtype == "string"
    got = mf_forge.predict("lgbm_names", numeric.to_numpy()).output_data["label"]
    assert got == lgbm.predict(numeric.to_numpy()).tolist() and set(got) == set(species)


def test_boosted_models_onnxmltools_cannot_take_are_refused_in_one_line(mf_forge):
    import lightgbm
    import xgboost

    X, y = load_iris(return_X_y=True)
    ranker = XGBRanker(n_estimators=3).fit(X, y, qid=np.repeat(np.arange(15), 10))
    raw = xgboost.train({"objective": "multi:softprob", "num_class": 3}, xgboost.DMatrix(X, y), 3)
    raw_lgbm = lightgbm.train({"objective": "regression", "verbosity": -1}, lightgbm.Dataset(X, y), 3)
    cases = [
        (dict(model=XGBClassifier(), sample=X), InvalidModelError,
         "this xgboost.sklearn.XGBClassifier is not fitted: call its fit() first"),
        (dict(model=raw, sample=X), InvalidModelError,
         "cannot convert a raw xgboost.core.Booster: register the scikit-learn model it was trained as"),
        (dict(model=raw_lgbm, sample=X), InvalidModelError, "cannot convert a raw lightgbm.basic.Booster"),
        (dict(model=ranker, sample=X), InvalidModelError,
         f"onnxmltools {onnxmltools.__version__} cannot convert this xgboost.sklearn.XGBRanker: "),
    ]
    mf_assert_registers_refused(mf_forge, cases)


def test_zipmap_true_gives_probability_maps_and_update_adds_a_converted_version(mf_forge):
    X, y = load_iris(return_X_y=True)
    first = LogisticRegression(max_iter=1000).fit(X, y)
    second = LogisticRegression(max_iter=1000, C=0.1).fit(X, y)

    rec = mf_forge.register("lr", first, sample=X[:10], zipmap=True)
    v2 = mf_forge.update("lr", second, sample=X[:10].astype(np.float32))
    maps = mf_forge.predict("lr", X[:3], version=1).output_data["output_probability"]

    assert [s.name for s in rec.outputs] == ["output_label", "output_probability"]
    assert_within([[m[str(c)] for c in range(3)] for m in maps], first.predict_proba(X[:3]), "float32")
    assert (v2.version, v2.versions, [s.name for s in v2.outputs]) == (2, [1, 2], ["label", "probabilities"])
    assert v2.conversion["tolerance"] == {"float32": {"rtol": 1e-4, "atol": 1e-4}}
    # ZipMap maps float32 probabilities only: skl2onnx's float64 model with a ZipMap does not load in ONNX Runtime,
    # so the float64 sample gave float32 inputs, judged at float32's tolerance
    assert [s.dtype for s in rec.inputs] == ["float32"] and "note" in rec.conversion
    assert mf_forge.get("lr", 1).conversion == rec.conversion


def threshold_rows(tree, X, rng, mean=(0.0, 0.0), scale=(1.0, 1.0)):
    """Rows of ``X`` with the feature of each split of ``tree`` (a fitted tree's ``tree_``) set within a few float32
    ulps of its threshold, in raw units (``threshold * scale + mean``: a scaler's before the tree)."""
    rows = []
    for node in np.flatnonzero(tree.children_left >= 0):
        f = tree.feature[node]
        edge = tree.threshold[node] * scale[f] + mean[f]
        for k in range(-40, 41):
            row = X[rng.integers(len(X))].copy()
            row[f] = edge + k * np.spacing(np.float32(edge)) / 8
            rows.append(row)
    return np.array(rows)


def test_a_conversion_that_disagrees_is_refused_showing_the_worst_rows(mf_forge):
    """A scaler before a tree, fitted on float64 data: scikit-learn scales in float64, then compares in float32;
    the ONNX model (float32 inputs: ONNX Runtime has no float64 tree ensemble) scales in float32, so rows within an ulp
    of a threshold fall the other way. (A tree alone converts exactly: skl2onnx moves each threshold to the float32
    that splits float32 inputs as scikit-learn does, checked last.)"""
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1000, size=(300, 2))
    y = (X[:, 0] + X[:, 1] > 1000).astype(int)
    pipe = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=6, random_state=0)).fit(X, y)
    sample = threshold_rows(pipe[-1].tree_, X, rng, pipe[0].mean_, pipe[0].scale_)
    # the rows that really disagree, found independently: skl2onnx's float32 model in a raw session
    from skl2onnx import to_onnx

    raw = mf_forge.raw_session(to_onnx(pipe, sample[:1].astype(np.float32), options={"zipmap": False})
                               .SerializeToString())
    onnx_labels = raw.run(["label"], {"X": sample.astype(np.float32)})[0]
    expected = pipe.predict(sample)
    differ = np.flatnonzero(onnx_labels != expected)
    assert len(differ) >= 3

    with pytest.raises(InvalidModelError) as info:
        mf_forge.register("tree", pipe, sample=sample)

    msg = str(info.value)
    shown = ", ".join(f"row {i} expected {expected[i]} got {onnx_labels[i]}" for i in differ[:3])
    assert info.value.status == 400 and "\n" not in msg
    assert (f"output 'label' vs predict(): {len(differ)} of {len(sample)} rows differ ({shown})") in msg
    assert "output 'probabilities' vs predict_proba():" in msg and "max abs error 1, max rel error" in msg
    assert "max rel error 1;" in msg and msg.endswith(
        "the ONNX model computes in float32: rows near a tree threshold that falls between float32 values go the other "
        "way when float64 steps before the tree (a scaler) are computed in float32; try: fit on float32 data and pass "
        "a float32 sample (X.astype(np.float32)), or drop the steps trees do not need (scaling)")
    with pytest.raises(ModelNotFoundError):
        mf_forge.get("tree")
    tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(X, y)
    plain = mf_forge.register("plain", tree, sample=threshold_rows(tree.tree_, X, rng))
    assert plain.conversion["max_abs_error"] == 0.0


def test_refusals_say_what_is_wrong_in_one_line(mf_forge):
    X, y = load_iris(return_X_y=True)
    fitted = LogisticRegression(max_iter=1000).fit(X, y)
    cases = [
        (dict(model=fitted), ModelForgeError, "a fitted LogisticRegression needs sample=: a few rows of its input"),
        (dict(model=object(), sample=X), InvalidModelError,
         "cannot convert a builtins.object: ModelForge converts a fitted scikit-learn estimator or Pipeline"),
        (dict(model=LogisticRegression(), sample=X), InvalidModelError,
         "this sklearn.linear_model._logistic.LogisticRegression is not fitted: call its fit() first"),
        (dict(model=LabelPropagation().fit(X, y), sample=X), InvalidModelError,
         "skl2onnx 1.20.0 cannot convert this sklearn.semi_supervised._label_propagation.LabelPropagation: Unable "
         "to find a shape calculator for type"),
        (dict(model=fitted, sample=X[0]), ModelForgeError, "sample must be 2-D [rows, features]"),
        (dict(model=fitted, sample=X[:, :3]), ModelForgeError, "the original model's predict() failed on the sample"),
        (dict(model=SAMPLES / "iris.onnx", zipmap=True), ModelForgeError, "zipmap is for a fitted model to convert"),
        (dict(model=SAMPLES / "iris.onnx", zipmap=True), ModelForgeError, "zipmap is for a fitted model to convert"),
        (dict(model=None), InvalidModelError, "cannot convert a builtins.NoneType: ModelForge converts"),
    ]
    mf_assert_registers_refused(mf_forge, cases)


def test_magics_register_and_update_a_variable_with_its_sample(mf_ip, mf_forge, tmp_path, monkeypatch, capsys):
    X, y = load_iris(return_X_y=True)
    mf_ip.user_ns.update(model=LogisticRegression(max_iter=1000).fit(X, y), iris=X,
                         other=LogisticRegression(max_iter=1000, C=0.1).fit(X, y))

    mf_run_cell(mf_ip, "%mf_register lr model --sample iris[:20]")
    mf_run_cell(mf_ip, "%mf_update lr other --sample iris[:20].astype('float32') --zipmap")
    rec1, rec2 = mf_forge.get("lr", 1), mf_forge.get("lr", 2)
    out = capsys.readouterr().out.splitlines()

    assert out == [
        "✓ registered lr v1",
        "  inputs   float64 [?, 4]",
        "  outputs  label int64 [?], probabilities float64 [?, 3]",
        f"  converted by skl2onnx 1.20.0 from sklearn.linear_model._logistic.LogisticRegression; verified on 20 "
        f"rows: max abs error {rec1.conversion['max_abs_error']:.2g}, max rel error "
        f"{rec1.conversion['max_rel_error']:.2g} (float64 rtol 1e-06, atol 1e-09)",
        "✓ updated lr to v2 (versions 1, 2)",
        "  inputs   float32 [?, 4]",
        "  outputs  output_label int64 [?], output_probability map per row",
        f"  converted by skl2onnx 1.20.0 from sklearn.linear_model._logistic.LogisticRegression; verified on 20 "
        f"rows: max abs error {rec2.conversion['max_abs_error']:.2g}, max rel error "
        f"{rec2.conversion['max_rel_error']:.2g} (float32 rtol 0.0001, atol 0.0001)",
    ]
    assert mf_forge.predict("lr", X[:4], version=1).output_data["label"] == \
        mf_ip.user_ns["model"].predict(X[:4]).tolist()

    mf_ip.run_cell("%mf_register nosample model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").write_bytes((SAMPLES / "iris.onnx").read_bytes())
    mf_ip.run_cell("%mf_register twice model --sample iris")
    mf_run_cell(mf_ip, "%mf_register fromfile ./model")
    assert capsys.readouterr().err.splitlines() == [
        "ModelForgeError: a fitted LogisticRegression needs sample=: a few rows of its input (a 2-D numpy array or a "
        "pandas DataFrame) to set the ONNX input signature and to check the conversion on",
        "UsageError: 'model' is both a variable and a file here: write ./model for the file, or rename the variable",
    ]
    assert sorted(m.name for m in mf_forge.models()) == ["fromfile", "lr"]
    assert mf_forge.get("fromfile").conversion is None


def alembic_config(conn):
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(database.__file__).parent / "migrations"))
    cfg.attributes["connection"] = conn
    return cfg


def test_migration_0002_adds_the_conversion_column_to_a_registry_with_models(mf_settings, tmp_path):
    """A registry written before conversions (revision 0001, one model) is upgraded on first use: the old version's
    conversion is None and it still predicts; a converted model registers beside it; 0002 downgrades cleanly."""
    with ModelForge(**mf_embedded(tmp_path / "scratch")) as scratch:  # the specs a 0001 registry would hold
        iris = scratch.register("iris", SAMPLES / "iris.onnx")
    engine = sa.create_engine(mf_settings["database_url"])
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        now = iris.created_at
        conn.execute(sa.text("INSERT INTO mf_models VALUES (:id, 'iris', 1, :now, :now)"), {"id": iris.id, "now": now})
        conn.execute(sa.text("INSERT INTO mf_blobs VALUES (:sha, :data, :size, :now)"),
                     {"sha": iris.sha256, "data": (SAMPLES / "iris.onnx").read_bytes(), "size": iris.size_bytes,
                      "now": now})
        conn.execute(sa.text("INSERT INTO mf_model_versions VALUES (:id, 1, :sha, :inputs, :outputs, :now)"),
                     {"id": iris.id, "sha": iris.sha256, "now": now,
                      "inputs": json.dumps([s.to_dict() for s in iris.inputs]),
                      "outputs": json.dumps([s.to_dict() for s in iris.outputs])})
    X, y = load_iris(return_X_y=True)

    with ModelForge(**mf_settings) as forge:
        old = forge.get("iris")
        prediction = forge.predict("iris", X[:2].astype(np.float32))
        converted = forge.register("lr", LogisticRegression(max_iter=1000).fit(X, y), sample=X[:5])

    assert (old.id, old.sha256, old.conversion) == (iris.id, iris.sha256, None)
    assert prediction.output_data["output_label"] == [0, 0]
    assert converted.conversion["converter"] == "skl2onnx"
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        command.downgrade(alembic_config(conn), "0001")
    columns = [c["name"] for c in sa.inspect(engine).get_columns("mf_model_versions")]
    engine.dispose()
    assert columns == ["model_id", "version", "sha256", "inputs", "outputs", "created_at"]
