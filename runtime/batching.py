"""Dynamic batching per model: one worker thread, dispatch at once when idle, merge when busy.

Requests append to a queue on the event loop. The model's worker thread takes
whatever is queued (up to `max_batch_size` rows) the moment it is free, so a lone
request never waits for a timer, and what queued while a batch ran is merged into
the next one. Only a batch that is already at least half full waits - up to
`max_queue_delay_ms` from its oldest request's arrival - to be topped up: waiting
to fill a small batch costs every request in it latency and, when the HTTP side is
the bottleneck, throughput too (measured: a fixed wait halved the MLP's req/s at
8 connections). Results go back with one loop wake-up per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from modelcontract import ModelSpec
from runtime.backends import Backend, Tensors
from runtime.errors import UnavailableError

log = logging.getLogger("runtime.batching")


@dataclass(slots=True)
class BatchStats:
    """What one dispatched batch did, for metrics."""

    rows: int
    requests: int
    queue_s: list[float]
    infer_s: float


@dataclass(slots=True)
class _Pending:
    inputs: Tensors
    rows: int
    tail: tuple[tuple[int, ...], ...]  # non-batch dims: only equal tails merge
    future: asyncio.Future[Tensors]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue and worker thread for one model."""

    def __init__(
        self, spec: ModelSpec, backend: Backend, loop: asyncio.AbstractEventLoop,
        max_queue: int, on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.spec = spec
        self._backend = backend
        self._loop = loop
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._max_rows = spec.max_batch_size if spec.batched else 0
        self._delay_s = spec.max_queue_delay_ms / 1000.0
        self._names = [t.name for t in spec.inputs]
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread = threading.Thread(
            target=self._work, name=f"model-{spec.name}-{spec.version}", daemon=True
        )
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting now."""
        return len(self._queue)

    def submit(self, inputs: Tensors) -> asyncio.Future[Tensors]:
        """Queue one request (call on the event loop); the future holds its outputs.

        Raises:
            UnavailableError: the queue is full or the batcher is stopping.
        """
        if self._stopping:
            raise UnavailableError(f"model {self.spec.name} is shutting down; retry elsewhere")
        if len(self._queue) >= self._max_queue:
            raise UnavailableError(
                f"model {self.spec.name} has {len(self._queue)} requests queued; retry later"
            )
        first = inputs[self._names[0]]
        rows = int(first.shape[0]) if self._max_rows else 0
        tail = tuple(inputs[n].shape[1:] for n in self._names) if self._max_rows else ()
        p = _Pending(inputs, rows, tail, self._loop.create_future())
        with self._cond:
            self._queue.append(p)
            self._cond.notify()
        return p.future

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker after the batch it is running."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self, batch: list[_Pending], rows: int) -> int:
        # Called with the lock held: move compatible requests while they fit.
        q = self._queue
        while q and (not batch or (
            self._max_rows and rows + q[0].rows <= self._max_rows and q[0].tail == batch[0].tail
        )):
            p = q.popleft()
            batch.append(p)
            rows += p.rows
        return rows

    def _next_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            batch: list[_Pending] = []
            rows = self._take(batch, 0)
            if self._delay_s > 0 and len(batch) > 1 and 2 * rows >= self._max_rows:
                deadline = batch[0].enqueued + self._delay_s
                while rows < self._max_rows:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    if not self._queue:
                        self._cond.wait(left)
                        if self._stopping:
                            break
                    before = len(batch)
                    rows = self._take(batch, rows)
                    if len(batch) == before and self._queue:
                        break  # the head does not fit or merge: dispatch what we have
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            start = time.perf_counter()
            try:
                if len(batch) == 1:
                    results: list[Tensors] | BaseException = [self._backend.run(batch[0].inputs)]
                else:
                    merged = {
                        n: np.concatenate([p.inputs[n] for p in batch]) for n in self._names
                    }
                    out = self._backend.run(merged)
                    results, offset = [], 0
                    for p in batch:
                        results.append({k: v[offset:offset + p.rows] for k, v in out.items()})
                        offset += p.rows
            except Exception as e:  # the model failed: every request of the batch gets it
                log.error("model %s failed a batch of %d: %s", self.spec.name, len(batch), e)
                results = e
            end = time.perf_counter()
            stats = BatchStats(
                rows=sum(p.rows for p in batch) or len(batch), requests=len(batch),
                queue_s=[start - p.enqueued for p in batch], infer_s=end - start,
            )
            try:
                self._loop.call_soon_threadsafe(self._deliver, batch, results, stats)
            except RuntimeError:  # the loop is closed: the server is gone
                break
        with self._cond:
            pending, self._queue = list(self._queue), deque()
        if pending:
            err = UnavailableError(f"model {self.spec.name} is shutting down; retry elsewhere")
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver, pending, err, None)

    def _deliver(
        self, batch: list[_Pending], results: list[Tensors] | BaseException,
        stats: BatchStats | None,
    ) -> None:
        for i, p in enumerate(batch):
            if p.future.done():
                continue
            if isinstance(results, BaseException):
                p.future.set_exception(results)
            else:
                p.future.set_result(results[i])
        if stats is not None and self._on_batch is not None:
            self._on_batch(stats)
