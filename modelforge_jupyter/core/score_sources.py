"""Batch scoring's input: a data set cut into chunks of rows, and the rule that turns a chunk into a model's feed.

A data set is a NumPy array (rows along axis 0), a pandas DataFrame, a Parquet file, a directory of Parquet files
(``*.parquet``, in name order) or a list of files and directories; pyarrow reads Parquet. Chunks hold
``chunk_rows`` rows at most and never span two files, so a worker reads its chunk by path and row range alone
(the row groups that overlap it: write files with row groups of at most ``chunk_rows`` rows, or each chunk reads
its whole group; float columns read fastest without dictionary encoding, ``use_dictionary=False``: README).

Columns to inputs (``table_feed``, one rule for frames and Parquet tables): when every required input of the model
names a column, each input takes its column (a column of equal-length lists becomes a 2-D ``[N, k]`` input);
otherwise a single-input model takes all the columns side by side, ``[N, columns]``. Values are then validated and
converted as ``predict`` does (``tensors.prepare_feed``).

Chunks that travel through Redis (``encode`` / ``decode``) are ``npy`` bytes (an array, ``allow_pickle=False``) or an
Arrow IPC stream (a table): never pickled.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelForgeError, first_line
from .records import ModelRecord
from .tensors import prepare_feed, shape_str


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of the data set (row numbers over all its files, from 0); for Parquet, ``file`` and the
    first row in it (``offset``)."""

    index: int
    start: int
    stop: int
    file: str | None = None
    offset: int = 0

    @property
    def rows(self) -> int:
        """How many rows the chunk holds."""
        return self.stop - self.start

    def to_json(self) -> dict:
        """The chunk as JSON data (a Celery task's argument)."""
        return asdict(self)


@dataclass(frozen=True)
class Source:
    """A data set planned for scoring: ``data`` (in memory, or None for Parquet), its ``rows`` and ``chunks``."""

    kind: str  # "array" | "frame" | "parquet"
    rows: int
    chunks: tuple[Chunk, ...]
    data: Any = None

    def take(self, chunk: Chunk) -> Any:
        """The chunk's rows as ``predict`` takes them (an array, a DataFrame or a pyarrow Table)."""
        if self.kind == "parquet":
            return read_parquet_rows(chunk.file, chunk.offset, chunk.rows)
        return take_rows(self.data, chunk.start, chunk.stop)


def plan(data: Any, chunk_rows: int) -> Source:
    """Cut ``data`` into chunks of at most ``chunk_rows`` rows. Raises ``ModelForgeError`` (400) for a type it does
    not read, an empty data set, a path that is neither a Parquet file nor a directory holding some, or a bad
    ``chunk_rows``."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ModelForgeError(f"chunk_rows must be a whole number of rows >= 1, got {chunk_rows!r}")
    if isinstance(data, (str, PathLike)) or (isinstance(data, (list, tuple)) and data
                                              and all(isinstance(p, (str, PathLike)) for p in data)):
        return _plan_parquet(parquet_files(data), chunk_rows)
    if isinstance(data, np.ndarray):
        kind = "array"
    elif type(data).__name__ == "DataFrame" and hasattr(data, "iloc"):
        kind = "frame"
    else:
        raise ModelForgeError(
            f"score takes a NumPy array, a pandas DataFrame, a Parquet file or directory, or a list of them; "
            f"got {type(data).__name__}")
    rows = len(data) if data.ndim else 0
    if rows == 0:
        raise ModelForgeError("the data set to score has no rows")
    chunks = tuple(Chunk(i, start, min(start + chunk_rows, rows))
                   for i, start in enumerate(range(0, rows, chunk_rows)))
    return Source(kind, rows, chunks, data)


def parquet_files(data: str | PathLike | list) -> list[str]:
    """The Parquet files ``data`` names, in order: a file, a directory's ``*.parquet`` files by name, or a list of
    both. Raises ``ModelForgeError`` naming the path that does not exist or holds no Parquet file."""
    files: list[str] = []
    for item in data if isinstance(data, (list, tuple)) else [data]:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.parquet") if p.is_file())
            if not found:
                raise ModelForgeError(f"directory {path.name!r} holds no *.parquet file")
            files += [str(p.resolve()) for p in found]
        elif path.is_file():
            files.append(str(path.resolve()))
        else:
            raise ModelForgeError(f"no file or directory {path.name!r} to score")
    return files


def _plan_parquet(files: list[str], chunk_rows: int) -> Source:
    import pyarrow.parquet as pq

    chunks: list[Chunk] = []
    total = 0
    for file in files:
        try:
            rows = pq.ParquetFile(file).metadata.num_rows
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
            raise ModelForgeError(f"{Path(file).name!r} is not a readable Parquet file ({first_line(err)})") from None
        for offset in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - offset)
            chunks.append(Chunk(len(chunks), total + offset, total + offset + n, file, offset))
        total += rows
    if total == 0:
        raise ModelForgeError("the data set to score has no rows")
    return Source("parquet", total, tuple(chunks))


_open_files: dict[tuple, Any] = {}  # (pid, path, mtime, size) -> pyarrow.parquet.ParquetFile: footers read once


def read_parquet_rows(file: str, offset: int, rows: int) -> Any:
    """Rows ``[offset, offset + rows)`` of Parquet ``file`` as a pyarrow Table, reading only the row groups that
    overlap them, on this thread alone (a worker process has one core's share; pyarrow's pool would fight the other
    workers for it). A process keeps its last 8 files open (their footers parsed once; a file rewritten since is
    opened again)."""
    import pyarrow.parquet as pq

    stat = os.stat(file)
    key = (os.getpid(), file, stat.st_mtime_ns, stat.st_size)
    pf = _open_files.get(key)
    if pf is None:
        if len(_open_files) >= 8:
            _open_files.pop(next(iter(_open_files)))
        pf = _open_files[key] = pq.ParquetFile(file)
    groups, first, at = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if at + n > offset and at < offset + rows:
            groups.append(g)
            first = at if first is None else first
        at += n
    return pf.read_row_groups(groups, use_threads=False).slice(offset - (first or 0), rows)


def take_rows(data: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of an array, a DataFrame, a pyarrow Table or a dict of arrays."""
    if isinstance(data, dict):
        return {name: take_rows(value, start, stop) for name, value in data.items()}
    if hasattr(data, "iloc"):
        return data.iloc[start:stop]
    if hasattr(data, "slice") and hasattr(data, "num_rows"):
        return data.slice(start, stop - start)
    return data[start:stop]


def row_count(data: Any) -> int:
    """Rows in an array, a DataFrame, a pyarrow Table or a dict of arrays (its first)."""
    if isinstance(data, dict):
        return row_count(next(iter(data.values())))
    return data.num_rows if hasattr(data, "num_rows") else len(data)


def table_feed(record: ModelRecord, data: Any) -> dict[str, np.ndarray]:
    """The feed of ``record``'s inputs from ``data``: a DataFrame or pyarrow Table by the columns rule (module
    docstring), anything else as ``predict`` takes it. Raises ``InvalidInputError`` (400) as ``prepare_feed``, and
    ``ModelForgeError`` (400) as ``by_name``."""
    columns = _columns(data)
    if columns is None:
        return prepare_feed(record.inputs, data)
    if by_name(record, list(columns)):
        return prepare_feed(record.inputs, {s.name: _column(data, columns[s.name]) for s in record.inputs
                                            if s.name in columns})
    return prepare_feed(record.inputs, side_by_side(data, columns))


def side_by_side(data: Any, columns: dict[str, Any]) -> np.ndarray:
    """``data``'s ``columns`` side by side, ``[N, columns]``, C-contiguous. A pyarrow Table whose columns all hold
    one integer or float type and no nulls is written row-major into one array by Arrow (``RecordBatch.to_tensor``,
    pyarrow >= 16: a 10,000 x 30 float32 chunk in ~0.15 ms where ``np.column_stack`` of its columns takes ~0.6 ms,
    ``/tmp`` micro-benchmark of issue 15); anything else by ``np.column_stack`` of its columns (numpy's promotion)."""
    if _one_number_type(data):
        batches = data.combine_chunks().to_batches()  # one batch: the columns' chunks joined (a copy only if several)
        if len(batches) == 1:
            return np.asarray(batches[0].to_tensor())
    return np.column_stack([_column(data, label) for label in columns.values()])


def _one_number_type(data: Any) -> bool:
    """True for a pyarrow Table (pyarrow >= 16) of rows whose columns all hold one integer or float type, no nulls."""
    if not hasattr(data, "schema") or not hasattr(data, "combine_chunks") or not data.num_columns or not data.num_rows:
        return False
    import pyarrow as pa

    first = data.schema.types[0]
    return (hasattr(pa.RecordBatch, "to_tensor") and (pa.types.is_integer(first) or first in (pa.float32(), pa.float64()))
            and all(t == first for t in data.schema.types) and not any(c.null_count for c in data.columns))


def by_name(record: ModelRecord, columns: list[str]) -> bool:
    """True when ``columns`` map to ``record``'s inputs by name, False when they all go side by side to its single
    input. Raises ``ModelForgeError`` (400) when neither applies (a multi-input model, a required input missing),
    naming the inputs expected and those no column names."""
    required = [s.name for s in record.inputs if not s.optional]
    if required and all(name in columns for name in required):
        return True
    if len(required) != 1:
        missing = [name for name in required if name not in columns]
        raise ModelForgeError(
            f"the model has inputs {', '.join(map(repr, required))}: name the columns after them "
            f"(missing: {', '.join(map(repr, missing))}; expected {_expected(record)}; columns given: "
            f"{', '.join(map(repr, columns[:8]))}{'...' if len(columns) > 8 else ''})")
    return False


def check_columns(record: ModelRecord, source: Source) -> None:
    """Refuse now, rather than in every chunk (where every row would fail alone, one model run each), a data set
    that cannot feed ``record`` whatever its values: a DataFrame or Parquet file whose columns name no input
    (``by_name``), or whose columns side by side (or an array's rows) do not have the width the single input
    declares. Reads the Parquet files' schemas only. Raises ``ModelForgeError`` (400) naming the missing columns
    or the width expected, and the model's inputs."""
    if source.kind == "array":
        _check_width(record, source.data.shape, "the array")
        _check_kind(record, source.data.dtype)
    elif source.kind == "frame":
        columns = [str(c) for c in source.data.columns]
        if not by_name(record, columns):
            width = sum(_width(source.data.iloc[0, i]) for i in range(len(columns)))
            _check_width(record, (source.rows, width), "the DataFrame", columns)
    elif source.kind == "parquet":
        import pyarrow.parquet as pq

        for file in dict.fromkeys(chunk.file for chunk in source.chunks):
            schema = pq.read_schema(file)
            if by_name(record, schema.names):
                continue
            widths = [getattr(field.type, "list_size", None if hasattr(field.type, "value_type") else 1)
                      for field in schema]
            if None not in widths:  # a column of lists of varying length: its width shows in the rows only
                _check_width(record, (source.rows, sum(widths)), f"Parquet file {Path(file).name!r}", schema.names)


def _check_kind(record: ModelRecord, dtype: np.dtype) -> None:
    """Refuse an array of text, dates or raw bytes for a model whose single input is not ``string``: no value of it
    converts (``tensors``: strings only to ``string`` inputs), so every row would fail alone."""
    spec = next(s for s in record.inputs if not s.optional)
    if dtype.kind in "USMmV" and spec.dtype != "string":
        raise ModelForgeError(f"the array holds {dtype} values and input {spec.name!r} takes {spec.dtype}: convert "
                              f"it first (e.g. X.astype(np.{spec.dtype})); the model takes {_expected(record)}")


def _check_width(record: ModelRecord, shape: tuple[int, ...], what: str, columns: list[str] | None = None) -> None:
    """Refuse ``shape`` (the feed a single-input model would get: rows first) when its rank or a fixed dimension
    after the batch differs from the input's."""
    required = [s for s in record.inputs if not s.optional]
    if len(required) != 1:
        raise ModelForgeError(f"{what} feeds a single-input model only; this one takes {_expected(record)}: pass "
                              f"a dict {{input name: array}} to predict, or a DataFrame with a column per input")
    spec = required[0]
    if spec.shape is None:  # the model declares no shape: any rows feed it
        return
    want = list(spec.shape[1:])
    if len(shape) - 1 == len(want) and all(w is None or w == g for w, g in zip(want, shape[1:])):
        return
    if columns is None:
        raise ModelForgeError(f"{what}'s rows have shape {shape_str(shape[1:])}; the model takes {_expected(record)}")
    if len(spec.shape) != 2:
        raise ModelForgeError(f"{what}'s columns side by side make rows of {shape[1]} values; the model takes "
                              f"{_expected(record)}: name a column {spec.name!r}")
    given = f"{', '.join(map(repr, columns[:8]))}{'...' if len(columns) > 8 else ''}"
    short = "missing" if shape[1] < want[0] else "too many"
    raise ModelForgeError(
        f"{what}'s {len(columns)} columns ({given}) make rows of {shape[1]} values side by side and the model "
        f"takes {want[0]} ({_expected(record)}): {abs(want[0] - shape[1])} {short}")


def _width(value: Any) -> int:
    """The values a DataFrame cell adds to its row side by side: a list's length, else 1."""
    return len(value) if isinstance(value, (list, tuple, np.ndarray)) else 1


def _expected(record: ModelRecord) -> str:
    return ", ".join(f"{s.name!r} {s.dtype} {shape_str(s.shape)}" + (" (optional)" if s.optional else "")
                     for s in record.inputs) or "no inputs"


def _columns(data: Any) -> dict[str, Any] | None:
    """``{column name as text: its label}`` of a DataFrame (labels may be ints) or a Table; None for other data."""
    if hasattr(data, "iloc"):
        return {str(label): label for label in data.columns}
    if hasattr(data, "column_names"):
        return {name: name for name in data.column_names}
    return None


def _column(data: Any, label: Any) -> np.ndarray:
    if hasattr(data, "iloc"):
        values = data[label].to_numpy()
    else:
        column = data.column(label)
        values = column.to_numpy() if column.type.num_fields == 0 else np.asarray(column.to_pylist(), dtype=object)
    if values.dtype.kind == "O" and len(values) and isinstance(values[0], (list, tuple, np.ndarray)):
        try:
            return np.stack([np.asarray(v) for v in values])  # a column of equal-length lists: [N, k]
        except ValueError:
            pass  # ragged: prepare_feed names it
    return values


def encode(data: Any) -> tuple[str, bytes]:
    """A chunk as bytes for Redis: ``("npy", ...)`` for an array, ``("arrow", ...)`` (an IPC stream) for a DataFrame
    or Table. Raises ``ModelForgeError`` when a DataFrame's columns do not convert to Arrow (mixed object values)."""
    if isinstance(data, np.ndarray):
        if data.dtype.kind == "O":
            raise ModelForgeError("an array of Python objects cannot travel to the workers; use a numeric dtype")
        buf = io.BytesIO()
        np.save(buf, data, allow_pickle=False)
        return "npy", buf.getvalue()
    import pyarrow as pa

    try:
        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise ModelForgeError(f"the DataFrame cannot travel to the workers as Arrow: {first_line(err)}") from None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return "arrow", sink.getvalue().to_pybytes()


def decode(kind: str, payload: bytes | memoryview) -> Any:
    """The inverse of ``encode``. An array is read in place: a read-only view of ``payload``'s bytes (no copy: a
    10,000 x 30 float32 chunk in ~1 µs where ``np.load`` copied it in ~0.5 ms). Raises ``ModelForgeError`` for npy
    bytes that hold Python objects or fewer values than their header says."""
    import pyarrow as pa

    if kind == "npy":
        return _npy_view(memoryview(payload))
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


def _npy_view(view: memoryview) -> np.ndarray:
    """The array of ``.npy`` bytes (``numpy.lib.format``) over ``view`` itself."""
    fmt = np.lib.format
    major, minor = fmt.read_magic(io.BytesIO(view[:fmt.MAGIC_LEN].tobytes()))
    if major not in (1, 2):  # version 3 (utf-8 field names): numpy's own reader, which copies
        return np.load(io.BytesIO(view.tobytes()), allow_pickle=False)
    size_at = fmt.MAGIC_LEN + (2 if major == 1 else 4)
    end = size_at + int.from_bytes(view[fmt.MAGIC_LEN:size_at], "little")
    head = io.BytesIO(view[:end].tobytes())
    fmt.read_magic(head)
    read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
    shape, fortran_order, dtype = read_header(head)
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject:
        raise ModelForgeError("the chunk's npy bytes hold Python objects, which are not read (allow_pickle=False)")
    if len(view) - end < count * dtype.itemsize:
        raise ModelForgeError(f"the chunk's npy bytes end early: {len(view) - end} bytes for {shape_str(shape)} {dtype}")
    return np.frombuffer(view, dtype, count, end).reshape(shape, order="F" if fortran_order else "C")

