"""Dynamic batching: one `Batcher` per model, owning its queue.

Callers `await batcher.submit(array)`; that puts one item on the queue and awaits the item's future.
Only the batcher task takes items off the queue. It loops:

1. wait for a free model instance (`instances` sessions may run batches concurrently);
2. take the oldest item, then more items of the same shape key until `max_batch_size`, or until
   `max_delay_ms` after the *first item's arrival* has passed. When nothing is queued and no request
   is on its way (being decoded: `announce()`), it does not wait at all, so a lone client pays no delay;
3. run the batch in a worker thread (onnxruntime releases the GIL) and hand each caller its own row.
   With a `solo` runner (one session with the cores of all instances), a batch that is the only work
   (every instance free, nothing queued or on its way) may run there instead, holding every instance
   until it ends: a lone request gets all cores, while under load the instances share them. Which of
   the two serves a lone batch is measured, not assumed (`LoneBatchChoice`).

While an instance is busy, requests pile up in the queue; when it frees, they leave as one batch,
so batches grow with load without anyone waiting on a timer. Items of another shape key (the
native-size option) wait in `pending` for a batch of their own shape. The queue is bounded
(`max_queue`, 503); an item whose deadline passes while queued fails with 504 and is never run.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from enet_serve.service import timing
from enet_serve.service.errors import (DeadlineExceeded, InferenceFailed, PayloadTooLarge, QueueFull,
                                       ServiceUnavailable)

log = logging.getLogger("enet_serve.service.batching")

QUEUED, RUNNING, DROPPED = 0, 1, 2

# runner(arrays) -> outputs, each output with a leading batch axis of len(arrays)
Runner = Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]]


class _Item:
    __slots__ = ("array", "key", "future", "enqueued", "deadline", "state", "started", "inference_s", "request")

    def __init__(self, array, key, future, enqueued, deadline):
        self.array = array
        self.key = key
        self.future = future
        self.enqueued = enqueued
        self.deadline = deadline
        self.state = QUEUED
        self.started = enqueued  # when its batch was formed (for the caller's Server-Timing)
        self.inference_s = 0.0
        self.request: Sequence[_Item] = (self,)  # the items submitted together (the rows of one request)


class BatchObserver:
    """Hooks for metrics; the default does nothing."""

    def queue_depth(self, depth: int) -> None: ...
    def batch(self, size: int, inference_s: float, waits_s: Sequence[float], instance: str = "0") -> None: ...
    def expired(self) -> None: ...


class LoneBatchChoice:
    """Where a batch that is the only work runs: on the solo instance or on one instance, whichever
    took less time per image lately (moving averages over lone batches only).

    Usually the solo instance's threads make it the faster; but on a VM whose vCPUs are not always
    scheduled together, a multi-threaded session turns ~3x slower for minutes at a time while a
    single-threaded one does not (BENCHMARKS.md). Every `explore_every`-th lone batch goes the other
    way, so the choice follows the machine.
    """

    SOLO, INSTANCE = "solo", "instance"

    def __init__(self, explore_every: int = 16, alpha: float = 0.3):
        self.explore_every, self.alpha = explore_every, alpha
        self.seconds_per_image: dict[str, float | None] = {self.SOLO: None, self.INSTANCE: None}
        self.count = 0

    def pick(self) -> str:
        self.count += 1
        solo, instance = self.seconds_per_image[self.SOLO], self.seconds_per_image[self.INSTANCE]
        if solo is None:
            return self.SOLO
        if instance is None:
            return self.INSTANCE  # measured once early on, then only when exploring
        best, other = (self.SOLO, self.INSTANCE) if solo <= instance else (self.INSTANCE, self.SOLO)
        return other if self.count % self.explore_every == 0 else best

    def record(self, kind: str, seconds: float, images: int) -> None:
        per_image = seconds / max(1, images)
        prev = self.seconds_per_image[kind]
        self.seconds_per_image[kind] = per_image if prev is None else prev + self.alpha * (per_image - prev)


class Batcher:
    def __init__(self, name: str, runners: Sequence[Runner], *, solo: Runner | None = None, max_batch_size: int = 8,
                 max_delay_ms: float = 5.0, max_queue: int = 64, timeout_s: float = 30.0,
                 observer: BatchObserver | None = None):
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.name = name
        self.runners = list(runners)
        self.solo = solo
        self.lone_choice = LoneBatchChoice()
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.observer = observer or BatchObserver()
        self.incoming = 0  # requests announced (being read/decoded) but not submitted yet
        self._queue: asyncio.Queue[_Item] | None = None
        self._pending: collections.deque[_Item] = collections.deque()
        self._waiting = 0  # live items in _queue and _pending (see depth)
        self._free: asyncio.Queue[int] | None = None  # indices of the idle runners
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batcher task on the running loop."""
        self._queue = asyncio.Queue()
        self._waiting = 0
        self._free = asyncio.Queue()
        for i in range(len(self.runners)):
            self._free.put_nowait(i)
        self._executor = ThreadPoolExecutor(max_workers=len(self.runners), thread_name_prefix=f"infer-{self.name}")
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop taking work; fail what is still queued with 503, let running batches finish."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for item in self._drain():
            self._leave_queue(item, DROPPED)
            if not item.future.done():
                item.future.set_exception(ServiceUnavailable("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        """Inputs waiting for a batch: queued, not yet running, not expired or given up (those linger in
        the queue until the loop passes them, but hold no place in it)."""
        return self._waiting

    # -- callers -------------------------------------------------------------------------------------
    def announce(self) -> "_Announcement":
        """`with batcher.announce(): decode...; await batcher.submit(x)` tells the batcher a request is coming."""
        return _Announcement(self)

    async def submit(self, array: np.ndarray, *, key: Hashable = None, timeout_s: float | None = None) -> tuple:
        """Queue one input (HxWxC); returns its outputs (one row of each model output)."""
        (outputs,) = await self.submit_rows([array], key=key, timeout_s=timeout_s)
        return outputs

    async def submit_rows(self, arrays: Sequence[np.ndarray], *, key: Hashable = None,
                          timeout_s: float | None = None) -> list[tuple]:
        """Queue the rows of one request (a v2 batch) together: all of them or none, so a request the
        queue has no room for is refused before any row runs; when one row fails or the caller goes
        away, its rows still queued are dropped, never run. Returns each row's outputs."""
        if self._closed or self._queue is None or not self.running:
            raise ServiceUnavailable(f"model {self.name} is not serving")
        if len(arrays) > self.max_queue:
            # retrying cannot help: the request alone is larger than the queue
            raise PayloadTooLarge(f"model {self.name}: the request holds {len(arrays)} inputs; this server queues "
                                  f"at most {self.max_queue} (max_queue): split it")
        if self.depth + len(arrays) > self.max_queue:
            raise QueueFull(f"model {self.name}: {self.depth} requests queued (max_queue={self.max_queue}); retry later",
                            retry_after=1)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        items = [_Item(a, key if key is not None else a.shape, loop.create_future(), now, now + timeout) for a in arrays]
        for item in items:
            item.request = items
            self._queue.put_nowait(item)
        self._waiting += len(items)
        self.observer.queue_depth(self.depth)
        timer = loop.call_at(loop.time() + timeout, self._expire_all, items)
        try:
            rows = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            # a row failed, or the caller went away (client disconnected): never run what is still queued
            for item in items:
                self._leave_queue(item, DROPPED)
                item.future.cancel()  # no-op where answered; else nobody is left to read its result
            raise
        finally:
            timer.cancel()
        for item in items:
            timing.record_batch(item.started - item.enqueued, item.inference_s)
        return list(rows)

    def _leave_queue(self, item: _Item, state: int) -> None:
        """An item stops waiting: taken into a batch (RUNNING) or given up (DROPPED)."""
        if item.state == QUEUED:
            item.state = state
            self._waiting -= 1
            self.observer.queue_depth(self.depth)

    def _expire_all(self, items: Sequence[_Item]) -> None:
        for item in items:
            self._expire(item)

    def _expire(self, item: _Item) -> None:
        if item.state == QUEUED and not item.future.done():
            self._leave_queue(item, DROPPED)
            self.observer.expired()
            item.future.set_exception(DeadlineExceeded(
                f"model {self.name}: the request waited {self.timeout_s:g} s in the queue (deadline) and was not run"))

    # -- the batcher task ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self._free is not None
        while True:
            index = await self._free.get()
            try:
                batch, waits = await self._collect()
            except BaseException:
                self._free.put_nowait(index)
                raise
            held, runner, instance, lone = [index], self.runners[index], str(index), None
            if self.solo is not None and self._alone():
                lone = self.lone_choice.pick()
                if lone == LoneBatchChoice.SOLO:
                    # the batch is all the work there is: every core for it, holding all instances meanwhile
                    held += [self._free.get_nowait() for _ in range(self._free.qsize())]
                    runner, instance = self.solo, "solo"
            task = asyncio.get_running_loop().create_task(self._run(runner, instance, batch, waits, held, lone))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _alone(self) -> bool:
        """Whether nothing else runs, waits or is on its way (called holding one instance, batch taken)."""
        assert self._free is not None
        return self._free.qsize() == len(self.runners) - 1 and self.depth == 0 and self.incoming <= 0

    def _live(self, item: _Item, now: float) -> bool:
        if item.state != QUEUED or item.future.done():
            return False
        if now >= item.deadline:
            self._expire(item)
            return False
        return True

    async def _next_first(self) -> _Item:
        """The oldest live item: from pending first, else wait on the queue."""
        assert self._queue is not None
        while True:
            now = time.monotonic()
            while self._pending:
                item = self._pending.popleft()
                if self._live(item, now):
                    return item
            item = await self._queue.get()
            if self._live(item, time.monotonic()):
                return item

    def _take_now(self, key, batch: list[_Item]) -> bool:
        """Move immediately available items of `key` into `batch`; False when nothing more is queued."""
        assert self._queue is not None
        now = time.monotonic()
        if self._pending:
            keep: collections.deque[_Item] = collections.deque()
            while self._pending and len(batch) < self.max_batch_size:
                item = self._pending.popleft()
                if not self._live(item, now):
                    continue
                (batch if item.key == key else keep).append(item)
            keep.extend(self._pending)
            self._pending = keep
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if not self._live(item, now):
                continue
            if item.key == key:
                batch.append(item)
            else:
                self._pending.append(item)
        return True

    async def _collect(self) -> tuple[list[_Item], list[float]]:
        assert self._queue is not None
        while True:
            first = await self._next_first()
            batch = [first]
            try:
                await self._fill(batch)
            except asyncio.CancelledError:
                # stopping: the items go back, so that stop() fails them instead of leaving them hanging
                self._pending.extendleft(reversed(batch))
                raise
            # items stay queued while the batch fills: one may have expired or been given up meanwhile
            now = time.monotonic()
            batch = [item for item in batch if self._live(item, now)]
            if batch:
                break
        for item in batch:
            self._leave_queue(item, RUNNING)
            item.started = now
        return batch, [now - item.enqueued for item in batch]

    async def _fill(self, batch: list[_Item]) -> None:
        assert self._queue is not None
        first = batch[0]
        close_at = first.enqueued + self.max_delay_s
        while len(batch) < self.max_batch_size:
            if self._take_now(first.key, batch):
                continue  # batch is full
            if self.incoming <= 0:
                break  # nothing queued and nobody on the way: go now
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.TimeoutError, TimeoutError):
                break
            if self._live(item, time.monotonic()):
                (batch if item.key == first.key else self._pending).append(item)

    async def _run(self, runner: Runner, instance: str, batch: list[_Item], waits: list[float], held: list[int],
                   lone: str | None = None) -> None:
        assert self._free is not None
        loop = asyncio.get_running_loop()
        try:
            t0 = time.perf_counter()
            outputs = await loop.run_in_executor(self._executor, runner, [item.array for item in batch])
            elapsed = time.perf_counter() - t0
            self.observer.batch(len(batch), elapsed, waits, instance)
            if lone is not None:
                self.lone_choice.record(lone, elapsed, len(batch))
            for i, item in enumerate(batch):
                item.inference_s = elapsed
                if not item.future.done():
                    item.future.set_result(tuple(out[i] for out in outputs))
        except Exception as e:  # a failed batch fails its callers, not the batcher
            log.exception("model %s: batch of %d failed", self.name, len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed(f"model {self.name}: inference failed: {e}"))
                for row in item.request:  # the request has failed: its other rows must not run before it hears
                    self._leave_queue(row, DROPPED)
        finally:
            for i in held:
                self._free.put_nowait(i)

    def _drain(self) -> list[_Item]:
        items = list(self._pending)
        self._pending.clear()
        if self._queue is not None:
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
        return items


class _Announcement:
    __slots__ = ("batcher", "active")

    def __init__(self, batcher: Batcher):
        self.batcher = batcher
        self.active = False

    def __enter__(self) -> "_Announcement":
        self.batcher.incoming += 1
        self.active = True
        return self

    def done(self) -> None:
        """The request is about to submit (or gave up): it no longer counts as incoming."""
        if self.active:
            self.active = False
            self.batcher.incoming -= 1

    def __exit__(self, *exc: Any) -> None:
        self.done()
