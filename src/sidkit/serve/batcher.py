"""Micro-batching: concurrent requests gathered into one call of a batched function.

:class:`MicroBatcher` lives on the server's event loop.  ``await submit(x)`` puts ``x``
in a bounded queue and waits for its result.  One collector task takes the first waiting
request, then waits until ``max_batch`` requests are queued or ``max_wait_ms`` have passed
since that first one arrived, and hands the batch (in arrival order) to ``fn`` in a single
worker thread, so the event loop keeps accepting and answering requests (health, metrics,
validation errors) while the model runs.  Requests that arrive while a batch runs wait in
the queue and form the next batch as soon as the worker is free, so under load batches
fill up without any waiting at all.

``fn(items) -> results`` must return one result per item (or raise: every request of
the batch then gets the exception).  A full queue raises :class:`QueueFull` at once (the
server answers 503 with ``Retry-After``) instead of letting latency grow without bound.
``close()`` finishes every queued request before it returns (graceful shutdown);
``drain()`` makes batches start without waiting for company (the server is shutting
down: no more is coming) and ``reject_waiting(msg)`` answers the requests still queued,
and every later one, with :class:`QueueFull` (the shutdown deadline: they get 503).
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from ..errors import ConfigError


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` requests already."""


class MicroBatcher:
    """Gather concurrent ``submit`` calls into batches for ``fn`` (see the module docstring).

    Parameters: ``max_batch`` (64 requests per call), ``max_wait_ms`` (5: how long the
    first request of a batch waits for company), ``max_queue`` (256 waiting requests,
    not counting the running batch), ``on_batch(size, seconds)``: called on the event
    loop after every batch (metrics).
    """

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int = 64,
                 max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        for name, v, lo in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}", f"use e.g. {name}=64")
        if not max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}", "use e.g. max_wait_ms=5")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: collections.deque = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._no_wait = False
        self.n_batches = 0

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return len(self._queue)

    def start(self) -> None:
        """Start the collector on the running event loop."""
        if self._task is None:
            self._arrived = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidkit-batch")
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, item: Any) -> Any:
        """The result of ``item``, computed in a batch with other concurrent items."""
        if self._task is None or self._closing:
            raise QueueFull("the server is shutting down")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"the request queue is full ({self.max_queue} requests waiting)")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((time.perf_counter(), item, fut))
        self._arrived.set()
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._queue[0][0]
            while len(self._queue) < self.max_batch and not (self._closing or self._no_wait):
                left = first + self.max_wait - time.perf_counter()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            live = [b for b in batch if not b[2].done()]      # a cancelled request (client gone) is skipped
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [b[1] for b in live])
                if len(results) != len(live):
                    raise RuntimeError(f"the batched function returned {len(results)} results for "
                                       f"{len(live)} requests")
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for _, _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
            else:
                for (_, _, fut), r in zip(live, results):
                    if not fut.done():
                        fut.set_result(r)
            self.n_batches += 1
            if self.on_batch is not None:
                self.on_batch(len(live), time.perf_counter() - t0)

    def drain(self) -> None:
        """Start every batch at once from now on, without waiting for company (on the
        event loop; the server is shutting down)."""
        self._no_wait = True
        if self._arrived is not None:
            self._arrived.set()

    def reject_waiting(self, message: str) -> int:
        """Answer every request still queued (not yet in a running batch) with
        ``QueueFull(message)``, and refuse later ones; the number of requests so answered."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        n = 0
        while self._queue:
            _, _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(QueueFull(message))
                n += 1
        return n

    async def close(self) -> None:
        """Finish every queued request, then stop the collector and the worker thread."""
        if self._task is None:
            return
        self._closing = True
        self._arrived.set()
        try:
            await self._task
        finally:
            self._executor.shutdown(wait=True)
            self._task = None
