"""Dynamic batching, as Triton's dynamic batcher: concurrent requests for one model version run as one batch.

Requests for the same sha256 whose inputs agree on every dimension but the first (and on dtype) are concatenated
along axis 0, run once, and each caller gets exactly its own rows back, in order. No background thread: the first
request to arrive leads. At most ``instances`` batches of one model run at once (Triton's ``instance_group``
count): while they are all busy, the leader waits and the requests arriving meanwhile queue up to form its batch.
When an instance is free at once, the leader waits up to ``max_queue_delay_us`` (or until ``max_batch_size`` rows
are queued), but only while other requests of the model are in flight — alone, it runs at once. It then takes the
compatible requests, passes leadership to the oldest request left over, runs its batch and hands each its rows.

Only models with one input, of rank >= 1 with a dynamic leading dimension, are batched (with several inputs,
which rows of one belong with which of another is the model's business: Triton makes the user declare it), and
only if every tensor output declares a dynamic leading dimension too (``batchable``); a merged run whose outputs do
not have the batch's row count is run again request by request, as is one that fails, so a bad request fails
alone. Batching also assumes each output row
depends only on the same input row: a model that mixes rows (a mean over the batch, say) answers differently when
batched, which is why it is opt-in per model (``model_batching``), as in Triton.
A batch's run is bounded like any run (``inference_timeout``): only requests with the same timeout are merged, the
batch's run gets that limit from its start, and when it is stopped every request of the batch gets the
``InferenceTimeoutError`` (it is not run again alone). A request cancelled (``Cancellation``) before its batch
runs is left out of it; one cancelled while its batch of several runs is not stopped (the others need the run),
while a batch of one stops as a plain run does.
A caller interrupted or failing while it leads (a notebook's KeyboardInterrupt, say) hands leadership on, so the
queue never stalls. Off by default (``dynamic_batching``): on tiny models, where one run takes a few µs, the
hand-offs between threads cost more than batching saves (see the README's performance section).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .deadline import Cancellation
from .engine import Engine
from .errors import InferenceTimeoutError
from .forksafe import at_fork_in_child
from .metrics import last_run, served_by
from .records import TensorSpec
from .outputs import MapRows


def batchable(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
    """True for a model with one input, of rank >= 1 with a dynamic (None) leading dimension, whose tensor outputs
    all have a dynamic leading dimension too (an output declared ``[3]``, a class list, say, or ``Shape(x)``'s
    ``[2]``, is not the batch's and cannot be split); sequence outputs (ZipMap: one map per row) are split by length.
    """
    def splittable(spec: TensorSpec) -> bool:
        return spec.dtype.startswith("seq(") or (bool(spec.shape) and spec.shape[0] is None)

    return (len(inputs) == 1 and bool(inputs[0].shape) and inputs[0].shape[0] is None
            and all(splittable(o) for o in outputs))


class _Request:
    __slots__ = ("feed", "rows", "signature", "timeout", "cancel", "done", "lead", "result", "error", "abandoned",
                 "run")

    def __init__(self, feed: dict[str, np.ndarray], timeout: float, cancel: Cancellation | None) -> None:
        self.feed = feed
        self.rows = next(iter(feed.values())).shape[0]
        self.signature = (timeout, *((k, a.dtype.str, a.shape[1:]) for k, a in sorted(feed.items())))
        self.timeout = timeout
        self.cancel = cancel
        self.done = threading.Event()
        self.lead = False
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.abandoned = False  # its caller left with an exception: nobody waits for it
        self.run: tuple[int, int] | None = None  # the session run that answered it (``metrics.last_run``)


class _Queue:
    def __init__(self) -> None:
        # Critical sections hold ``lock`` itself: its __enter__/__exit__ are C, so an interrupt cannot land between
        # taking it and the with-block (Condition's own __exit__ is Python: one landing there would keep it held).
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.pending: list[_Request] = []
        self.leader: _Request | None = None  # the request that forms the next batch
        self.active = 0  # requests inside run(): queued or executing
        self.running = 0  # batches executing
        self.last_run_s = 0.0  # how long the last batch took to run (s)


class DynamicBatcher:
    """Coalesce concurrent runs of one model into batches of at most ``max_batch_size`` rows."""

    def __init__(self, engine: Engine, max_batch_size: int = 64, max_queue_delay_us: int = 500,
                 instances: int = 1) -> None:
        if max_batch_size < 1 or max_queue_delay_us < 0 or instances < 1:
            raise ValueError("max_batch_size and instances must be >= 1, max_queue_delay_us >= 0")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self.instances = instances
        self._queues: dict[str, _Queue] = {}
        self._lock = threading.Lock()
        self.batches = 0  # session runs made, for statistics and tests
        self.requests = 0
        self.waits = 0  # times a leader waited for more requests
        self.peak_running = 0  # most batches of one model seen running at once (<= instances)
        at_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """In a forked child: new locks and empty queues. The requests queued or running at the fork belong to the
        parent's other threads, which the child does not have: a leader there would never run nor hand on."""
        self._lock = threading.Lock()
        self._queues = {}

    def run(
        self, sha256: str, load_bytes: Callable[[], bytes], feed: dict[str, np.ndarray], model_name: str = "",
        timeout: float = 0.0, cancel: Cancellation | None = None,
    ) -> dict[str, Any]:
        """Like ``Engine.predict`` (the outputs as NumPy, ``outputs``), but possibly merged with concurrent requests
        of the same ``timeout`` (s). Raises what ``Engine.predict`` raises."""
        with self._lock:
            queue = self._queues.setdefault(sha256, _Queue())
        request = _Request(feed, timeout, cancel)
        with queue.lock:
            queue.pending.append(request)
            queue.active += 1
            self.requests += 1
            if queue.leader is not None:
                if sum(r.rows for r in queue.pending) >= self.max_batch_size:
                    queue.cond.notify_all()
            else:
                queue.leader = request
                request.lead = True
        try:
            if not request.lead:
                request.done.wait()
            if request.lead and request.result is None and request.error is None:
                self._lead(queue, request, sha256, load_bytes, model_name)
        except BaseException:
            self._abandon(queue, request)
            raise
        finally:
            with queue.lock:
                queue.active -= 1
        if request.error is not None:
            raise request.error
        served_by(request.run)  # counted with the run that answered it
        return request.result  # type: ignore[return-value]

    def _lead(self, queue: _Queue, request: _Request, sha256: str, load_bytes: Callable[[], bytes],
              model_name: str) -> None:
        """Form ``request``'s batch, hand the lead on, run the batch and wake its followers.

        Interrupt safety (a notebook's KeyboardInterrupt arrives in the main thread at a function call or a loop's
        back edge): until the batch is taken nothing is changed (``run`` then calls ``_abandon``); taking it is one
        statement with no call after it before ``running`` is counted, so ``batch`` being set tells ``_recover``
        exactly what to undo.
        """
        batch: list[_Request] | None = None  # taken and counted in ``running``
        answered: list[_Request] | None = None  # run and uncounted; followers to wake
        try:
            with queue.lock:
                busy = queue.running >= self.instances
                while queue.running >= self.instances:  # the requests arriving meanwhile join this batch
                    queue.cond.wait()
                self._gather(queue, busy)
                batch, queue.pending = self._split(queue.pending, request)
                queue.running += 1
                self.peak_running = max(self.peak_running, queue.running)
                successor = self._hand_over(queue)
            if successor is not None:
                successor.done.set()  # it wakes as the next leader (its result is still None)
            started = time.perf_counter()
            try:
                self._run_batch(batch, sha256, load_bytes, model_name)
            except Exception as err:  # not an inference error (those are per request): every caller learns of it
                for r in batch:
                    if r.result is None and r.error is None:
                        r.error = err
            queue.last_run_s = time.perf_counter() - started
            with queue.lock:
                queue.running -= 1
                queue.cond.notify_all()
                answered, batch = batch, None
            for r in answered:
                if r is not request:
                    r.done.set()
        except BaseException:  # this caller is interrupted: its followers wait for another leader
            self._recover(queue, request, batch, answered)
            raise

    @staticmethod
    def _hand_over(queue: _Queue) -> _Request | None:
        """Make the oldest pending request the leader (call with ``queue.lock`` held, then set its ``done``)."""
        successor = queue.leader = queue.pending[0] if queue.pending else None
        if successor is not None:
            successor.lead = True
        return successor

    def _abandon(self, queue: _Queue, request: _Request) -> None:
        """``request``'s caller is leaving with an exception before its batch was taken: take its rows out of the
        queue and, if it was to lead the next batch, hand that on."""
        with queue.lock:
            request.abandoned = True
            if request in queue.pending:
                queue.pending.remove(request)
            successor = self._hand_over(queue) if queue.leader is request else None
        if successor is not None:
            successor.done.set()

    def _recover(self, queue: _Queue, request: _Request, batch: list[_Request] | None,
                 answered: list[_Request] | None) -> None:
        """The leading caller is interrupted: wake the followers it answered; or uncount its batch, put the
        followers it did not answer back at the front of the queue and make sure someone leads them; or, before it
        took a batch, leave the queue (``_abandon``)."""
        if answered is not None:
            for r in answered:
                if r is not request:
                    r.done.set()
            return
        if batch is None:
            self._abandon(queue, request)
            return
        with queue.lock:
            queue.running -= 1
            queue.pending[:0] = [r for r in batch if r is not request and not r.abandoned and r.result is None
                                 and r.error is None]
            successor = None
            if queue.leader is request or (queue.leader is None and queue.pending):
                successor = self._hand_over(queue)
            queue.cond.notify_all()
        if successor is not None:
            successor.done.set()
        for r in batch:
            if r is not request and (r.result is not None or r.error is not None):
                r.done.set()

    def _gather(self, queue: _Queue, busy: bool) -> None:
        """Wait up to ``max_queue_delay_us`` for ``max_batch_size`` rows. After waiting for a ``busy`` instance, the
        model is under load: wait for the callers of the batch that just ran, who are sending their next requests
        (over HTTP they are outside ``run`` for a round trip), but no longer than that batch took to run (waiting
        longer than a run costs more than it saves: on a 5 µs model, 500 µs of waiting cut throughput 3x). Else
        wait only while other requests are inside ``run``; alone, return at once: a single client pays no delay."""
        delay = self.max_queue_delay_us / 1e6
        deadline = time.perf_counter() + (min(delay, queue.last_run_s) if busy else delay)
        while (busy or queue.active > len(queue.pending)) and sum(r.rows for r in queue.pending) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self.waits += 1
            queue.cond.wait(remaining)

    def _split(self, pending: list[_Request], leader: _Request) -> tuple[list[_Request], list[_Request]]:
        """(the batch: ``leader`` then the pending requests of its signature, up to ``max_batch_size`` rows, in
        order; the requests left pending). Changes nothing."""
        batch, rest, rows = [leader], [], leader.rows
        for r in pending:
            if r is leader:
                continue
            if r.signature == leader.signature and rows + r.rows <= self.max_batch_size:
                batch.append(r)
                rows += r.rows
            else:
                rest.append(r)
        return batch, rest

    def _run_batch(self, batch: list[_Request], sha256: str, load_bytes: Callable, model_name: str) -> None:
        cancelled = [r for r in batch if r.cancel is not None and r.cancel.cancelled]
        for r in cancelled:  # its caller left before the batch ran: it must not run
            r.error = r.cancel.error(model_name)  # type: ignore[union-attr]
        if cancelled:
            batch = [r for r in batch if r not in cancelled]
            if not batch:
                return
        self.batches += 1
        if len(batch) == 1:
            self._run_alone(batch[0], sha256, load_bytes, model_name)
            return
        feed = {name: np.concatenate([r.feed[name] for r in batch]) for name in batch[0].feed}
        total = sum(r.rows for r in batch)
        try:
            outputs = self.engine.predict(sha256, load_bytes, feed, model_name, batch[0].timeout)
        except InferenceTimeoutError as err:  # running them one by one would take as long again, each
            for r in batch:
                r.error = err
            return
        except Exception:
            for r in batch:  # one bad request must fail alone
                self._run_alone(r, sha256, load_bytes, model_name)
            return
        if not all(_rows(v) == total for v in outputs.values()):  # an output without a batch dimension cannot be split
            for r in batch:
                self._run_alone(r, sha256, load_bytes, model_name)
            return
        start, run = 0, last_run()
        shared = (run[0], run[1], 0) if run is not None else None  # the run counts once: as the first request's
        for i, r in enumerate(batch):
            r.result, r.run = {n: v[start : start + r.rows] for n, v in outputs.items()}, shared if i else run
            start += r.rows

    def _run_alone(self, r: _Request, sha256: str, load_bytes: Callable, model_name: str) -> None:
        try:
            r.result = self.engine.predict(sha256, load_bytes, r.feed, model_name, r.timeout, r.cancel)
            r.run = last_run()
        except Exception as err:  # an interrupt of the leading caller is not this request's error
            r.error = err


def _rows(value: Any) -> int | None:
    if isinstance(value, np.ndarray):
        return value.shape[0] if value.ndim else None
    if isinstance(value, MapRows):
        return len(value)
    return None  # a sequence's length is not a batch
