"""Batch scoring on Celery workers: each chunk a ``modelforge_jupyter.tasks.score_chunk`` task; the job's state in
Redis, or in its output directory when there is no Redis (``score_state``).

Tasks are JSON (the job's ``JobSpec``, the ``Chunk``, where the state is), never pickled; acknowledged late and
idempotent (a chunk already finished is not scored again), so a task redelivered after its worker died, or retried
with backoff while Redis is away, costs at most one more run of its chunk. A worker reads a Parquet chunk by path
(the files must be where the workers see them: one machine, or a shared volume); any other chunk travels through
Redis, encoded by ``score_sources.encode`` (npy or Arrow IPC). Outputs come back through Redis (``outputs.pack``,
the row numbers beside them), or are written by the worker to ``output`` (a directory the workers share). Without
Redis, a job needs both: Parquet rows and an output directory. Any process with the same Redis and key prefix
attaches to a job by its id (``ModelForge.score_job``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from .errors import ModelForgeError, ModelNotFoundError, ServiceUnavailableError, first_line
from .score_chunks import ChunkError, ChunkOutcome, JobSpec, manifest_of, score_chunk, write_manifest
from .score_sources import Chunk, Source, decode, encode, read_parquet_rows
from .score_state import SCORE_TTL, DirState, RedisState, open_state, redis_client
from .urls import mask_url

log = logging.getLogger(__name__)

TASK_NAME = "modelforge_jupyter.tasks.score_chunk"
SEND_BATCH = 8  # chunks stored, then their tasks sent, at a time: the first ones run while the rest upload
NEEDS = ("scoring on Celery workers (CELERY_BROKER_URL is set) needs REDIS_URL (the job's state, its chunks and "
         "its results travel through Redis), or Parquet rows and an output= directory that the workers see at the "
         "same paths; or unset CELERY_BROKER_URL to score in a local process pool")


class CeleryRun:
    """A job on Celery workers, seen from any process: the ``ScoreJob``'s view of its state."""

    def __init__(self, spec: JobSpec, state: RedisState | DirState) -> None:
        self.spec, self.state = spec, state

    @staticmethod
    def check(forge: Any, spec: JobSpec, source: Source) -> None:
        """Refuse (``ModelForgeError``, 400, naming what is needed) a job with neither Redis nor Parquet rows and an
        output directory to carry it."""
        if not (forge.settings.redis_url or (source.kind == "parquet" and spec.output is not None)):
            raise ModelForgeError(NEEDS)

    @classmethod
    def submit(cls, forge: Any, spec: JobSpec, source: Source) -> CeleryRun:
        """Store the job (and its chunks, in Redis) and send a task per chunk. Raises as ``check``;
        ``ServiceUnavailableError`` (503) when Redis or the broker does not take them."""
        cls.check(forge, spec, source)
        s = forge.settings
        if s.redis_url:
            state: RedisState | DirState = RedisState(redis_client(s.redis_url), s.cache_key_prefix, spec.id)
        else:
            state = DirState(spec.output, spec.id)
        try:
            state.create(spec)
        except Exception as err:  # redis-py's errors, or an output directory not writable
            raise ServiceUnavailableError(f"the job's state could not be stored ({mask_url(first_line(err))})") from None
        app = forge.invalidator.celery
        sent = 0
        try:
            with app.producer_or_acquire() as producer:
                for at in range(0, len(source.chunks), SEND_BATCH):
                    batch = source.chunks[at:at + SEND_BATCH]
                    _put_chunks(state, source, batch)  # before their tasks: a worker never waits for its rows
                    for chunk in batch:
                        app.send_task(TASK_NAME, args=[spec.to_json(), chunk.to_json(), state.where],
                                      queue=s.celery_queue, producer=producer, retry=False)
                        sent += 1
        except ModelForgeError:  # rows that cannot travel (score_sources.encode), or Redis gone (503)
            _abandon(state, spec, sent)
            raise
        except Exception as err:  # kombu OperationalError / OSError: the broker is unreachable or silent
            _abandon(state, spec, sent)
            raise ServiceUnavailableError(
                f"the Celery broker did not take the job's tasks ({mask_url(first_line(err))})") from None
        return cls(spec, state)

    @classmethod
    def attach(cls, forge: Any, job_id: str) -> tuple[JobSpec, CeleryRun]:
        """The job ``job_id`` from Redis. Raises ``ModelNotFoundError`` (404) when it is unknown or expired."""
        s = forge.settings
        spec = state = None
        if s.redis_url:
            state = RedisState(redis_client(s.redis_url), s.cache_key_prefix, job_id)
            spec = state.spec()
        if spec is None:
            raise ModelNotFoundError(f"no score job {job_id!r} (unknown here, or expired {SCORE_TTL} s after it ended)")
        return spec, cls(spec, state)

    def forget(self) -> int:
        """Delete the job's state, results and any chunk left (``ScoreJob.forget``); returns the keys removed."""
        return self.state.delete(self.spec.chunks)

    def counts(self) -> dict:
        """As ``LocalRun.counts``."""
        return self.state.counts()

    def cancel(self) -> None:
        """Flag the job cancelled: each chunk not started yet is skipped by the worker that takes it."""
        self.state.cancel()

    def outcomes(self) -> list[ChunkOutcome]:
        """The finished chunks with their outputs read back from Redis, by index."""
        return self.state.results(sorted(self.state.parts()))

    def errors(self) -> list[ChunkError]:
        """The chunks' errors."""
        return self.state.errors()

    def manifest(self) -> dict:
        """The output directory's manifest as it stands."""
        return manifest_of(self.spec, self.state.parts(), self.state.errors(), cancelled=self.state.skipped())


def run_chunk(forge: Any, spec_json: dict, chunk_json: dict, where: dict | str) -> int:
    """The ``score_chunk`` task's body, in a worker: score one chunk unless it is finished already or the job was
    cancelled, and record it. ``where``: the state's place (``score_state.open_state``; a key prefix alone: Redis).
    Returns the rows scored. Raises redis-py's errors (the task retries on them)."""
    spec, chunk = JobSpec.from_json(spec_json), Chunk(**chunk_json)
    where = {"redis": where, "job": spec.id} if isinstance(where, str) else where
    state = open_state(where, forge.settings.redis_url)
    finished, cancelled, raw = state.begin(chunk.index)  # one round trip
    if finished:
        return 0  # a redelivered task: done already
    outcome = None if cancelled else _score(forge, spec, chunk, raw)
    if state.record(spec, chunk, outcome) and spec.output is not None:
        write_manifest(spec.output, CeleryRun(spec, state).manifest())
    return 0 if outcome is None else len(outcome.row)


def _abandon(state: RedisState | DirState, spec: JobSpec, sent: int) -> None:
    """A submit that failed after ``sent`` tasks: with none sent, nothing of the job stays (its state deleted); else
    it is cancelled, so the tasks sent skip their chunks, and its state expires with the job's TTL."""
    try:
        if sent:
            state.cancel()
        else:
            state.delete(spec.chunks)
    except Exception:  # noqa: BLE001 - Redis gone too: the keys expire by their TTL; the submit's own error stands
        log.warning("score job %s: its state could not be cleared after a failed submit", spec.id)


def _put_chunks(state: RedisState | DirState, source: Source, chunks: tuple[Chunk, ...]) -> None:
    """Store ``chunks``' rows in Redis (npy or Arrow IPC, ``score_sources.encode``), unless read by path."""
    if source.kind == "parquet":
        return
    payloads = {}
    for chunk in chunks:
        kind, payload = encode(source.take(chunk))
        payloads[chunk.index] = kind.encode() + b"\n" + payload
    try:
        state.put_chunks(payloads)
    except Exception as err:  # redis-py's errors
        raise ServiceUnavailableError(f"the job's rows could not be stored ({mask_url(first_line(err))})") from None


def _score(forge: Any, spec: JobSpec, chunk: Chunk, raw: bytes | None) -> ChunkOutcome:
    """``score_chunk`` on the chunk's rows; a chunk that cannot be read or written fails alone (its error says why)."""
    import redis

    try:
        return score_chunk(forge, spec.pin, chunk, _read(chunk, raw), spec.output)
    except redis.RedisError:
        raise  # the task retries
    except Exception as err:  # unreadable rows, an output directory this worker cannot write...
        status = err.status if isinstance(err, ModelForgeError) else 500
        message = first_line(err) if isinstance(err, ModelForgeError) else f"{type(err).__name__}: {first_line(err)}"
        error = ChunkError(chunk.index, chunk.start, chunk.stop, status, f"chunk {chunk.index} failed: {message}",
                           chunk.rows)
        return ChunkOutcome(chunk.index, np.empty(0, np.int64), None, error=error)


def _read(chunk: Chunk, raw: bytes | None) -> Any:
    if chunk.file is not None:
        if not os.path.exists(chunk.file):
            raise ModelForgeError(f"this worker does not see the Parquet file {os.path.basename(chunk.file)!r}")
        return read_parquet_rows(chunk.file, chunk.offset, chunk.rows)
    if raw is None:
        raise ModelForgeError(f"chunk {chunk.index}'s rows are no longer in Redis (expired after {SCORE_TTL} s)")
    kind, _, _ = raw[:16].partition(b"\n")
    return decode(kind.decode(), memoryview(raw)[len(kind) + 1:])  # a view: the chunk's bytes are not copied

