"""One micro-batcher for every service: coalesce the items of concurrent requests into backend batches.

Hundreds of rollouts each send a small request; a model or an index answers a batch of them
for little more than the cost of one. The batcher (no FastAPI here, asyncio only):

    submit(items)          -> one future per item; all items are admitted or none (QueueFull)
    dispatcher, forever:   take a backend slot (at most ``concurrency`` batches at the backend)
                           wait for an item; its group is the batch's group
                           wait until ``max_batch`` units of that group wait, or the window ends
                           cut the batch: that group's items in arrival order, up to ``max_batch`` units
                           run ``fn(items)`` off the event loop; each future gets its output

- **Units.** An item weighs ``weight(item)`` units (default 1): a retriever request of five
  queries weighs five. ``max_queue`` and ``max_batch`` count units; a batch always takes its
  first item, so one item heavier than ``max_batch`` is a batch of its own.
- **Groups.** Items whose ``group_key`` differ never share a batch (the retriever's search mode,
  the policy server's sampling parameters); batches leave oldest group first.
- **The window** (``wait``), so each service keeps its latency behaviour:
  ``"oldest"``: at most ``max_wait_s`` after the oldest waiting item arrived (a batch that waited
  for a backend slot leaves at once); ``"open"``: ``max_wait_s`` from the moment the dispatcher
  has a slot and an item (the window opens after the previous batch); ``"fixed"``: like "open",
  but always the whole window, even when the batch is already full; ``"adaptive"``: like "oldest",
  but the batch leaves as soon as no more company is expected in time, judged by the median gap
  between recent submissions: a lone request (gaps longer than the window) leaves at once, a burst
  is waited for until it pauses (no submission for twice the gap), a steady stream until the batch
  is full or the window is over. A submission to an idle batcher that follows the last answer
  closer than it follows the previous submission is answer-driven (a closed loop: the client sent
  it because it got its answer) and counts as a long gap: its timing is the service's own latency,
  not company, and one client looping faster than the window would otherwise wait the whole window
  every time (measured: 5 ms per request at a 5 ms window, against 0.8 ms without it).
- **Backpressure.** More than ``max_queue`` units waiting (plus those at the backend when
  ``queue_counts_running``) raises :class:`QueueFull`; ``shared.service`` answers it with 503 +
  ``Retry-After``. An empty queue takes any one submission, however heavy (else it never could).
- **Failures.** An exception of ``fn`` is handed to every item of its batch (logged once); the
  batcher keeps going. Futures already done (the caller went away) are skipped. ``close()``
  fails the waiting items with :class:`BatcherClosed` and lets the batches at the backend finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

Wait = Literal["oldest", "open", "fixed", "adaptive"]
GAPS_KEPT = 16  # submissions whose gaps the adaptive window's median is taken over


class QueueFull(Exception):
    """The batcher cannot take the submitted items now: the caller should retry later (503)."""


class BatcherClosed(RuntimeError):
    """The batcher was closed (the service is shutting down) before the item was run."""


@dataclass
class _Job(Generic[In, Out]):
    item: In
    weight: int
    group: Hashable
    future: asyncio.Future[Out]
    enqueued: float = field(default_factory=time.monotonic)


def _one(_: object) -> int:
    return 1


def _none(_: object) -> None:
    return None


class MicroBatcher(Generic[In, Out]):
    """``submit(items)`` -> futures; batches of them run as ``fn(list_of_items)`` in a worker thread.

    ``fn`` returns one output per item, in order. ``executor``: where ``fn`` runs (``None``: the
    event loop's default thread pool). ``on_batch(items, seconds)`` is called after each
    successful batch (metrics). ``name`` and ``unit`` word the :class:`QueueFull` message.
    """

    def __init__(self, fn: Callable[[list[In]], Sequence[Out]], *, max_batch: int, max_wait_s: float,
                 max_queue: int, concurrency: int = 1, wait: Wait = "oldest",
                 weight: Callable[[In], int] | None = None, group_key: Callable[[In], Hashable] | None = None,
                 queue_counts_running: bool = False, executor: Executor | None = None,
                 on_batch: Callable[[int, float], None] | None = None,
                 name: str = "the batcher", unit: str = "items"):
        if max_batch < 1 or max_queue < 1 or concurrency < 1 or max_wait_s < 0:
            raise ValueError("max_batch, max_queue and concurrency must be >= 1 and max_wait_s >= 0")
        if wait not in ("oldest", "open", "fixed", "adaptive"):
            raise ValueError(f"unknown wait {wait!r}; valid: oldest, open, fixed, adaptive")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.wait = wait
        self.weight: Callable[[In], int] = weight or _one
        self.group_key: Callable[[In], Hashable] = group_key or _none
        self.queue_counts_running = queue_counts_running
        self.executor = executor
        self.on_batch = on_batch
        self.name = name
        self.unit = unit
        self.batches = 0  # batches sent to the backend so far (for /info and tests of coalescing)
        self._waiting: list[_Job[In, Out]] = []
        self._queued = 0  # units waiting
        self._running = 0  # units at the backend
        self._group_units: Counter[Hashable] = Counter()  # units waiting per group
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._dispatcher: asyncio.Task[None] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._last_submit = 0.0  # monotonic time of the last submission (adaptive window)
        self._last_done = 0.0  # monotonic time the last batch's outputs were handed out (adaptive window)
        self._gaps: deque[float] = deque(maxlen=GAPS_KEPT)  # seconds between recent submissions

    @property
    def queued(self) -> int:
        """Units waiting for a batch."""
        return self._queued

    @property
    def running(self) -> int:
        """Units in batches at the backend."""
        return self._running

    def submit(self, items: Sequence[In]) -> list[asyncio.Future[Out]]:
        """Queue all of ``items`` or none of them (:class:`QueueFull`); one future per item."""
        if self._closed:
            raise BatcherClosed(f"{self.name} is shutting down")
        weights = [self.weight(item) for item in items]
        idle = self._queued == 0 and self._running == 0
        load = self._queued + (self._running if self.queue_counts_running else 0)
        if load > 0 and load + sum(weights) > self.max_queue:
            raise QueueFull(f"{self.name} is full: {load} {self.unit} waiting, {sum(weights)} more asked "
                            f"(limit {self.max_queue}); retry later")
        loop = asyncio.get_running_loop()
        jobs = [_Job[In, Out](item, w, self.group_key(item), loop.create_future())
                for item, w in zip(items, weights, strict=True)]
        for job in jobs:
            self._group_units[job.group] += job.weight
        self._waiting.extend(jobs)
        self._queued += sum(weights)
        now = jobs[0].enqueued if jobs else time.monotonic()
        if self._last_submit:  # a gap longer than a few windows says "idle" as well as a longer one would
            gap = now - self._last_submit
            if idle and now - self._last_done < gap / 2:  # answer-driven (closed loop): no company to expect
                gap = 4 * self.max_wait_s
            self._gaps.append(min(gap, 4 * self.max_wait_s))
        self._last_submit = now
        self._changed.set()
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name=f"{self.name} dispatcher")
        return [job.future for job in jobs]

    async def close(self) -> None:
        """Stop batching: waiting items fail with :class:`BatcherClosed`; running batches finish."""
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        for job in self._waiting:
            if not job.future.done():
                job.future.set_exception(BatcherClosed(f"{self.name} is shutting down"))
                job.future.exception()  # retrieved here: nobody may be waiting any more
        self._waiting.clear()
        self._group_units.clear()
        self._queued = 0
        if self._batch_tasks:
            await asyncio.gather(*self._batch_tasks, return_exceptions=True)

    # -- dispatching ------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()  # backend concurrency limit; the queue keeps growing meanwhile
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            self.batches += 1
            task = asyncio.create_task(self._run(batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    async def _next_batch(self) -> list[_Job[In, Out]]:
        while True:
            self._drop_abandoned_head()
            while not self._waiting:
                self._changed.clear()
                await self._changed.wait()
                self._drop_abandoned_head()
            head = self._waiting[0]
            start = head.enqueued if self.wait in ("oldest", "adaptive") else time.monotonic()
            deadline = start + self.max_wait_s
            while self.wait == "fixed" or self._group_units[head.group] < self.max_batch:
                remaining = deadline - time.monotonic()
                if self.wait == "adaptive":
                    remaining = self._company_expected_within(remaining)
                if remaining <= 0:
                    break
                if self.wait == "fixed":
                    await asyncio.sleep(remaining)
                else:  # sleep until an item arrives or the window is over (no polling)
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
            batch = self._cut(head.group)
            if batch:
                return batch
            # every item of the group was abandoned meanwhile: start over

    def _company_expected_within(self, remaining: float) -> float:
        """Adaptive window: how much longer to wait for another submission (<= 0: leave now).

        With ``g`` the median recent gap between submissions: leave when the next one is not due
        before the window ends (``last + g`` past it), or is overdue (nothing for ``2 g``: the
        burst is over); else wait at most until it is overdue."""
        if remaining <= 0 or not self._gaps:
            return 0.0
        gap = statistics.median(self._gaps)
        now = time.monotonic()
        if self._last_submit + gap > now + remaining:
            return 0.0
        return min(remaining, self._last_submit + 2 * gap - now)

    def _drop_abandoned_head(self) -> None:
        while self._waiting and self._waiting[0].future.done():
            self._forget(self._waiting.pop(0))

    def _forget(self, job: _Job[In, Out]) -> None:
        self._queued -= job.weight
        self._group_units[job.group] -= job.weight
        if self._group_units[job.group] <= 0:
            del self._group_units[job.group]

    def _cut(self, group: Hashable) -> list[_Job[In, Out]]:
        """Take ``group``'s waiting items in arrival order up to ``max_batch`` units (at least one)."""
        batch: list[_Job[In, Out]] = []
        keep: list[_Job[In, Out]] = []
        units = 0
        full = False
        for job in self._waiting:
            if job.group != group or full:
                keep.append(job)
            elif job.future.done():  # the caller went away while it waited
                self._forget(job)
            elif batch and units + job.weight > self.max_batch:
                full = True  # it opens the next batch of this group
                keep.append(job)
            else:
                self._forget(job)
                batch.append(job)
                units += job.weight
        self._waiting = keep
        self._running += units
        return batch

    async def _run(self, batch: list[_Job[In, Out]]) -> None:
        units = sum(job.weight for job in batch)
        start = time.monotonic()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.fn, [job.item for job in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"the batch function returned {len(outputs)} outputs for {len(batch)} items")
        except Exception as exc:  # noqa: BLE001 - handed to every waiting item, which reports it
            log.warning("%s: a batch of %d failed: %s: %s", self.name, len(batch), type(exc).__name__, exc)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
                    job.future.exception()  # logged once above, not once per unawaited item
            return
        finally:
            self._running -= units
            self._slots.release()
        if self.on_batch is not None:
            self.on_batch(len(batch), time.monotonic() - start)
        for job, out in zip(batch, outputs, strict=True):
            if not job.future.done():
                job.future.set_result(out)
        self._last_done = time.monotonic()
