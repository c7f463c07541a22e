"""ONNX files as the registry stores them: self-contained bytes, every tensor's data inline.

ONNX lets a tensor keep its data in another file (external data: ``data_location=EXTERNAL`` and a relative
``location``), which ONNX Runtime reads relative to the model file's directory, or, for a model given as bytes, to the
process's working directory. A registered model must give the same answers in every process on the registry and
read nothing but its own stored bytes, so:

- bytes with external data anywhere (initializers and sparse initializers of the main graph and of every subgraph,
  ``If``/``Loop``/``Scan`` bodies included; tensor attributes such as ``Constant``'s; functions; training graphs)
  are refused with ``InvalidModelError`` (400) saying how to save the model inline;
- a model given as a path has its external data packed into the stored bytes, read from files inside the model
  file's directory only (the result must stay under protobuf's 2 GiB);
- the engine builds sessions with no folder to resolve external data in (``engine.create_session``), so bytes stored
  by an older version cannot read a file either.

The model is parsed with the ``onnx`` package (ONNX's reference implementation, a runtime dependency for this).
Messages name the tensors (quoted with ``repr``) and never a file path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

from .errors import InvalidModelError

SAVE_INLINE = (
    "save the model with its tensors inline, e.g. onnx.save_model(model, path, save_as_external_data=False), "
    "or register it from its file path so ModelForge packs the data files in"
)
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit on one serialized message (2 GiB)


def check_self_contained(data: bytes) -> None:
    """Refuse ONNX ``data`` that keeps tensor data in external files. Raises ``InvalidModelError`` (400) naming the
    tensors; bytes that do not parse are left for ONNX Runtime to refuse (``engine.inspect``)."""
    model = _parse(data)
    if model is not None:
        _refuse_external(model)


def read_model_file(path: Path) -> bytes:
    """The bytes of the ONNX file at ``path``, with any external data packed in from files in its directory.

    Raises ``InvalidModelError`` (400) when an external data file is missing, outside the model's directory, shorter
    than its tensor, or when the packed model would reach 2 GiB; ``OSError`` when ``path`` cannot be read.
    """
    data = path.read_bytes()
    model = _parse(data)
    if model is None or not external_tensors(model):
        return data
    from onnx.external_data_helper import load_external_data_for_tensor

    base = path.resolve().parent
    for tensor in _tensors(model):
        if _is_external(tensor):
            location = _check_location(tensor, base)
            try:
                load_external_data_for_tensor(tensor, str(base))
            except Exception:  # OSError, ValueError, onnx's ValidationError: their texts name paths
                reason = "no such file" if not location.is_file() else "not a regular file holding its bytes"
                raise InvalidModelError(
                    f"tensor {tensor.name!r} keeps its data in an external file that could not be read next to the "
                    f"model file ({reason}); {SAVE_INLINE}"
                ) from None
    _refuse_external(model)
    if model.ByteSize() > MAX_PROTO_BYTES:
        raise InvalidModelError(
            f"the model with its external data packed in is {model.ByteSize()} bytes; ModelForge stores models "
            f"under 2 GiB (protobuf's limit on one ONNX file)"
        )
    return model.SerializeToString()


def external_tensors(model: Any) -> list[str]:
    """Names of the tensors of ``model`` (an ``onnx.ModelProto``) whose data is in external files."""
    return [t.name for t in _tensors(model) if _is_external(t)]


def _parse(data: bytes) -> Any:
    """The ``onnx.ModelProto`` of ``data``, or None when it is not one (ONNX Runtime then names the problem)."""
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return None
    return model


def _refuse_external(model: Any) -> None:
    names = external_tensors(model)
    if names:
        shown = ", ".join(map(repr, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise InvalidModelError(
            f"the model keeps tensor data in external files ({shown}), which the registry cannot store: it keeps "
            f"self-contained ONNX bytes; {SAVE_INLINE}"
        )


def _check_location(tensor: Any, base: Path) -> Path:
    """The external data file of ``tensor``: a relative path that stays in the model's directory (symlinks
    resolved), else ``InvalidModelError``."""
    location = next((e.value for e in tensor.external_data if e.key == "location"), "")
    inside = bool(location) and not PurePath(location).is_absolute() and ".." not in PurePath(location).parts
    if inside:
        resolved = (base / location).resolve()
        if os.path.commonpath([base, resolved]) == str(base):
            return resolved
    raise InvalidModelError(
        f"tensor {tensor.name!r} keeps its data in an external file outside the model file's directory; {SAVE_INLINE}"
    )


def _is_external(tensor: Any) -> bool:
    return tensor.data_location == 1 or len(tensor.external_data) > 0  # TensorProto.EXTERNAL


def _tensors(model: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of ``model``: graphs (and their subgraphs), functions and training graphs."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for attr in function.attribute_proto:
            yield from _attribute_tensors(attr)
        for node in function.node:
            for attr in node.attribute:
                yield from _attribute_tensors(attr)
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            yield from _attribute_tensors(attr)


def _attribute_tensors(attr: Any) -> Iterator[Any]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    for sparse in [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []:
        yield sparse.values
        yield sparse.indices
    for sparse in attr.sparse_tensors:
        yield sparse.values
        yield sparse.indices
    if attr.HasField("g"):
        yield from _graph_tensors(attr.g)
    for graph in attr.graphs:
        yield from _graph_tensors(graph)
