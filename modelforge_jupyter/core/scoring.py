"""Batch scoring: ``ModelForge.score`` cuts a data set into chunks and predicts them in other processes; a
``ScoreJob`` follows them (progress, wait, cancel, errors) and gathers the outputs in row order.

The model version is pinned at submit (``score_chunks.Pin``): every chunk predicts that version, whatever is
registered meanwhile. Two ways to run, one job API:

- embedded (no ``CELERY_BROKER_URL``): a local process pool of forked workers (``score_local``), each with its own
  ``ModelForge`` on the same settings and one ONNX Runtime intra-op thread per session;
- Celery (``CELERY_BROKER_URL`` set): each chunk a task on the workers (``score_celery``); job state in Redis, so
  ``ModelForge.score_job(id)`` attaches from another process (without Redis: in the output directory,
  ``score_state``).

Results are gathered in this process (``result()``: ``{output name: ndarray | MapRows}`` in row order; ``table()``: a
pyarrow Table with the row numbers) or written by the workers as Parquet (``output=``: ``part-NNNNN.parquet`` per
chunk and ``manifest.json``).
"""

from __future__ import annotations

import os
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelForgeError
from .score_chunks import (MAX_ROW_ERRORS, ChunkError, JobSpec, Pin, concat_outputs, outputs_table,
                           write_manifest)
from .score_local import LocalRun, close_pool, local_pool  # noqa: F401  (close_pool: ModelForge.close calls it)
from .score_sources import check_columns, plan

DEFAULT_CHUNK_ROWS = 10_000
POLL_S = 0.05  # how often wait() reads the job's counters


class ScoringError(ModelForgeError):
    """A job's results were asked for while some of its rows failed or were cancelled (HTTP 422); ``errors()``
    names the rows, ``table()`` holds those that were scored."""

    status = 422


@dataclass(frozen=True)
class ScoreProgress:
    """Where a job stands: ``state`` (``running``, ``done``, ``failed``: some rows not scored, ``cancelled``), rows
    and chunks done, ``elapsed_s`` since submit, ``rows_per_s`` over it, ``eta_s`` (None before the first chunk),
    ``first_progress_s`` (submit to the first finished chunk), ``bad_rows`` (rows of finished chunks not scored: every
    bad row counted, though ``errors()`` names the first ``MAX_ROW_ERRORS`` of each chunk only)."""

    state: str
    rows: int
    rows_done: int
    chunks: int
    chunks_done: int
    chunks_failed: int
    chunks_cancelled: int
    elapsed_s: float
    first_progress_s: float | None
    bad_rows: int = 0

    @property
    def fraction(self) -> float:
        """Rows done over rows, 0 to 1."""
        return self.rows_done / self.rows if self.rows else 1.0

    @property
    def rows_per_s(self) -> float:
        """Throughput since submit, rows/s (start-up included)."""
        return self.rows_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at ``rows_per_s``: None before the first chunk, 0 once over."""
        if self.state != "running":
            return 0.0
        rate = self.rows_per_s
        return (self.rows - self.rows_done) / rate if rate > 0 else None

    def text(self) -> str:
        """One line: ``running: 120,000/2,000,000 rows (6%), 40,000 rows/s, ETA 47 s``."""
        eta = self.eta_s
        tail = f", ETA {eta:.0f} s" if self.state == "running" and eta is not None else f", {self.elapsed_s:.1f} s"
        failed = f", {self.chunks_failed} chunks with errors ({self.bad_rows:,} rows)" if self.chunks_failed else ""
        return (f"{self.state}: {self.rows_done:,}/{self.rows:,} rows ({self.fraction:.0%}), "
                f"{self.rows_per_s:,.0f} rows/s{tail}{failed}")


class ScoreJob:
    """A batch-scoring job (``ModelForge.score``). ``id`` names it (``ModelForge.score_job(id)`` attaches to it
    from another process when it runs on Celery); ``spec`` holds the pinned model version, rows and chunks."""

    def __init__(self, spec: JobSpec, run: Any) -> None:
        self.spec, self._run = spec, run
        self.id, self.model, self.version, self.output = spec.id, spec.pin.model, spec.pin.version, spec.output
        self._final: ScoreProgress | None = None  # the last reading, once forgotten

    def progress(self) -> ScoreProgress:
        """The counters now (one read of the job's state: in-process, or one Redis round trip)."""
        if self._final is not None:
            return self._final
        c = self._run.counts()
        finished = c["chunks_done"] + c["chunks_failed"] + c["chunks_cancelled"]
        if finished < self.spec.chunks:
            state = "running"
        elif c["chunks_cancelled"]:
            state = "cancelled"
        else:
            state = "failed" if c["chunks_failed"] or c["rows_done"] < self.spec.rows else "done"
        end = c["finished_at"] if state != "running" and c.get("finished_at") else time.time()
        first = c.get("first_at")
        return ScoreProgress(state, self.spec.rows, c["rows_done"], self.spec.chunks, c["chunks_done"],
                             c["chunks_failed"], c["chunks_cancelled"], max(0.0, end - self.spec.submitted),
                             None if first is None else max(0.0, first - self.spec.submitted), c.get("bad_rows", 0))

    def done(self) -> bool:
        """True once every chunk has finished, failed or been cancelled."""
        return self.progress().state != "running"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is over or ``timeout`` seconds pass (None: no limit); True when it is over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def cancel(self) -> None:
        """Stop the chunks not started yet (those running finish and keep their results)."""
        self._run.cancel()

    def errors(self) -> list[ChunkError]:
        """The chunks that failed, whole or on some rows, by chunk index. Each ``ChunkError`` counts all its chunk's
        rows not scored (``bad_rows``) and names the first ``MAX_ROW_ERRORS`` (100) bad rows with the reason
        (``rows``: ``(row number, reason)`` in row order); ``progress().bad_rows`` is the job's total."""
        self._kept()
        return sorted(self._run.errors(), key=lambda e: e.chunk)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the job, then its outputs in row order: ``{output name: ndarray | MapRows}``, axis 0 the
        data set's rows (as ``PredictionResult.outputs``). With ``output=``: the manifest (dict) of the files written.
        Raises ``ScoringError`` (422) when some rows failed or were cancelled, ``TimeoutError`` past ``timeout`` s."""
        if not self.wait(timeout):
            raise TimeoutError(f"score job {self.id} still running after {timeout} s: {self.progress().text()}")
        self._kept()
        progress = self.progress()
        if progress.state != "done":
            errors = self.errors()
            raise ScoringError(
                f"score job {self.id} {progress.state}: {progress.rows - progress.rows_done:,} of {progress.rows:,} "
                f"rows not scored" + (f" (first: {errors[0].message})" if errors else "")
                + "; job.errors() names them, job.table() has the rows scored")
        if self.output is not None:  # the last worker writes it too, maybe just after the job reads as over
            manifest = self._run.manifest()
            write_manifest(self.output, manifest)
            return manifest
        return concat_outputs([o.outputs for o in self._run.outcomes() if o.outputs is not None])

    def table(self) -> Any:
        """The rows scored so far as a pyarrow Table: ``row`` (int64, the row number) and the output columns
        (``score_chunks.outputs_table``); ``.to_pandas()`` for a DataFrame. With ``output=``: the part files read."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._kept()
        if self.output is not None:
            names = [p["file"] for p in self._run.manifest()["parts"] if p.get("file")]
            tables = [pq.read_table(Path(self.output) / name) for name in names]
        else:
            tables = [outputs_table(o.row, o.outputs) for o in self._run.outcomes() if o.outputs is not None]
        return pa.concat_tables(tables) if tables else pa.table({"row": pa.array([], pa.int64())})

    def forget(self) -> int:
        """Free what the job keeps once it is over: on Celery, its Redis keys (state, results, any chunk left), else
        in this process, the outputs held for ``result()``. Parquet parts and the manifest written to ``output`` stay.
        ``progress()`` keeps its last reading; ``result()``, ``table()`` and ``errors()`` raise ``ModelForgeError``
        after it. Returns the keys (or chunks) freed. Raises ``ModelForgeError`` (400) while the job runs:
        ``cancel()`` and ``wait()`` first."""
        final = self.progress()
        if final.state == "running":
            raise ModelForgeError(f"score job {self.id} is still running: cancel() and wait() it before forget()")
        self._final = final
        _jobs.pop(self.id, None)
        return self._run.forget()

    def _kept(self) -> None:
        if self._final is not None:
            raise ModelForgeError(f"score job {self.id} was forgotten: its results and errors are gone")

    def __repr__(self) -> str:
        return f"<ScoreJob {self.id} {self.model} v{self.version}: {self.progress().text()}>"


# -- submit ------------------------------------------------------------------------------------------------------------
class BatchScoring:
    """``ModelForge``'s batch-scoring methods (its facade delegates here: the rules live in this module)."""

    def score(self, model: str, data: Any, *, version: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
              output: str | os.PathLike | None = None, workers: int | None = None) -> ScoreJob:
        """Score a data set in chunks of ``chunk_rows`` rows on worker processes; returns a ``ScoreJob`` at once
        (``progress()``, ``wait()``, ``cancel()``, ``result()``, ``errors()``, ``table()``, ``id``).

        ``data``: a NumPy array (rows along axis 0), a pandas DataFrame (columns named after the inputs, or all
        columns to a single input), a Parquet file, a directory of ``*.parquet`` files, or a list of them
        (``score_sources``). The version (latest unless ``version``) is pinned now. ``output``: a new directory for
        ``part-NNNNN.parquet`` per chunk and ``manifest.json``; None: outputs gathered back in row order. Workers:
        Celery's when ``CELERY_BROKER_URL`` is set, else a local pool of ``workers`` processes (default one per CPU).
        No prediction is cached. Raises ``ModelNotFoundError`` (404); ``ModelForgeError`` (400) for data it cannot
        read, a bad ``chunk_rows`` / ``workers`` / ``output``, or a broker with nothing to carry the chunks.
        """
        return submit(self, model, data, version=version, chunk_rows=chunk_rows, output=output, workers=workers)

    def score_job(self, job_id: str) -> ScoreJob:
        """The ``ScoreJob`` ``job_id``: one this process submitted, or a Celery job of any process (its state is in
        Redis). Raises ``ModelNotFoundError`` (404) for an unknown or expired job."""
        return attach(self, job_id)


_jobs: weakref.WeakValueDictionary[str, ScoreJob] = weakref.WeakValueDictionary()


def submit(forge: Any, model: str, data: Any, *, version: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
           output: str | os.PathLike | None = None, workers: int | None = None) -> ScoreJob:
    """``ModelForge.score`` (``BatchScoring.score``): resolve and pin the version, plan the chunks, start them
    (locally or on Celery)."""
    record = forge.get(model, version)
    source = plan(data, chunk_rows)
    check_columns(record, source)
    spec = JobSpec(uuid.uuid4().hex, Pin(record.name, record.id, record.version, record.sha256), source.rows,
                   len(source.chunks), chunk_rows, output_dir(output), time.time())
    if forge.settings.celery_broker_url:
        from .score_celery import CeleryRun

        CeleryRun.check(forge, spec, source)  # a refused job leaves nothing behind, not even its directory
        make_output(spec.output)
        run = CeleryRun.submit(forge, spec, source)
    else:
        pool = local_pool(forge, workers)
        make_output(spec.output)
        run = LocalRun(pool, spec, source)
    job = _jobs[spec.id] = ScoreJob(spec, run)
    return job


def attach(forge: Any, job_id: str) -> ScoreJob:
    """The job ``job_id``: this process's own, else a Celery job read from Redis. ``ModelNotFoundError`` (404)."""
    job = _jobs.get(job_id)
    if job is not None:
        return job
    from .score_celery import CeleryRun

    spec, run = CeleryRun.attach(forge, job_id)
    return ScoreJob(spec, run)


def output_dir(output: str | os.PathLike | None) -> str | None:
    """``output`` as an absolute directory path (``make_output`` creates it). Raises ``ModelForgeError`` (400) when
    it is a file or a directory that is not empty (a job's parts would mix with files that are not its own)."""
    if output is None:
        return None
    path = Path(output).resolve()
    if path.exists() and not path.is_dir():
        raise ModelForgeError(f"output {Path(output).name!r} is a file; give a directory for the Parquet parts")
    if path.is_dir() and (any(path.glob("part-*.parquet")) or (path / "manifest.json").exists()):
        raise ModelForgeError(f"output directory {Path(output).name!r} already holds a job's files; give a new one")
    if path.is_dir() and any(path.iterdir()):
        raise ModelForgeError(f"output directory {Path(output).name!r} is not empty; give a new or empty one for the "
                              f"job's parts and manifest")
    return str(path)


def make_output(path: str | None) -> None:
    """Create the output directory ``output_dir`` gave, if any."""
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
