"""Verification of a converted model before it is stored: the engine's answers on the sample against the original's.

The converted model runs through the ``Engine`` that will serve it (same ``SessionOptions``, execution providers and
input conversion: ``tensors.prepare_feed`` casts the sample as it casts requests), never a session of its own. Its
outputs are paired in order with the original's ``predict`` and, for a classifier with one, ``predict_proba``
(skl2onnx and onnxmltools put the label first, then the scores):

- labels (integer, string, bool outputs) must match exactly, row for row;
- scores (float outputs) must satisfy ``|got - expected| <= atol + rtol * |expected|`` element-wise (NaN matches NaN),
  with ``TOLERANCES`` by the ONNX output's dtype:

  - float32: rtol 1e-4, atol 1e-4. float32 carries 24 bits (eps 1.2e-7); a model computing in float32 rounds every
    intermediate value, and intermediate values (logits of features in the thousands, sums of 100 tree leaves) reach
    ~1e3, so a probability can be off by ~1e-5 and a regression target by ~1e3 eps relative. 1e-4 relative (~800 eps)
    and 1e-4 absolute leave room for that, while a wrong branch (another leaf's value) or a wrong class does not fit.
    Measured: MLPClassifier on unscaled breast-cancer features 1.9e-5 absolute; RandomForestRegressor on diabetes
    2.4e-5 absolute on targets up to 346; 20 trees (onnxmltools 1.16) on all rows: XGBClassifier (breast cancer)
    1.2e-7 absolute / 2.1e-5 relative, XGBRegressor (diabetes) 4.6e-5 / 3.5e-7, LGBMClassifier (iris) 1.1e-7 / 4.2e-7,
    LGBMRegressor (diabetes) 4.4e-5 / 3.1e-7.
  - float64: rtol 1e-6, atol 1e-9: a model run in float64 agrees to ~1e-14; 1e-6 leaves room for summation order
    and libm differences.
  - float16: rtol 1e-2, atol 1e-3 (11 bits).

The relative error is ``|got - expected| / |expected|`` over the elements with ``|expected| >= atol`` (smaller ones are
judged by the absolute error alone). A mismatch raises ``InvalidModelError`` (400) showing the worst rows (row index,
expected, got), the maximum absolute and relative error, and what to try; nothing is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidModelError, ModelForgeError, first_line
from .outputs import MapRows
from .tensors import prepare_feed

TOLERANCES: dict[str, tuple[float, float]] = {  # ONNX output dtype -> (rtol, atol); module docstring
    "float32": (1e-4, 1e-4),
    "float64": (1e-6, 1e-9),
    "float16": (1e-2, 1e-3),
}
WORST_ROWS = 3  # rows a refusal shows per output
TRY_FLOAT32 = ("the ONNX model computes in float32: rows near a tree threshold that falls between float32 values go "
               "the other way when float64 steps before the tree (a scaler) are computed in float32; try: fit on float32 "
               "data and pass a float32 sample (X.astype(np.float32)), or drop the steps trees do not need (scaling)")
TRY_OTHER = ("try: a float32 sample (X.astype(np.float32)) and model fitted on it, or the converter's options for this "
             "estimator (skl2onnx documents them per estimator)")


@dataclass
class Verdict:
    """What the verification measured: ``rows`` of the sample compared, ``max_abs_error`` / ``max_rel_error`` over
    the float outputs (0.0 when there are none), ``tolerance`` ``{dtype: {"rtol", "atol"}}`` of those outputs, and
    ``compared`` ``{ONNX output name: "predict" | "predict_proba"}``."""

    rows: int
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    tolerance: dict[str, dict[str, float]] = field(default_factory=dict)
    compared: dict[str, str] = field(default_factory=dict)

    def record(self, converted: Any, cast_float64: bool) -> dict[str, Any]:
        """The version's ``conversion`` record (JSON-safe): ``{converter, converter_version, source, sample_rows,
        compared, tolerance, max_abs_error, max_rel_error}``, plus ``note`` when ``cast_float64``: float inputs
        declared float32 for a float64 sample (``convert`` module docstring). ``converted``: a ``convert.Converted``."""
        rec = {
            "converter": converted.converter,
            "converter_version": converted.converter_version,
            "source": converted.source,
            "sample_rows": self.rows,
            "compared": self.compared,
            "tolerance": self.tolerance,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
        }
        if cast_float64:
            rec["note"] = "float inputs declared float32 (the sample's float64 is cast, as requests are)"
        return rec


def verify(engine: Any, source: Any, model: Any, sample: Any, sample_feed: dict[str, Any], name: str = "") -> Verdict:
    """Run ``source`` (a ``convert.Source`` whose session ``engine`` holds) on ``sample_feed`` (``sample`` as the
    converted model's inputs: ``convert.sample_feed``) through ``engine`` and compare with ``model``'s answers on
    ``sample`` (module docstring). Returns the ``Verdict``; raises ``InvalidModelError`` (400) on a mismatch,
    ``ModelForgeError`` (400) when the original's ``predict`` fails on the sample. On a refusal the session is
    unloaded from ``engine``."""
    expected = _expected(model, sample)
    feed = prepare_feed(source.inputs, sample_feed)
    try:
        outputs = engine.predict(source.sha256, lambda: source.data, feed, name or "converted model")
        names, values = list(outputs), list(outputs.values())
        rows = len(next(iter(feed.values())))
        verdict, problems = Verdict(rows), []
        for out, value, (method, exp) in zip(names, values, expected):
            verdict.compared[out] = method
            problem = _compare(verdict, out, method, _as_array(value), exp)
            if problem:
                problems.append(problem)
        if problems:
            raise InvalidModelError(
                f"the converted model disagrees with the original on the sample ({rows} rows): " + "; ".join(problems)
                + f"; max abs error {verdict.max_abs_error:.3g}, max rel error {verdict.max_rel_error:.3g}; "
                + (TRY_FLOAT32 if any(s.dtype == "float32" for s in source.inputs) else TRY_OTHER))
    except ModelForgeError:
        engine.unload(source.sha256)
        raise
    return verdict


def _expected(model: Any, sample: Any) -> list[tuple[str, np.ndarray]]:
    from sklearn.base import is_classifier

    methods = ["predict"] + (["predict_proba"] if is_classifier(model) and hasattr(model, "predict_proba") else [])
    out = []
    for method in methods:
        try:
            out.append((method, np.asarray(getattr(model, method)(sample))))
        except Exception as err:  # the original refuses its own sample: the sample is wrong
            raise ModelForgeError(f"the original model's {method}() failed on the sample: {first_line(err)}") from None
    return out


def _as_array(value: Any) -> np.ndarray:
    """An output as an array: a ZipMap's maps (``outputs.MapRows``) as their float32 [rows, classes] tensor, in class
    order (float32 keeps float32's tolerance)."""
    return value.rows if isinstance(value, MapRows) else np.asarray(value)


def _compare(verdict: Verdict, out: str, method: str, got: np.ndarray, exp: np.ndarray) -> str:
    """'' when output ``out`` matches the original's ``method``, else what differs, worst rows first."""
    what = f"output {out!r} vs {method}()"
    if got.size != exp.size or got.shape[:1] != exp.shape[:1]:
        return f"{what}: shape {list(got.shape)}, the original's {list(exp.shape)}"
    exp = exp.reshape(got.shape)
    if got.dtype.kind == "f" and exp.dtype.kind in "fiub":
        return _compare_scores(verdict, what, got, exp)
    same = np.array([a == b for a, b in zip(_rows(got), _rows(exp))], dtype=bool)
    bad = np.flatnonzero(~same)
    if not len(bad):
        return ""
    shown = ", ".join(f"row {i} expected {_show(exp[i])} got {_show(got[i])}" for i in bad[:WORST_ROWS])
    return f"{what}: {len(bad)} of {len(got)} rows differ ({shown})"


def _compare_scores(verdict: Verdict, what: str, got: np.ndarray, exp: np.ndarray) -> str:
    rtol, atol = TOLERANCES.get(got.dtype.name, TOLERANCES["float32"])
    verdict.tolerance[got.dtype.name] = {"rtol": rtol, "atol": atol}
    g, e = got.astype(np.float64), exp.astype(np.float64)
    both_nan = np.isnan(g) & np.isnan(e)
    err = np.where(both_nan, 0.0, np.abs(g - e))
    err = np.where(np.isnan(err), np.inf, err)  # NaN on one side only: as far off as can be
    scale = np.abs(np.where(np.isnan(e), 0.0, e))
    rel = np.where(scale >= atol, err / np.maximum(scale, atol), 0.0)  # values under atol: judged absolutely
    verdict.max_abs_error = max(verdict.max_abs_error, float(err.max()))
    verdict.max_rel_error = max(verdict.max_rel_error, float(rel.max()))
    over = err / (atol + rtol * np.abs(e))
    by_row = over.reshape(len(over), -1).max(axis=1)
    bad = np.flatnonzero(by_row > 1.0)
    if not len(bad):
        return ""
    worst = bad[np.argsort(-by_row[bad], kind="stable")][:WORST_ROWS]
    shown = ", ".join(f"row {i} expected {_show(exp[i])} got {_show(got[i])}" for i in worst)
    return f"{what}: {len(bad)} of {len(got)} rows off by more than rtol {rtol:g} + atol {atol:g} ({shown})"


def _rows(arr: np.ndarray) -> list[Any]:
    return [row.tolist() if isinstance(row, np.ndarray) else (row.item() if hasattr(row, "item") else row)
            for row in arr]


def _show(value: Any) -> str:
    """A row's value, short: numbers with 6 significant digits, at most 6 of them."""
    if isinstance(value, np.ndarray):
        items = value.ravel().tolist()
        text = ", ".join(_show(v) for v in items[:6]) + (", ..." if len(items) > 6 else "")
        return f"[{text}]"
    if hasattr(value, "item"):
        value = value.item()
    return f"{value:.6g}" if isinstance(value, float) else repr(value)
