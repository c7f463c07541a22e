"""Batch scoring on Celery workers: each chunk a ``modelforge_jupyter.tasks.score_chunk`` task, job state in Redis.

Tasks are JSON (the job's ``JobSpec``, the ``Chunk``, the key prefix), never pickled; acknowledged late and
idempotent (a chunk already finished is not scored again), so a task redelivered after its worker died, or retried
with backoff while Redis is away, costs at most one more run of its chunk. A worker reads a Parquet chunk by path
(the files must be where the workers see them: one machine, or a shared volume); any other chunk travels through
Redis, encoded by ``score_sources.encode`` (npy or Arrow IPC). Outputs come back through Redis (``outputs.pack``,
the row numbers beside them), or are written by the worker to ``output`` (a directory the workers share).

Keys, all under ``{CACHE_KEY_PREFIX}:score:{job id}:`` and expiring ``SCORE_TTL`` s after the job's last change:
``spec`` (the JobSpec), ``chunk:{i}`` (input bytes, deleted once scored), ``result:{i}`` (packed outputs),
``parts`` (hash: chunk -> ``{start, rows, file}`` once finished), ``errors`` (hash: chunk -> ``ChunkError``),
``finished`` and ``skipped`` (sets of chunks), ``cancel`` (a flag), ``first_at`` and ``finished_at`` (Unix s).
Any process with the same Redis and prefix attaches to the job by its id (``ModelForge.score_job``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import orjson

from .errors import ModelForgeError, ModelNotFoundError, ServiceUnavailableError, first_line
from .outputs import pack, unpack
from .score_chunks import ChunkError, ChunkOutcome, JobSpec, manifest_of, score_chunk, write_manifest
from .score_sources import Chunk, Source, decode, encode, read_parquet_rows
from .urls import mask_url

TASK_NAME = "modelforge_jupyter.tasks.score_chunk"
SCORE_TTL = 24 * 3600  # seconds a job's keys live after its last change
ROW = "\0row"  # the row numbers' name in a packed result (no ONNX output is named so)
_clients: dict[str, Any] = {}


def redis_client(url: str) -> Any:
    """This process's Redis client for job state (redis-py reconnects after a fork by itself): 10 s socket timeout,
    as a chunk's bytes are larger than a cache value."""
    client = _clients.get(url)
    if client is None:
        import redis

        client = _clients[url] = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    return client


class JobState:
    """The Redis keys of one job (module docstring)."""

    def __init__(self, client: Any, prefix: str, job_id: str) -> None:
        self.client, self.base = client, f"{prefix}:score:{job_id}:"

    def key(self, name: str) -> str:
        """The full key of ``name`` (``spec``, ``chunk:3``...)."""
        return self.base + name

    def touch(self, pipe: Any) -> None:
        """Push every key's expiry ``SCORE_TTL`` s out (on ``pipe``)."""
        for name in ("spec", "parts", "errors", "finished", "skipped", "cancel", "first_at", "finished_at"):
            pipe.expire(self.key(name), SCORE_TTL)

    def spec(self) -> JobSpec | None:
        """The job's spec, None when unknown or expired."""
        raw = self.client.get(self.key("spec"))
        return None if raw is None else JobSpec.from_json(orjson.loads(raw))

    def record(self, spec: JobSpec, chunk: Chunk, outcome: ChunkOutcome | None) -> bool:
        """Store a finished chunk (None: skipped, the job cancelled); True when it was the job's last."""
        pipe = self.client.pipeline()
        i = str(chunk.index)
        if outcome is None:
            pipe.sadd(self.key("skipped"), i)
        else:
            if outcome.outputs is not None:
                pipe.set(self.key(f"result:{i}"), pack({ROW: outcome.row, **outcome.outputs}), ex=SCORE_TTL)
            part = {"start": chunk.start, "rows": len(outcome.row), "file": outcome.file}
            pipe.hset(self.key("parts"), i, orjson.dumps(part))
            if outcome.error is not None:
                pipe.hset(self.key("errors"), i, orjson.dumps(outcome.error.to_json()))
            pipe.set(self.key("first_at"), time.time(), nx=True)
        pipe.sadd(self.key("finished"), i)
        pipe.delete(self.key(f"chunk:{i}"))
        pipe.scard(self.key("finished"))
        at = len(pipe) - 1
        self.touch(pipe)
        finished = pipe.execute()[at]
        if finished < spec.chunks:
            return False
        self.client.set(self.key("finished_at"), time.time(), nx=True, ex=SCORE_TTL)
        return True

    def counts(self) -> dict:
        """``{rows_done, chunks_done, chunks_failed, chunks_cancelled, first_at, finished_at}`` in one round trip."""
        pipe = self.client.pipeline()
        pipe.hvals(self.key("parts")).hlen(self.key("errors")).scard(self.key("skipped"))
        pipe.get(self.key("first_at")).get(self.key("finished_at"))
        parts, failed, skipped, first, done_at = pipe.execute()
        return {"rows_done": sum(orjson.loads(p)["rows"] for p in parts), "chunks_done": len(parts) - failed,
                "chunks_failed": failed, "chunks_cancelled": skipped,
                "first_at": None if first is None else float(first),
                "finished_at": None if done_at is None else float(done_at)}

    def errors(self) -> list[ChunkError]:
        """The chunks' errors."""
        return [ChunkError.from_json(orjson.loads(v)) for v in self.client.hvals(self.key("errors"))]

    def parts(self) -> dict[int, dict]:
        """``{chunk: {start, rows, file}}`` of the finished chunks."""
        return {int(k): orjson.loads(v) for k, v in self.client.hgetall(self.key("parts")).items()}


class CeleryRun:
    """A job on Celery workers, seen from any process: the ``ScoreJob``'s view of ``JobState``."""

    def __init__(self, spec: JobSpec, state: JobState) -> None:
        self.spec, self.state = spec, state

    @classmethod
    def submit(cls, forge: Any, spec: JobSpec, source: Source) -> CeleryRun:
        """Store the job and its chunks in Redis and send a task per chunk. Raises ``ModelForgeError`` (400) without
        Redis, ``ServiceUnavailableError`` (503) when Redis or the broker does not take them."""
        s = forge.settings
        if not s.redis_url:
            raise ModelForgeError(
                "scoring on Celery workers (CELERY_BROKER_URL is set) needs REDIS_URL: the job's state, its chunks "
                "and its results travel through Redis; set REDIS_URL, or unset CELERY_BROKER_URL to score in a "
                "local process pool")
        state = JobState(redis_client(s.redis_url), s.cache_key_prefix, spec.id)
        import redis

        try:
            pipe = state.client.pipeline(transaction=False)
            pipe.set(state.key("spec"), orjson.dumps(spec.to_json()), ex=SCORE_TTL)
            if source.kind != "parquet":
                for chunk in source.chunks:
                    kind, payload = encode(source.take(chunk))
                    pipe.set(state.key(f"chunk:{chunk.index}"), kind.encode() + b"\n" + payload, ex=SCORE_TTL)
            pipe.execute()
        except redis.RedisError as err:
            raise ServiceUnavailableError(f"Redis did not take the job's chunks ({mask_url(first_line(err))})") from None
        app = forge.invalidator.celery
        try:
            with app.producer_or_acquire() as producer:
                for chunk in source.chunks:
                    app.send_task(TASK_NAME, args=[spec.to_json(), chunk.to_json(), s.cache_key_prefix],
                                  queue=s.celery_queue, producer=producer, retry=False)
        except Exception as err:  # kombu OperationalError / OSError: the broker is unreachable or silent
            state.client.set(state.key("cancel"), 1, ex=SCORE_TTL)
            raise ServiceUnavailableError(
                f"the Celery broker did not take the job's tasks ({mask_url(first_line(err))})") from None
        return cls(spec, state)

    @classmethod
    def attach(cls, forge: Any, job_id: str) -> tuple[JobSpec, CeleryRun]:
        """The job ``job_id`` from Redis. Raises ``ModelNotFoundError`` (404) when it is unknown or expired."""
        s = forge.settings
        spec = None
        if s.redis_url:
            state = JobState(redis_client(s.redis_url), s.cache_key_prefix, job_id)
            spec = state.spec()
        if spec is None:
            raise ModelNotFoundError(f"no score job {job_id!r} (unknown here, or expired {SCORE_TTL} s after it ended)")
        return spec, cls(spec, state)

    def counts(self) -> dict:
        """As ``LocalRun.counts``."""
        return self.state.counts()

    def cancel(self) -> None:
        """Flag the job cancelled: each chunk not started yet is skipped by the worker that takes it."""
        self.state.client.set(self.state.key("cancel"), 1, ex=SCORE_TTL)

    def outcomes(self) -> list[ChunkOutcome]:
        """The finished chunks with their outputs read back from Redis, by index."""
        indexes = sorted(self.state.parts())
        outcomes = []
        for at in range(0, len(indexes), 64):  # 64 results a round trip: a few MB each at most
            batch = indexes[at:at + 64]
            for index, value in zip(batch, self.state.client.mget([self.state.key(f"result:{i}") for i in batch])):
                outputs = unpack(value)
                if outputs is not None:  # None: a chunk with no row scored, or written to a file
                    outcomes.append(ChunkOutcome(index, outputs.pop(ROW), outputs))
        return outcomes

    def errors(self) -> list[ChunkError]:
        """The chunks' errors."""
        return self.state.errors()

    def manifest(self) -> dict:
        """The output directory's manifest as it stands."""
        return manifest_of(self.spec, self.state.parts(), self.state.errors(),
                           cancelled=self.state.client.scard(self.state.key("skipped")))


def run_chunk(forge: Any, spec_json: dict, chunk_json: dict, prefix: str) -> int:
    """The ``score_chunk`` task's body, in a worker: score one chunk unless it is finished already or the job was
    cancelled, and record it. Returns the rows scored. Raises redis-py's errors (the task retries on them)."""
    spec, chunk = JobSpec.from_json(spec_json), Chunk(**chunk_json)
    state = JobState(redis_client(forge.settings.redis_url), prefix, spec.id)
    if state.client.sismember(state.key("finished"), str(chunk.index)):
        return 0  # a redelivered task: done already
    outcome = None if state.client.exists(state.key("cancel")) else _score(forge, state, spec, chunk)
    last = state.record(spec, chunk, outcome)
    if last and spec.output is not None:
        write_manifest(spec.output, CeleryRun(spec, state).manifest())
    return 0 if outcome is None else len(outcome.row)


def _score(forge: Any, state: JobState, spec: JobSpec, chunk: Chunk) -> ChunkOutcome:
    """``score_chunk`` on the chunk's rows; a chunk that cannot be read or written fails alone (its error says why)."""
    import redis

    try:
        return score_chunk(forge, spec.pin, chunk, _read(state, chunk), spec.output)
    except redis.RedisError:
        raise  # the task retries
    except Exception as err:  # unreadable rows, an output directory this worker cannot write...
        status = err.status if isinstance(err, ModelForgeError) else 500
        message = first_line(err) if isinstance(err, ModelForgeError) else f"{type(err).__name__}: {first_line(err)}"
        error = ChunkError(chunk.index, chunk.start, chunk.stop, status, f"chunk {chunk.index} failed: {message}",
                           chunk.rows)
        return ChunkOutcome(chunk.index, np.empty(0, np.int64), None, error=error)


def _read(state: JobState, chunk: Chunk) -> Any:
    if chunk.file is not None:
        if not os.path.exists(chunk.file):
            raise ModelForgeError(f"this worker does not see the Parquet file {os.path.basename(chunk.file)!r}")
        return read_parquet_rows(chunk.file, chunk.offset, chunk.rows)
    raw = state.client.get(state.key(f"chunk:{chunk.index}"))
    if raw is None:
        raise ModelForgeError(f"chunk {chunk.index}'s rows are no longer in Redis (expired after {SCORE_TTL} s)")
    kind, _, payload = raw.partition(b"\n")
    return decode(kind.decode(), payload)

