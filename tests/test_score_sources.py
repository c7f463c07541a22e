"""A chunk's rows as a worker turns them into a feed: columns side by side (Arrow's row-major copy where the columns
share one number type, ``np.column_stack`` otherwise: the same values and dtype either way), npy chunks read in
place from their bytes, output parts written with dictionaries only where values repeat.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelforge_jupyter.core.errors import ModelForgeError
from modelforge_jupyter.core.score_chunks import outputs_table, write_part
from modelforge_jupyter.core.score_sources import decode, encode, side_by_side

X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)


def columns_of(table: pa.Table) -> dict:
    return {name: name for name in table.column_names}


def stacked(table: pa.Table) -> np.ndarray:
    """The reference: each column to NumPy, then ``np.column_stack`` (nulls as NaN)."""
    return np.column_stack([table.column(n).to_numpy() for n in table.column_names])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int8])
def test_one_number_type_side_by_side_over_two_chunks_sliced(dtype):
    # Given a table of 2 chunks a column (two row groups read), sliced across their border
    part = pa.table({f"f{j}": X[:, j].astype(dtype) for j in range(4)})
    table = pa.concat_tables([part, part]).slice(37, 30)
    assert table.column(0).num_chunks == 2
    got = side_by_side(table, columns_of(table))
    want = np.concatenate([X, X])[37:67].astype(dtype)
    assert got.dtype == want.dtype and got.flags.c_contiguous and np.array_equal(got, want)


def test_mixed_types_and_nulls_take_numpys_promotion():
    mixed = pa.table({"a": X[:, 0], "b": np.arange(50, dtype=np.int64)})
    got = side_by_side(mixed, columns_of(mixed))
    assert got.dtype == np.float64 and np.array_equal(got, stacked(mixed))
    nulls = pa.table({"a": pa.array([1.5, None, 3.0], pa.float32()), "b": pa.array([4.0, 5.0, None], pa.float32())})
    got = side_by_side(nulls, columns_of(nulls))
    assert got.dtype == np.float32 and np.array_equal(got, [[1.5, 4.0], [np.nan, 5.0], [3.0, np.nan]], equal_nan=True)


@pytest.mark.parametrize("array", [X, np.asfortranarray(X.astype(np.float64)), np.arange(7), np.array(2.5),
                                   np.zeros((0, 3), np.int32)])
def test_npy_chunk_read_in_place_from_its_bytes(array):
    kind, payload = encode(array)
    raw = kind.encode() + b"\n" + payload  # as Redis holds it
    got = decode(kind, memoryview(raw)[len(kind) + 1:])
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)
    assert not got.flags.writeable  # a view of the bytes, not a copy
    if array.size:
        assert np.shares_memory(got, np.frombuffer(raw, np.uint8))


def test_npy_chunk_short_or_of_objects_refused():
    kind, payload = encode(X)
    with pytest.raises(ModelForgeError, match="end early"):
        decode(kind, payload[:-4])
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelForgeError, match="Python objects"):
        decode("npy", buf.getvalue())


def test_output_part_dictionary_only_on_columns_that_are_not_floats(tmp_path):
    p = X[:, 0] - X[:, 0].min()
    table = outputs_table(np.arange(50, dtype=np.int64), {"label": (p > 1).astype(np.int64),
                                                          "probabilities": np.stack([p, 1 - p], 1)})
    name = write_part(str(tmp_path), 3, table)
    assert name == "part-00003.parquet" and pq.read_table(tmp_path / name).equals(table)
    group = pq.ParquetFile(tmp_path / name).metadata.row_group(0)
    dictionary = {group.column(i).path_in_schema: "RLE_DICTIONARY" in group.column(i).encodings
                  for i in range(group.num_columns)}
    assert dictionary == {"row": True, "label": True, "probabilities_0": False, "probabilities_1": False}
