"""Prepare a model for serving (``ModelForge.register(..., quantize=, outputs=, measure=)``): keep only the outputs
named, quantise the weights to int8, and say what each step did. Everything runs through the engine that serves.

Steps, in this order, each on the previous step's model:

- ``outputs=["label"]`` (or ``"label,probabilities"``): the graph cut to the nodes those outputs need
  (``onnx.utils.Extractor``); the inputs stay as declared, so requests do not change. An unknown name: 400 naming
  the model's outputs. Naming every output changes nothing.
- ``quantize="dynamic"``: ONNX Runtime's dynamic quantisation (``engine.quantize_dynamic``): the float32 constant
  weights of MatMul nodes become int8 (Gemm nodes with constant weights are first rewritten as MatMul + Add: ONNX
  Runtime quantises MatMul, not Gemm); activations are quantised at run time. A model with no such weights: 400,
  nothing to quantise. A fitted object is then converted with float32 inputs (its weights float32).
  The quantised model is checked against the float model on the sample, both run by the engine:

  - ``label_agreement``: the share of rows whose integer / string / bool outputs are all equal; at least
    ``MIN_LABEL_AGREEMENT`` (0.99). Int8 noise moves a score by ~1 %, so it flips only rows whose two best classes
    are that close: well under 1 % of a sample for a classifier that separates its classes; more is a change of answers.
  - ``max_score_error``: ``max |quantised - float|`` over the float outputs' elements, divided by
    ``max(1, max |float|)``: probabilities and scores in [0, 1] judged absolutely, larger outputs (regression
    targets, logits) relative to their largest value; at most ``MAX_SCORE_ERROR`` (0.1). Int8 rounds each weight and
    activation to 1/255 of its range (0.4 %); over a few layers that is a few % of the output's scale (measured on a
    scaled MLP 64-256-128-10 on digits: 4.0 % on 297 held-out rows, 1.1 % when fitted on all of them; up to 2x more
    is left for CPUs without VNNI, whose uint8 x int8 products may saturate), while a quantisation that breaks a
    model (an outlier weight that flattens the rest to 0, activations far outside the sample's range) is off by
    tens of percent.

  Outside either bound: ``InvalidModelError`` (400) showing both figures and the rows whose label changed; nothing is
  stored. The sample: a fitted object's ``sample``; for ONNX ``sample`` is an input as ``predict`` takes it
  (``{input: array}`` or the bare array of a single-input model); without one, quantisation is refused (400) unless
  ``sample="synthetic"``: ``SYNTHETIC_ROWS`` rows built from the declared inputs (``batches.sample_feed``: floats
  uniform in [0, 5)), a weaker check the record names, which HTTP ``PUT`` uses (its body is the model only).

``preparation`` record (``ModelRecord.preparation``, JSON): ``{sample: {rows, kind: "given" | "synthetic"},
size_before, size_after (bytes), steps: [{step: "outputs" | "quantize", size_before, size_after, nodes_before,
nodes_after, label_agreement, max_score_error (None where the outputs have no labels / scores), kept, dropped |
mode, weights_quantized, tolerance}], latency_p50_ms: [{batch, before, after}] (ms, only with ``measure``; None where a
run failed, said in ``notes``)}``. Latency is p50 of engine runs at batch 1 and 1000 (``MEASURE_SECONDS`` each),
reported, never a reason to refuse. The outputs step's check uses the sample, else synthetic rows.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import numpy as np

from .batches import fixed_batch, resize_batch
from .batches import sample_feed as synthetic_feed
from .benchmark import timed
from .convert import Source, inspect_source, is_model_file_source, model_sample, read_source, sample_feed
from .engine import quantize_dynamic
from .errors import InvalidModelError, ModelForgeError, first_line
from .outputs import MapRows
from .tensors import prepare_feed

QUANTIZE_MODES = ("dynamic",)
MIN_LABEL_AGREEMENT = 0.99  # module docstring
MAX_SCORE_ERROR = 0.1
SYNTHETIC = "synthetic"  # sample= value: rows built from the declared inputs
SYNTHETIC_ROWS = 100
MEASURE_BATCHES = (1, 1000)
MEASURE_SECONDS = 0.25  # per model and batch
CHANGED_ROWS = 3  # rows a refusal shows


def check_quantize(quantize: Any) -> str | None:
    """``quantize`` checked: None or ``"dynamic"``. Raises ``ModelForgeError`` (400) naming the parameter."""
    if quantize is None or quantize in QUANTIZE_MODES:
        return quantize
    raise ModelForgeError(f"quantize must be {' or '.join(map(repr, QUANTIZE_MODES))} (or left out), got {quantize!r}")


def check_outputs(outputs: Any) -> list[str] | None:
    """``outputs`` as a list of names: None, a list / tuple of names, or a string of names separated by commas (HTTP's
    ``?outputs=label,probabilities``). Raises ``ModelForgeError`` (400) naming the parameter for an empty name or list,
    or another type."""
    if outputs is None:
        return None
    names = outputs.split(",") if isinstance(outputs, str) else outputs
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ModelForgeError(f"outputs takes output names (a list, or names separated by commas), got {outputs!r}")
    names = [n.strip() for n in names]
    if not names or not all(names):
        raise ModelForgeError(f"outputs takes output names separated by commas, none empty; got {outputs!r}")
    return names


def read_prepared(engine: Any, model: Any, name: str = "", sample: Any = None, zipmap: bool = False,
                  quantize: str | None = None, outputs: Any = None, measure: bool = False) -> Source:
    """``convert.read_source`` then the preparation steps (module docstring): a ``Source`` of the final model with
    ``preparation`` (None when no step is asked and not ``measure``); its session is left warm in ``engine``, the
    intermediate ones unloaded. Raises ``ModelForgeError`` (400) for a bad ``quantize`` / ``outputs`` / ``sample``,
    an unknown output name or nothing to quantise; ``InvalidModelError`` (400) for a quantised model off its float
    model beyond the tolerance; and what ``read_source`` raises."""
    quantize, outputs = check_quantize(quantize), check_outputs(outputs)
    if not isinstance(measure, bool):
        raise ModelForgeError(f"measure must be True or False, got {measure!r}")
    onnx_source = is_model_file_source(model)
    if not onnx_source and isinstance(sample, str):
        raise ModelForgeError(f"sample={sample!r} is for ONNX models; a fitted model needs rows of its input")
    source = read_source(engine, model, None if onnx_source else sample, zipmap, name, float32=quantize is not None)
    if not (quantize or outputs or measure):  # an ONNX model's sample is then its warm-up input (``lifecycle``)
        return source
    feed, kind = _feed(source, model, sample, onnx_source)
    if quantize and feed is None:
        raise ModelForgeError("quantize='dynamic' needs a sample to check the quantised model on: sample= an input "
                              "as predict takes it, or sample='synthetic' for rows built from the declared inputs")
    if feed is None:
        feed, kind = synthetic_feed(source.inputs, SYNTHETIC_ROWS), SYNTHETIC
    loaded, steps = [source], []
    try:
        if outputs:
            loaded.append(_prune(engine, loaded[-1], outputs, feed, name, steps))
        if quantize:
            loaded.append(_quantize(engine, loaded[-1], feed, name, steps))
        first, last = loaded[0], loaded[-1]
        record = {"sample": {"rows": _rows(feed), "kind": kind}, "size_before": len(first.data),
                  "size_after": len(last.data), "steps": steps}
        if measure:
            record["latency_p50_ms"], notes = _measure(engine, first, last, feed, name)
            if notes:
                record["notes"] = notes
    finally:
        for src in loaded[:-1]:
            if src.sha256 != loaded[-1].sha256:
                engine.unload(src.sha256)
    return Source(last.data, last.sha256, last.inputs, last.outputs, source.conversion, record)


def _feed(source: Source, model: Any, sample: Any, onnx_source: bool) -> tuple[dict | None, str]:
    if sample is None:
        return None, ""
    if isinstance(sample, str):
        if sample != SYNTHETIC:
            raise ModelForgeError(f"sample must be an input, or {SYNTHETIC!r} for rows built from the declared inputs;"
                                  f" got {sample!r}")
        return synthetic_feed(source.inputs, SYNTHETIC_ROWS), SYNTHETIC
    given = sample if onnx_source else sample_feed(model_sample(model, sample))
    try:
        return prepare_feed(source.inputs, given), "given"
    except ModelForgeError as err:
        raise ModelForgeError(f"sample: {err}") from None


def _rows(feed: dict) -> int:
    return int(next(iter(feed.values())).shape[0]) if feed and next(iter(feed.values())).ndim else 1


def _run(engine: Any, src: Source, feed: dict, name: str) -> dict[str, np.ndarray]:
    out = engine.predict(src.sha256, lambda: src.data, feed, name or "prepared model")
    return {k: v.rows if isinstance(v, MapRows) else np.asarray(v) for k, v in out.items()}


def _prune(engine: Any, src: Source, outputs: list[str], feed: dict, name: str, steps: list) -> Source:
    import onnx
    from onnx.utils import Extractor

    declared = [o.name for o in src.outputs]
    unknown = [o for o in outputs if o not in declared]
    if unknown:
        raise ModelForgeError(f"outputs: the model has no output {', '.join(map(repr, unknown))}; its outputs: "
                              f"{', '.join(declared)}")
    kept = [o for o in declared if o in outputs]
    model = onnx.load_model_from_string(src.data)
    cut = model
    if kept != declared:
        initializers = {t.name for t in model.graph.initializer}
        cut = Extractor(model).extract_model([i.name for i in model.graph.input], kept)
        left = {t.name for t in cut.graph.initializer}
        inputs = [i for i in cut.graph.input if i.name not in initializers or i.name in left]  # optional ones kept
        del cut.graph.input[:]
        cut.graph.input.extend(inputs)
        cut.graph.name, cut.producer_name, cut.producer_version = model.graph.name, model.producer_name, \
            model.producer_version
        cut.doc_string, cut.model_version, cut.domain = model.doc_string, model.model_version, model.domain
        cut.metadata_props.extend(model.metadata_props)
    after = inspect_source(engine, cut.SerializeToString(), "pruned") if cut is not model else src
    before_out, after_out = _run(engine, src, feed, name), _run(engine, after, feed, name)
    agreement, error, _ = _compare({k: before_out[k] for k in kept}, after_out)
    steps.append({"step": "outputs", "kept": kept, "dropped": [o for o in declared if o not in kept],
                  "size_before": len(src.data), "size_after": len(after.data), "nodes_before": len(model.graph.node),
                  "nodes_after": len(cut.graph.node), "label_agreement": agreement, "max_score_error": error})
    return after


def _gemm_as_matmul(graph: Any) -> int:
    """Rewrite each Gemm whose B is a float32 2-D initializer (transA 0) as MatMul (B transposed if transB, times
    alpha) + Add (C times beta); returns how many."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        b = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if b is None or b.data_type != 1 or len(b.dims) != 2 or attrs.get("transA", 0):
            nodes.append(node)
            continue
        weights = numpy_helper.to_array(b)
        weights = (weights.T if attrs.get("transB", 0) else weights) * np.float32(attrs.get("alpha", 1.0))
        w_name, y = f"{node.input[1]}_matmul_{rewritten}", node.output[0]
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weights, np.float32), w_name))
        has_c = len(node.input) > 2 and node.input[2]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [f"{y}_matmul" if has_c else y]))
        if has_c:
            c = node.input[2]
            beta = attrs.get("beta", 1.0)
            if beta != 1.0:
                nodes.append(helper.make_node("Mul", [c, _const(graph, f"{y}_beta", beta)], [f"{y}_c"]))
                c = f"{y}_c"
            nodes.append(helper.make_node("Add", [f"{y}_matmul", c], [y]))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _const(graph: Any, name: str, value: float) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    return name


def _quantize(engine: Any, src: Source, feed: dict, name: str, steps: list) -> Source:
    import onnx

    model = onnx.load_model_from_string(src.data)
    nodes_before = len(model.graph.node)
    _gemm_as_matmul(model.graph)
    float32 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    weights = sum(1 for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in float32)
    if not weights:
        ops = sorted({n.op_type for n in model.graph.node})
        raise ModelForgeError(f"quantize: nothing to quantise: the model has no MatMul or Gemm with constant float32 "
                              f"weights (its operators: {', '.join(ops)}); dynamic int8 quantisation is for those")
    quiet = _QuantizerAdvice()
    logging.getLogger().addFilter(quiet)  # the quantiser advises on the root logger: a notebook would show it
    try:
        data = quantize_dynamic(model, ["MatMul"])
    except Exception as err:  # the quantiser raises ValueError, RuntimeError, onnx errors...
        raise InvalidModelError(f"ONNX Runtime's quantiser cannot quantise this model: {first_line(err)}") from None
    finally:
        logging.getLogger().removeFilter(quiet)
    quantized = inspect_source(engine, data, "quantised")
    before_out, after_out = _run(engine, src, feed, name), _run(engine, quantized, feed, name)
    agreement, error, changed = _compare(before_out, after_out)
    if (agreement is not None and agreement < MIN_LABEL_AGREEMENT) or (error is not None and error > MAX_SCORE_ERROR):
        engine.unload(quantized.sha256)
        raise InvalidModelError(
            f"the quantised model changes the answers on the sample ({_rows(feed)} rows): label agreement "
            f"{_pct(agreement)} (at least {_pct(MIN_LABEL_AGREEMENT)}), max score error {_num(error)} (at most "
            f"{MAX_SCORE_ERROR:g})" + (f"; {changed}" if changed else "") + "; register it without quantize=")
    q_model = onnx.load_model_from_string(data)
    steps.append({"step": "quantize", "mode": "dynamic", "weights_quantized": weights,
                  "size_before": len(src.data), "size_after": len(data), "nodes_before": nodes_before,
                  "nodes_after": len(q_model.graph.node), "label_agreement": agreement, "max_score_error": error,
                  "tolerance": {"min_label_agreement": MIN_LABEL_AGREEMENT, "max_score_error": MAX_SCORE_ERROR}})
    return quantized


class _QuantizerAdvice(logging.Filter):
    """Drops the records ``onnxruntime.quantization`` logs (on the root logger: "Please consider to run
    pre-processing...", shape inference notes); the check after quantisation is what judges the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/onnxruntime/quantization/" not in record.pathname.replace("\\", "/")


def _compare(before: dict, after: dict) -> tuple[float | None, float | None, str]:
    """(label agreement, max score error, the changed rows shown) of ``after``'s outputs against ``before``'s
    (module docstring); None where the outputs have no labels / no scores."""
    same_rows, error, shown = None, None, []
    for out, got in after.items():
        exp = before[out]
        if exp.dtype.kind == "f":
            g, e = got.astype(np.float64), exp.astype(np.float64)
            diff = np.where(np.isnan(g) & np.isnan(e), 0.0, np.abs(g - e))
            diff = np.where(np.isnan(diff), np.inf, diff)
            finite = np.abs(e[np.isfinite(e)])
            scale = max(1.0, float(finite.max()) if finite.size else 1.0)
            error = max(error or 0.0, float(diff.max()) / scale if diff.size else 0.0)
            continue
        rows = len(exp) if exp.ndim else 1
        same = np.array([np.array_equal(a, b) for a, b in zip(exp.reshape(rows, -1), got.reshape(rows, -1))])
        same_rows = same if same_rows is None else same_rows & same
        shown += [f"row {i} {out} {exp.reshape(rows, -1)[i].tolist()} -> {got.reshape(rows, -1)[i].tolist()}"
                  for i in np.flatnonzero(~same)[:CHANGED_ROWS]]
    agreement = None if same_rows is None else float(same_rows.mean()) if same_rows.size else 1.0
    return agreement, error, ", ".join(shown[:CHANGED_ROWS])


def _measure(engine: Any, before: Source, after: Source, feed: dict, name: str) -> tuple[list[dict], list[str]]:
    """p50 ms of engine runs at each batch (``MEASURE_BATCHES``, or the one batch a fixed-batch model takes) of
    ``before`` and ``after``, and notes for runs that failed (413 over ``max_output_bytes``...)."""
    fixed = fixed_batch(before.inputs)
    rows, notes = [], []
    for batch in MEASURE_BATCHES if fixed is None else (fixed[0],):
        batch_feed = resize_batch(before.inputs, feed, batch)
        row: dict[str, Any] = {"batch": batch}
        for label, src in (("before", before), ("after", after)) if after is not before else (("before", before),):
            try:
                ms = timed(lambda i, s=src: engine.predict(s.sha256, lambda: s.data, batch_feed, name),
                           MEASURE_SECONDS, 500, warmup=3, min_iterations=5)
                row[label] = round(statistics.median(ms), 4)
            except ModelForgeError as err:
                row[label] = None
                notes.append(f"batch {batch}, {label}: {first_line(err)}")
        rows.append(row if after is not before else {**row, "after": row["before"]})
    return rows, notes


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"
