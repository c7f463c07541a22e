"""Regenerate the sample models in modelforge_jupyter/sample_models/ from scikit-learn's bundled data sets.

Run: .venv/bin/python scripts/build_models.py   (needs the [test] extra: scikit-learn, skl2onnx)

Each model is trained on a data set that ships inside scikit-learn (no download), with a fixed random_state so the
files are reproducible for a given scikit-learn / skl2onnx version:

- iris.onnx            LogisticRegression on iris; input float_input float32 [N, 4]; outputs output_label int64 [N]
                       and output_probability (ZipMap: sequence of {class: probability}).
- iris_v2.onnx         the same classifier trained with C=0.05 (different probabilities): a second version for updates.
- breast_cancer_rf.onnx  RandomForestClassifier(100 trees) on breast cancer; float_input float32 [N, 30];
                       ZipMap disabled, so output_probability is a float32 tensor [N, 2].
- diabetes.onnx        GradientBoostingRegressor on diabetes; float_input float32 [N, 10]; variable float32 [N, 1].
"""

from pathlib import Path

from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

OUT = Path(__file__).resolve().parent.parent / "modelforge_jupyter" / "sample_models"
OPSET = {"": 17, "ai.onnx.ml": 3}


def _save(name: str, model, X, options: dict | None = None) -> None:
    initial_types = [("float_input", FloatTensorType([None, X.shape[1]]))]
    onx = to_onnx(model, initial_types=initial_types, target_opset=OPSET, options=options)
    path = OUT / name
    path.write_bytes(onx.SerializeToString())
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    X, y = load_iris(return_X_y=True)
    _save("iris.onnx", LogisticRegression(max_iter=500).fit(X, y), X)
    _save("iris_v2.onnx", LogisticRegression(C=0.05, max_iter=500).fit(X, y), X)
    X, y = load_breast_cancer(return_X_y=True)
    rf = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(X, y)
    _save("breast_cancer_rf.onnx", rf, X, {id(rf): {"zipmap": False}})
    X, y = load_diabetes(return_X_y=True)
    _save("diabetes.onnx", GradientBoostingRegressor(n_estimators=100, random_state=0).fit(X, y), X)


if __name__ == "__main__":
    main()
