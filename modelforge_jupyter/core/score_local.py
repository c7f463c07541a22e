"""Batch scoring's embedded path: a local process pool of ``workers`` processes, each with its own ``ModelForge``
on the kernel's settings and one ONNX Runtime intra-op thread per session (``scoring`` documents the job).

Workers are forked (nothing imported again, and a script needs no ``if __name__ == "__main__"`` guard, as ``spawn``
or ``forkserver`` would): what the kernel's ModelForge shares with them (connections, locks, threads) is dropped in
each child by ``forksafe``'s hooks, and the child's own ModelForge opens its own. The pool is built on the first job
and kept for the ModelForge's life (``ModelForge.close`` stops it); a pool whose worker died is rebuilt.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from .errors import ModelForgeError, ServiceUnavailableError, first_line
from .score_chunks import ChunkError, ChunkOutcome, JobSpec, manifest_of, score_chunk, write_manifest
from .score_sources import Chunk, Source, read_parquet_rows

_pools: weakref.WeakKeyDictionary[Any, tuple[int, ProcessPoolExecutor]] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()
_worker_forge: Any = None  # in a pool worker: its ModelForge


def max_workers() -> int:
    """The most processes a local pool may have: 4 per CPU (each runs one single-threaded session; more only adds
    memory and switching, and a pool of the fork context starts them all at once)."""
    return 4 * (os.cpu_count() or 1)


def local_pool(forge: Any, workers: int | None) -> ProcessPoolExecutor:
    """``forge``'s pool of ``workers`` processes (default ``os.cpu_count()``), built on first use and rebuilt when
    the count changes or a worker died (a broken pool). Raises ``ModelForgeError`` (400) for a count that is not a
    whole number from 1 to ``max_workers()``."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= max_workers():
        raise ModelForgeError(f"workers must be a whole number from 1 to {max_workers()} (4 per CPU of this "
                              f"machine), got {workers!r}")
    with _pools_lock:
        held = _pools.get(forge)
        if held is not None and held[0] == workers and not getattr(held[1], "_broken", False):
            return held[1]
        if held is not None:
            held[1].shutdown(wait=False, cancel_futures=True)
        settings = {name: getattr(forge.settings, name) for name in forge.settings.trait_names()
                    if forge.settings.traits()[name].metadata.get("config")}
        settings |= {"intra_op_num_threads": 1, "dynamic_batching": False, "model_batching": {}}
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                                   initargs=(type(forge), settings))
        _pools[forge] = (workers, pool)
        return pool


def close_pool(forge: Any) -> None:
    """Stop ``forge``'s pool (``ModelForge.close``): queued chunks are cancelled, running ones finish."""
    with _pools_lock:
        held = _pools.pop(forge, None)
    if held is not None:
        held[1].shutdown(wait=True, cancel_futures=True)


def _start_worker(forge_class: type, settings: dict) -> None:
    global _worker_forge
    _worker_forge = forge_class(**settings)


def _score_in_worker(spec: JobSpec, chunk: Chunk, data: Any) -> ChunkOutcome:
    if data is None:  # Parquet: read by path here
        data = read_parquet_rows(chunk.file, chunk.offset, chunk.rows)
    return score_chunk(_worker_forge, spec.pin, chunk, data, spec.output)


class LocalRun:
    """A job's chunks as futures of the local pool; counters kept in this process."""

    def __init__(self, pool: ProcessPoolExecutor, spec: JobSpec, source: Source) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._outcomes: dict[int, ChunkOutcome] = {}
        self._cancelled = 0
        self._first_at: float | None = None
        self._finished_at: float | None = None
        self._futures: list[Future] = []
        self._starts = {chunk.index: chunk.start for chunk in source.chunks}
        for chunk in source.chunks:
            data = None if source.kind == "parquet" else source.take(chunk)
            future = pool.submit(_score_in_worker, spec, chunk, data)
            future.add_done_callback(lambda f, chunk=chunk: self._finished(chunk, f))
            self._futures.append(future)

    def _finished(self, chunk: Chunk, future: Future) -> None:
        outcome = None
        if not future.cancelled():
            try:
                outcome = future.result()
            except BrokenProcessPool as err:  # a worker died
                error = ChunkError(chunk.index, chunk.start, chunk.stop, ServiceUnavailableError.status,
                                   f"chunk {chunk.index} was lost: {first_line(err)}", chunk.rows)
                outcome = ChunkOutcome(chunk.index, np.empty(0, np.int64), None, error=error)
            except Exception as err:  # a failure outside the model run (reading the chunk, writing its part)
                error = ChunkError(chunk.index, chunk.start, chunk.stop, 500,
                                   f"chunk {chunk.index} failed: {type(err).__name__}: {first_line(err)}", chunk.rows)
                outcome = ChunkOutcome(chunk.index, np.empty(0, np.int64), None, error=error)
        with self._lock:
            if outcome is None:
                self._cancelled += 1
            else:
                self._outcomes[chunk.index] = outcome
                self._first_at = self._first_at or time.time()
            last = len(self._outcomes) + self._cancelled == self.spec.chunks
            if last:
                self._finished_at = time.time()
        if last and self.spec.output is not None:
            write_manifest(self.spec.output, self.manifest())

    def counts(self) -> dict:
        """``{rows_done, chunks_done, chunks_failed, chunks_cancelled, first_at, finished_at, bad_rows}`` (times:
        Unix s)."""
        with self._lock:
            outcomes = list(self._outcomes.values())
            failed = sum(1 for o in outcomes if o.error is not None)
            return {"rows_done": sum(len(o.row) for o in outcomes), "chunks_done": len(outcomes) - failed,
                    "chunks_failed": failed, "chunks_cancelled": self._cancelled, "first_at": self._first_at,
                    "finished_at": self._finished_at,
                    "bad_rows": sum(o.error.bad_rows for o in outcomes if o.error is not None)}

    def cancel(self) -> None:
        """Cancel the chunks still queued."""
        for future in self._futures:
            future.cancel()

    def forget(self) -> int:
        """Drop the outputs held for ``result()`` (``ScoreJob.forget``); returns how many chunks held some."""
        with self._lock:
            held = sum(1 for o in self._outcomes.values() if o.outputs is not None)
            for outcome in self._outcomes.values():
                outcome.outputs = None
            return held

    def outcomes(self) -> list[ChunkOutcome]:
        """The chunks finished so far, by index."""
        with self._lock:
            return [self._outcomes[i] for i in sorted(self._outcomes)]

    def errors(self) -> list[ChunkError]:
        """The finished chunks' errors."""
        return [o.error for o in self.outcomes() if o.error is not None]

    def manifest(self) -> dict:
        """The output directory's manifest as it stands (``score_chunks.manifest_of``)."""
        parts = {o.index: {"start": self._starts[o.index], "rows": len(o.row), "file": o.file} for o in self.outcomes()}
        return manifest_of(self.spec, parts, self.errors(), cancelled=self._cancelled)
