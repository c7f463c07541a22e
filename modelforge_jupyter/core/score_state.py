"""Where a Celery scoring job's state lives, shared by the submitter, the workers and any process that attaches:
Redis (``RedisState``), or, with no Redis, the job's output directory (``DirState``) when its rows are Parquet files
and its outputs go to a directory, both where every process sees them.

Redis keys, all under ``{CACHE_KEY_PREFIX}:score:{job id}:`` and expiring ``SCORE_TTL`` s after the job's last
change (or deleted by ``ScoreJob.forget``): ``spec`` (the JobSpec), ``chunk:{i}`` (input bytes, deleted once
scored), ``result:{i}`` (packed outputs and row numbers), ``parts`` (hash: chunk -> ``{start, rows, file, bad}`` once
finished, ``bad`` its rows not scored), ``errors`` (hash: chunk -> ``ChunkError``), ``finished`` and ``skipped``
(sets of chunks), ``cancel`` (a flag), ``first_at`` and ``finished_at`` (Unix s).

Directory: ``{output}/.job-{id}/``: ``spec.json``, ``part-{i}.json`` per finished chunk (``{start, rows, file,
error}``, written aside then renamed), ``skip-{i}`` per cancelled chunk, ``cancel``; times are the files' mtimes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from .outputs import pack, unpack
from .score_chunks import ChunkError, ChunkOutcome, JobSpec
from .score_sources import Chunk

SCORE_TTL = 24 * 3600  # seconds a job's Redis keys live after its last change
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


def open_state(where: dict, redis_url: str) -> RedisState | DirState:
    """The state a task's ``where`` names: ``{"redis": key prefix}`` or ``{"dir": output directory}``."""
    if "dir" in where:
        return DirState(where["dir"], where["job"])
    return RedisState(redis_client(redis_url), where["redis"], where["job"])


class RedisState:
    """A job's state in Redis (module docstring)."""

    def __init__(self, client: Any, prefix: str, job_id: str) -> None:
        self.client, self.base, self.where = client, f"{prefix}:score:{job_id}:", {"redis": prefix, "job": job_id}

    def key(self, name: str) -> str:
        """The full key of ``name`` (``spec``, ``chunk:3``...)."""
        return self.base + name

    def create(self, spec: JobSpec) -> None:
        """Store the spec. Raises redis-py's errors."""
        self.client.set(self.key("spec"), orjson.dumps(spec.to_json()), ex=SCORE_TTL)

    def put_chunks(self, chunks: dict[int, bytes]) -> None:
        """Store chunks' input bytes (one pipeline). Raises redis-py's errors."""
        pipe = self.client.pipeline(transaction=False)
        for index, payload in chunks.items():
            pipe.set(self.key(f"chunk:{index}"), payload, ex=SCORE_TTL)
        pipe.execute()

    def begin(self, index: int) -> tuple[bool, bool, bytes | None]:
        """What a task needs before scoring chunk ``index``, in one round trip: whether it is finished already (a
        redelivered task), whether the job was cancelled, and its input bytes (None: expired, or a Parquet chunk)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.sismember(self.key("finished"), str(index)).exists(self.key("cancel")).get(self.key(f"chunk:{index}"))
        finished, cancelled, raw = pipe.execute()
        return bool(finished), bool(cancelled), raw

    def delete(self, chunks: int) -> int:
        """Delete every key of the job (``forget``); returns how many there were."""
        names = ["spec", "parts", "errors", "finished", "skipped", "cancel", "first_at", "finished_at"]
        keys = [self.key(n) for n in names] + [self.key(f"{kind}:{i}") for i in range(chunks) for kind in
                                               ("chunk", "result")]
        return sum(self.client.unlink(*keys[at:at + 1000]) for at in range(0, len(keys), 1000))

    def spec(self) -> JobSpec | None:
        """The job's spec, None when unknown or expired."""
        raw = self.client.get(self.key("spec"))
        return None if raw is None else JobSpec.from_json(orjson.loads(raw))

    def cancel(self) -> None:
        """Flag the job cancelled."""
        self.client.set(self.key("cancel"), 1, ex=SCORE_TTL)

    def record(self, spec: JobSpec, chunk: Chunk, outcome: ChunkOutcome | None) -> bool:
        """Store a finished chunk (None: skipped, the job cancelled); True when it was the job's last."""
        pipe = self.client.pipeline()
        i = str(chunk.index)
        if outcome is None:
            pipe.sadd(self.key("skipped"), i)
        else:
            if outcome.outputs is not None:
                pipe.set(self.key(f"result:{i}"), pack({ROW: outcome.row, **outcome.outputs}), ex=SCORE_TTL)
            part = {"start": chunk.start, "rows": len(outcome.row), "file": outcome.file,
                    "bad": 0 if outcome.error is None else outcome.error.bad_rows}
            pipe.hset(self.key("parts"), i, orjson.dumps(part))
            if outcome.error is not None:
                pipe.hset(self.key("errors"), i, orjson.dumps(outcome.error.to_json()))
            pipe.set(self.key("first_at"), time.time(), nx=True)
        pipe.sadd(self.key("finished"), i)
        pipe.delete(self.key(f"chunk:{i}"))
        pipe.scard(self.key("finished"))
        at = len(pipe) - 1
        for name in ("spec", "parts", "errors", "finished", "skipped", "cancel", "first_at"):
            pipe.expire(self.key(name), SCORE_TTL)
        if pipe.execute()[at] < spec.chunks:
            return False
        self.client.set(self.key("finished_at"), time.time(), nx=True, ex=SCORE_TTL)
        return True

    def counts(self) -> dict:
        """``{rows_done, chunks_done, chunks_failed, chunks_cancelled, first_at, finished_at, bad_rows}`` in one
        round trip."""
        pipe = self.client.pipeline()
        pipe.hvals(self.key("parts")).hlen(self.key("errors")).scard(self.key("skipped"))
        pipe.get(self.key("first_at")).get(self.key("finished_at"))
        parts, failed, skipped, first, done_at = pipe.execute()
        parts = [orjson.loads(p) for p in parts]
        return {"rows_done": sum(p["rows"] for p in parts), "bad_rows": sum(p.get("bad", 0) for p in parts),
                "chunks_done": len(parts) - failed,
                "chunks_failed": failed, "chunks_cancelled": skipped,
                "first_at": None if first is None else float(first),
                "finished_at": None if done_at is None else float(done_at)}

    def errors(self) -> list[ChunkError]:
        """The chunks' errors."""
        return [ChunkError.from_json(orjson.loads(v)) for v in self.client.hvals(self.key("errors"))]

    def parts(self) -> dict[int, dict]:
        """``{chunk: {start, rows, file}}`` of the finished chunks."""
        parts = {int(k): orjson.loads(v) for k, v in self.client.hgetall(self.key("parts")).items()}
        return {i: {k: p[k] for k in ("start", "rows", "file")} for i, p in parts.items()}

    def skipped(self) -> int:
        """How many chunks were skipped (the job cancelled)."""
        return self.client.scard(self.key("skipped"))

    def results(self, indexes: list[int]) -> list[ChunkOutcome]:
        """The outputs of chunks ``indexes`` read back, 64 a round trip; chunks with none left out."""
        outcomes = []
        for at in range(0, len(indexes), 64):
            batch = indexes[at:at + 64]
            for index, value in zip(batch, self.client.mget([self.key(f"result:{i}") for i in batch])):
                outputs = unpack(value)
                if outputs is not None:  # None: a chunk with no row scored, or written to a file
                    outcomes.append(ChunkOutcome(index, outputs.pop(ROW), outputs))
        return outcomes


class DirState:
    """A job's state as files beside its outputs (module docstring): no Redis, every process sees the directory."""

    def __init__(self, output: str, job_id: str) -> None:
        self.dir, self.where = Path(output) / f".job-{job_id}", {"dir": output, "job": job_id}

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.dir / name)

    def create(self, spec: JobSpec) -> None:
        """Write the spec."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write("spec.json", orjson.dumps(spec.to_json()))

    def put_chunks(self, chunks: dict[int, bytes]) -> None:
        """Refuse: in a directory, chunks are Parquet files read by path (``CeleryRun.check``)."""
        raise ValueError("a job without Redis reads its chunks from Parquet files")

    def begin(self, index: int) -> tuple[bool, bool, bytes | None]:
        """As ``RedisState.begin`` (chunks are read by path: no bytes)."""
        return self.finished(index), self.cancelled(), None

    def delete(self, chunks: int) -> int:
        """Delete the job's state directory (the Parquet parts and the manifest stay); returns the files removed."""
        import shutil

        count = sum(1 for _ in self.dir.iterdir()) if self.dir.is_dir() else 0
        shutil.rmtree(self.dir, ignore_errors=True)
        return count

    def spec(self) -> JobSpec | None:
        """The job's spec, None when the directory holds none."""
        path = self.dir / "spec.json"
        return JobSpec.from_json(orjson.loads(path.read_bytes())) if path.exists() else None

    def finished(self, index: int) -> bool:
        """Whether chunk ``index`` is recorded already."""
        return (self.dir / f"part-{index}.json").exists() or (self.dir / f"skip-{index}").exists()

    def cancel(self) -> None:
        """Flag the job cancelled."""
        self._write("cancel", b"")

    def cancelled(self) -> bool:
        """Whether the job was cancelled."""
        return (self.dir / "cancel").exists()

    def record(self, spec: JobSpec, chunk: Chunk, outcome: ChunkOutcome | None) -> bool:
        """Write a finished chunk's file; True when every chunk has one."""
        if outcome is None:
            self._write(f"skip-{chunk.index}", b"")
        else:
            part = {"start": chunk.start, "rows": len(outcome.row), "file": outcome.file,
                    "error": None if outcome.error is None else outcome.error.to_json()}
            self._write(f"part-{chunk.index}.json", orjson.dumps(part))
        return sum(1 for p in self.dir.iterdir() if p.name.startswith(("part-", "skip-"))) >= spec.chunks

    def _files(self) -> tuple[list[Path], list[Path]]:
        names = list(self.dir.iterdir())
        return ([p for p in names if p.name.startswith("part-")], [p for p in names if p.name.startswith("skip-")])

    def counts(self) -> dict:
        """As ``RedisState.counts``, read from the files (times: their mtimes)."""
        parts, skipped = self._files()
        records = [orjson.loads(p.read_bytes()) for p in parts]
        failed = sum(1 for r in records if r["error"] is not None)
        times = [p.stat().st_mtime for p in parts + skipped]
        spec = self.spec()
        over = spec is not None and len(times) >= spec.chunks
        return {"rows_done": sum(r["rows"] for r in records), "chunks_done": len(records) - failed,
                "bad_rows": sum(r["error"]["bad_rows"] for r in records if r["error"] is not None),
                "chunks_failed": failed, "chunks_cancelled": len(skipped),
                "first_at": min((p.stat().st_mtime for p in parts), default=None),
                "finished_at": max(times) if over else None}

    def errors(self) -> list[ChunkError]:
        """The chunks' errors."""
        records = [orjson.loads(p.read_bytes()) for p in self._files()[0]]
        return [ChunkError.from_json(r["error"]) for r in records if r["error"] is not None]

    def parts(self) -> dict[int, dict]:
        """``{chunk: {start, rows, file}}`` of the finished chunks."""
        out = {}
        for path in self._files()[0]:
            record = orjson.loads(path.read_bytes())
            out[int(path.stem.removeprefix("part-"))] = {k: record[k] for k in ("start", "rows", "file")}
        return out

    def skipped(self) -> int:
        """How many chunks were skipped."""
        return len(self._files()[1])

    def results(self, indexes: list[int]) -> list[ChunkOutcome]:
        """None to read: outputs are in the directory's Parquet files."""
        return []
