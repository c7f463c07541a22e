"""Batches of a model's input: a valid sample input for its specs, a given input resized to N rows, the rows an input
gives one run, the batch sizes the doors' ``--batch-sizes`` takes, and whether a model takes one batch size only.
The benchmark plans with these; they hold for any model (specs are ``ModelRecord.inputs``: ``TensorSpec`` lists)."""

from __future__ import annotations

import numpy as np

from .tensors import NUMPY_DTYPES, shape_str


def sample_feed(specs: list, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid input for ``specs`` (``ModelRecord.inputs``): axis 0 = ``batch`` where it is symbolic, other symbolic
    dims 1; an input of any shape (``TensorSpec.shape`` None) ``[batch]``. Floats uniform in [0, 5); integers and
    bools 0 or 1 (valid indices for any embedding); strings 'a'/'b'. Optional inputs are left out: the model's
    defaults are what it normally runs with."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        if spec.optional:
            continue
        dims = [None] if spec.shape is None else spec.shape
        shape = [d if d is not None else (batch if axis == 0 else 1) for axis, d in enumerate(dims)]
        dtype = NUMPY_DTYPES[spec.dtype]
        if dtype.kind == "f":
            arr = rng.uniform(0, 5, shape).astype(dtype)
        elif dtype.kind == "O":
            arr = rng.choice(np.array(["a", "b"], dtype=object), shape)
        else:
            arr = rng.integers(0, 2, shape).astype(dtype)
        feed[spec.name] = np.asarray(arr, dtype)
    return feed


def resize_batch(specs: list, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """``feed`` with ``batch`` rows on axis 0 of every input whose axis 0 is symbolic (rows repeated cyclically)."""
    out = dict(feed)
    for spec in specs:
        arr = feed.get(spec.name)
        if arr is not None and spec.shape and spec.shape[0] is None and arr.shape[0] != batch:
            out[spec.name] = np.ascontiguousarray(np.take(arr, np.arange(batch) % arr.shape[0], axis=0))
    return out


def batch_of(specs: list, feed: dict[str, np.ndarray]) -> int:
    """The rows ``feed`` gives the model in one run: axis 0 of the first input whose axis 0 is symbolic, else of the
    first input of rank >= 1 (its fixed batch), else 1 (scalar inputs only). Optional inputs left out do not count."""
    ranked = [s for s in specs if s.shape and s.name in feed]
    spec = next((s for s in ranked if s.shape[0] is None), ranked[0] if ranked else None)
    return 1 if spec is None else int(np.shape(feed[spec.name])[0])


def parse_batch_sizes(text: str) -> list[int]:
    """The batch sizes of ``"1,10,100"``: whole numbers >= 1 separated by commas (empty pieces skipped), as the
    doors' ``--batch-sizes`` takes them. Raises ``ValueError`` saying which rule ``text`` breaks, worded to follow the
    option's name (``"takes whole numbers separated by commas, got '1,x'"``, ``"must be >= 1, got '0'"``)."""
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"takes whole numbers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"must be >= 1, got {text!r}")
    return sizes


def fixed_batch(specs: list) -> tuple[int, str] | None:
    """``(batch, why)`` when the model takes one batch size only (no input has a symbolic axis 0): axis 0 of its
    first input of rank >= 1, or 1 for scalar inputs; None when it takes any batch. Optional inputs (the bench
    leaves them at their defaults) do not count; an input of any shape takes any batch."""
    required = [s for s in specs if not s.optional]
    if any(s.shape is None for s in required):
        return None
    ranked = [s for s in required if s.shape]
    if any(s.shape[0] is None for s in ranked):
        return None
    if not ranked:
        return 1, "its inputs are scalars"
    return ranked[0].shape[0], f"input {ranked[0].name!r} is {ranked[0].dtype} {shape_str(ranked[0].shape)}"
