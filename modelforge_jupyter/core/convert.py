"""Fitted models to ONNX: the one place that reads a model source (a path, ONNX bytes, an ``onnx.ModelProto`` or a
fitted object) into the bytes the registry stores.

A fitted object is converted, then verified on ``sample`` through the engine before anything is stored (``verify``):

- scikit-learn estimators and pipelines through skl2onnx; XGBoost and LightGBM scikit-learn models (XGBClassifier,
  XGBRegressor, LGBMClassifier, LGBMRegressor; not a raw ``Booster``, whose ``predict`` answers in another form)
  through onnxmltools, an optional extra (``pip install 'modelforge_jupyter[convert]'``), always with float32 inputs
  (their trees split in float32); anything else is refused naming what is supported;
- the input signature comes from ``sample``: a 2-D numpy array gives one input ``input`` of its dtype and feature
  count, ``[None, features]`` (the batch dynamic); a pandas DataFrame one input per column, named after it, shape
  ``[None, 1]``: string / object / category columns as string tensors, numeric ones as their float / int dtype;
- classifiers get plain tensor outputs (``label``, ``probabilities``: skl2onnx's ``zipmap=False``) unless
  ``zipmap=True`` (``output_label``, ``output_probability`` as a list of {class: probability} maps);
- a float64 signature ONNX Runtime cannot load (skl2onnx's tree ensembles declare float64 outputs its TreeEnsemble
  operators do not have) is converted again with float32 inputs; float64 requests are then cast to float32, as for
  every float32 model, and the verification covers that cast. The record's ``conversion`` says so (``note``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidModelError, ModelForgeError, first_line
from .modelfile import check_self_contained, read_model_file
from .records import TensorSpec
from .verify import verify

SUPPORTED = ("a fitted scikit-learn estimator or Pipeline (converted by skl2onnx), or an XGBoost or LightGBM "
             "scikit-learn model: XGBClassifier, XGBRegressor, LGBMClassifier, LGBMRegressor (converted by onnxmltools: "
             "pip install 'modelforge_jupyter[convert]')")
INPUT = "input"  # the name of a numpy sample's one input


@dataclass(frozen=True)
class Converted:
    """A fitted object converted to ONNX ``data`` by ``converter`` (``skl2onnx``, ``onnxmltools``) at
    ``converter_version``; ``source`` is the object's class (``sklearn.pipeline.Pipeline``); ``float32`` is True when
    float inputs were declared float32 whatever the sample's float dtype."""

    data: bytes
    converter: str
    converter_version: str
    source: str
    float32: bool = False


@dataclass(frozen=True)
class Source:
    """A model source read for the registry: its self-contained ONNX ``data``, ``sha256`` (hex), declared
    ``inputs`` / ``outputs`` (the engine's ``inspect``) and, for a converted object, its ``conversion`` record
    (``verify.Verdict.record``: converter, version, tolerance, measured errors), else None; ``preparation`` what
    ``prepare`` did to it (``prepare`` module docstring), else None."""

    data: bytes
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    conversion: dict[str, Any] | None = field(default=None)
    preparation: dict[str, Any] | None = field(default=None)


def is_model_file_source(model: Any) -> bool:
    """True for what is read as ONNX as it is: a path (``str`` / ``PathLike``), bytes or an ``onnx.ModelProto``;
    anything else is a fitted object to convert."""
    return isinstance(model, (str, PathLike, bytes, bytearray, memoryview)) or hasattr(model, "SerializeToString")


def read_source(engine: Any, model: Any, sample: Any = None, zipmap: bool = False, name: str = "",
                float32: bool = False) -> Source:
    """Read ``model`` (a path, ONNX bytes, an ``onnx.ModelProto``, or a fitted object with ``sample``) into a
    ``Source``, its session left warm in ``engine`` (``Engine.inspect``).

    A file's external data is packed in; bytes or a ``ModelProto`` with external data raise ``InvalidModelError``
    (400, ``modelfile``). A fitted object is converted (module docstring) and verified on ``sample`` through
    ``engine`` (``verify.verify``): a mismatch, a conversion failure or an unsupported object raises
    ``InvalidModelError`` (400); a fitted object without ``sample``, or ``sample`` / ``zipmap`` given with ONNX,
    raises ``ModelForgeError`` (400). ``zipmap`` applies to classifiers; ``float32`` declares a fitted object's float
    inputs float32 whatever the sample's dtype (quantisation takes float32 weights). ``name``: for messages.
    """
    if is_model_file_source(model):
        data = _read_onnx(model)  # first: a path that is no file says so (a misspelt variable name, say)
        if sample is not None or zipmap:
            what = "sample" if sample is not None else "zipmap"
            raise ModelForgeError(f"{what} is for a fitted model to convert; this model is already ONNX")
        sha256 = hashlib.sha256(data).hexdigest()
        inputs, outputs = engine.inspect(sha256, data)
        return Source(data, sha256, inputs, outputs)
    if sample is None:
        converter_kind(model)  # an object ModelForge cannot convert says so first
        raise ModelForgeError(
            f"a fitted {type(model).__name__} needs sample=: a few rows of its input (a 2-D numpy array or a pandas "
            "DataFrame) to set the ONNX input signature and to check the conversion on")
    onnx_sample = model_sample(model, sample)
    converted = to_onnx(model, onnx_sample, zipmap, float32)
    try:
        source = inspect_source(engine, converted.data)
    except InvalidModelError:
        if converted.float32 or not has_float64(onnx_sample):
            raise
        converted = to_onnx(model, onnx_sample, zipmap, float32=True)
        source = inspect_source(engine, converted.data)
    feed = sample_feed(onnx_sample)
    verdict = verify(engine, source, model, sample, feed, name)
    cast_float64 = converted.float32 and any(a.dtype == np.float64 for a in feed.values())
    return Source(source.data, source.sha256, source.inputs, source.outputs, verdict.record(converted, cast_float64))


def inspect_source(engine: Any, data: bytes, what: str = "converted") -> Source:
    """The ``Source`` of ONNX bytes a step made (``what``: converted, pruned, quantised), loaded by ``engine``.
    Raises ``InvalidModelError`` (400) naming the step when ONNX Runtime cannot load them."""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        inputs, outputs = engine.inspect(sha256, data)
    except InvalidModelError as err:
        raise InvalidModelError(f"ONNX Runtime cannot load the {what} model: {err}") from None
    return Source(data, sha256, inputs, outputs)


def _read_onnx(model: Any) -> bytes:
    if hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
        check_self_contained(data)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        check_self_contained(data)
    else:
        path = Path(model).expanduser()
        try:
            data = read_model_file(path)
        except FileNotFoundError:
            raise ModelForgeError(f"no model file at {str(path)!r}") from None
        except IsADirectoryError:
            raise ModelForgeError(f"{str(path)!r} is a directory, not an ONNX file") from None
    return data


# -- conversion ------------------------------------------------------------------------------------------------------
def to_onnx(model: Any, sample: Any, zipmap: bool = False, float32: bool = False) -> Converted:
    """Convert fitted ``model`` to ONNX with the input signature of ``sample`` (module docstring); ``float32``
    declares float inputs float32 whatever the sample's float dtype. Raises ``InvalidModelError`` (400) naming what is
    supported for another object, saying an estimator is not fitted, or giving the converter's reason in one line."""
    kind = converter_kind(model)
    if kind != "sklearn" and not _is_sklearn(model):
        raise InvalidModelError(
            f"cannot convert a raw {_class_name(model)}: register the scikit-learn model it was trained as "
            "(XGBClassifier / XGBRegressor, LGBMClassifier / LGBMRegressor), whose predict() the conversion is "
            "checked against")
    _check_fitted(model)
    classifier = _is_classifier(model)
    if kind == "sklearn":
        import skl2onnx

        converter, version = "skl2onnx", skl2onnx.__version__
        types = input_types(sample, float32, skl2onnx.common.data_types)
        options = {id(model): {"zipmap": bool(zipmap)}} if classifier else None
        convert = lambda: skl2onnx.convert_sklearn(model, initial_types=types, options=options)  # noqa: E731
    else:
        try:
            import onnxmltools
            from onnxmltools.convert import common as mltools_common
        except ImportError:
            raise InvalidModelError(
                f"converting a {_class_name(model)} needs onnxmltools: pip install 'modelforge_jupyter[convert]'"
            ) from None
        converter, version, float32 = "onnxmltools", onnxmltools.__version__, True  # both run their trees in float32
        types = input_types(sample, True, mltools_common.data_types)
        if kind == "xgboost":
            unnamed = _without_feature_names(model)
            convert = lambda: onnxmltools.convert_xgboost(unnamed, initial_types=types)  # noqa: E731
        else:
            convert = lambda: onnxmltools.convert_lightgbm(  # noqa: E731
                model, initial_types=types, zipmap=bool(zipmap) if classifier else False)
    try:
        proto = convert()
    except Exception as err:  # converters raise RuntimeError, TypeError, NotImplementedError... with long texts
        raise InvalidModelError(
            f"{converter} {version} cannot convert this {_class_name(model)}: {first_line(err)}") from None
    if kind != "sklearn":
        _dynamic_batch_outputs(proto)
    proto.graph.name = type(model).__name__  # skl2onnx names the graph with a random uuid: the same fitted model
    # would give other bytes each time, so a new version (and a cache flush) on every update with it
    return Converted(proto.SerializeToString(), converter, version, _class_name(model), float32)


def _without_feature_names(model: Any) -> Any:
    """A copy of XGBoost ``model`` whose booster has no feature names: fitted on a DataFrame, its trees name the
    columns, and onnxmltools reads a split's feature index only from names ``f0``, ``f1``... (the ONNX input is one 2-D
    tensor whose columns are in the order fit saw them). The user's model is left as it is."""
    booster = model.get_booster()
    if booster.feature_names is None:
        return model
    import copy

    unnamed = copy.deepcopy(model)
    unnamed.get_booster().feature_names = None
    return unnamed


def _dynamic_batch_outputs(proto: Any) -> None:
    """Declare the first dimension of ``proto``'s outputs dynamic (the batch), in place: onnxmltools' LightGBM
    classifier declares its label output [1] while it returns one label per row."""
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value"):
            dims[0].Clear()


def converter_kind(model: Any) -> str:
    """``"xgboost"``, ``"lightgbm"`` or ``"sklearn"``: the kind of converter ``model`` needs. Raises
    ``InvalidModelError`` (400) naming what is supported for any other object."""
    top = type(model).__module__.split(".")[0]
    kind = top if top in ("xgboost", "lightgbm") else "sklearn" if _is_sklearn(model) else None
    if kind is None:
        raise InvalidModelError(f"cannot convert a {_class_name(model)}: ModelForge converts {SUPPORTED}, or "
                                "registers an ONNX file, bytes or onnx.ModelProto")
    return kind


def _is_sklearn(model: Any) -> bool:
    try:
        from sklearn.base import BaseEstimator
    except ImportError:  # pragma: no cover - scikit-learn comes with skl2onnx
        return False
    return isinstance(model, BaseEstimator)


def _is_classifier(model: Any) -> bool:
    from sklearn.base import is_classifier

    return bool(is_classifier(model))


def _check_fitted(model: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError:
        raise InvalidModelError(f"this {_class_name(model)} is not fitted: call its fit() first") from None
    except TypeError as err:  # not an estimator after all
        raise InvalidModelError(f"cannot convert a {_class_name(model)}: {first_line(err)}") from None


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# -- signature -------------------------------------------------------------------------------------------------------
def _is_frame(sample: Any) -> bool:
    return hasattr(sample, "columns") and hasattr(sample, "dtypes") and hasattr(sample, "iloc")


def model_sample(model: Any, sample: Any) -> Any:
    """``sample`` as the converted model's inputs are declared from: a DataFrame stays one input per column only
    for a model that routes its columns by name (a ``ColumnTransformer``, or a ``Pipeline`` starting with one); for
    any other estimator its columns are one 2-D input ``input`` [rows, columns], as the estimator saw them in
    ``fit``. Raises ``ModelForgeError`` (400) when such a DataFrame has text columns (they need a ColumnTransformer)."""
    if not _is_frame(sample) or _routes_columns(model):
        return sample
    columns = sample_feed(sample)
    text = [name for name, arr in columns.items() if arr.dtype.kind == "O"]
    if text:
        raise ModelForgeError(
            f"the sample's text columns ({', '.join(map(repr, text))}) need a model that routes columns by name: a "
            f"ColumnTransformer, or a Pipeline starting with one; this {type(model).__name__} takes one 2-D input")
    return np.hstack(list(columns.values()))


def _routes_columns(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline) and model.steps:
        model = model.steps[0][1]
    return isinstance(model, ColumnTransformer)


def sample_feed(sample: Any) -> dict[str, np.ndarray]:
    """``{input name: ndarray}`` of ``sample`` as the converted model takes it: a numpy array as ``{"input": it}``
    (2-D, [rows, features]); a DataFrame as one [rows, 1] array per column (strings as an object array of ``str``,
    numbers in their dtype). Pass it to ``ModelForge.predict`` for a model converted from a DataFrame.
    Raises ``ModelForgeError`` (400) for a sample that is not 2-D, has no rows, or has a column of another kind."""
    if _is_frame(sample):
        if len(sample) == 0 or len(sample.columns) == 0:
            raise ModelForgeError(f"the sample DataFrame is empty ({len(sample)} rows, {len(sample.columns)} columns)")
        return {str(c): _column(sample, c) for c in sample.columns}
    arr = np.asarray(sample)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ModelForgeError(f"sample must be 2-D [rows, features] with at least one row, got shape {list(arr.shape)}")
    if arr.dtype.kind in "USO":
        arr = arr.astype(str).astype(object)
    elif arr.dtype.kind not in "fiub":
        raise ModelForgeError(f"sample dtype {arr.dtype} cannot be a model input (use float, int, bool or str)")
    return {INPUT: arr}


def _column(frame: Any, column: Any) -> np.ndarray:
    col = frame[column]
    kind = getattr(col.dtype, "kind", "O")
    if kind in "fiub" and not col.isna().any():
        try:
            values = col.to_numpy(dtype=np.dtype(col.dtype.numpy_dtype if hasattr(col.dtype, "numpy_dtype")
                                                 else col.dtype))
        except (TypeError, ValueError) as err:
            raise ModelForgeError(f"sample column {column!r} ({col.dtype}): {first_line(err)}") from None
    elif kind in "fiub":  # a nullable numeric column with missing values: float NaN, as scikit-learn reads them
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    elif kind in "OSU":
        values = col.astype(str).to_numpy(dtype=object)
    else:
        raise ModelForgeError(f"sample column {column!r} has dtype {col.dtype}: a model input is a number, bool or "
                              "string column; convert it first")
    return values.reshape(-1, 1)


def has_float64(sample: Any) -> bool:
    """True when some input of ``sample`` (``sample_feed``) is float64."""
    return any(a.dtype == np.float64 for a in sample_feed(sample).values())


def input_types(sample: Any, float32: bool, data_types: Any) -> list[tuple[str, Any]]:
    """skl2onnx / onnxmltools ``initial_types`` of ``sample``: ``[(input name, tensor type([None, n]))]`` from
    ``sample_feed``; ``data_types`` is the converter's ``common.data_types`` module; ``float32``: every float input
    ``FloatTensorType``. Raises ``ModelForgeError`` as ``sample_feed``."""
    types = []
    for name, arr in sample_feed(sample).items():
        kind, size = arr.dtype.kind, arr.dtype.itemsize
        if kind == "f":
            cls = data_types.DoubleTensorType if size == 8 and not float32 else data_types.FloatTensorType
        elif kind in "iu":
            cls = data_types.Int32TensorType if (kind, size) == ("i", 4) else data_types.Int64TensorType
        elif kind == "b":
            cls = data_types.BooleanTensorType
        else:
            cls = data_types.StringTensorType
        types.append((name, cls([None, arr.shape[1]])))
    return types
