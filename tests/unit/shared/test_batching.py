"""The shared micro-batcher: coalescing, batch size cap, windows, weights, groups, backpressure, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable

import pytest

from shared.batching import BatcherClosed, MicroBatcher, QueueFull, Wait


class Recorder:
    """A backend stand-in (pure logic test): records batches, can block until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.threads.add(threading.current_thread().name)
        self.gate.wait(10)
        self.batches.append(list(items))
        with self._lock:
            self.active -= 1
        return [i * 10 for i in items]


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def blocked(backend: Recorder, batcher: MicroBatcher[int, int], items: list[int],
                  batches: int = 1) -> list[asyncio.Future[int]]:
    """Submit ``items`` to a blocked backend and wait until ``batches`` of them are at it."""
    backend.gate.clear()
    futures = batcher.submit(items)
    await until(lambda: backend.active == batches)
    return futures


def make(backend: Recorder, **kw: object) -> MicroBatcher[int, int]:
    options: dict[str, object] = {"max_batch": 8, "max_wait_s": 0.0, "max_queue": 100, "concurrency": 1}
    options.update(kw)
    return MicroBatcher(backend, **options)  # type: ignore[arg-type]


async def test_items_of_concurrent_submitters_share_batches() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=8, max_wait_s=0.2)
    futures = [f for i in range(8) for f in batcher.submit([i])]  # eight one-item "requests"
    assert await asyncio.gather(*futures) == [i * 10 for i in range(8)]
    assert backend.batches == [list(range(8))]
    assert batcher.batches == 1
    assert backend.threads and threading.main_thread().name not in backend.threads  # off the event loop
    await batcher.close()


async def test_batches_never_exceed_max_batch_and_keep_order() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=3, max_wait_s=0.05, concurrency=2)
    futures = batcher.submit(list(range(10)))
    assert await asyncio.gather(*futures) == [i * 10 for i in range(10)]
    assert max(len(b) for b in backend.batches) == 3
    assert sorted(i for b in backend.batches for i in b) == list(range(10))
    await batcher.close()


async def test_a_lone_item_leaves_after_max_wait() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=64, max_wait_s=0.01)
    assert await asyncio.wait_for(batcher.submit([7])[0], 5) == 70
    await batcher.close()


@pytest.mark.parametrize(("wait", "expected"), [("oldest", [[0, 1], [2], [3]]), ("open", [[0, 1], [2, 3]])])
async def test_the_window_counts_from_the_oldest_item_or_from_when_it_opens(wait: Wait,
                                                                            expected: list[list[int]]) -> None:
    """While the backend is busy, item 2's window runs out. "oldest": it leaves as soon as the backend
    is free and a later item 3 comes too late to join; "open": its window opens then, and 3 joins."""
    backend = Recorder()
    batcher = make(backend, max_batch=2, max_wait_s=0.3 if wait == "oldest" else 5.0, wait=wait)
    first = await blocked(backend, batcher, [0, 1])  # a full batch: it leaves at once
    second = batcher.submit([2])
    await asyncio.sleep(0.4)  # longer than the "oldest" window
    backend.gate.set()
    await asyncio.gather(*first)
    await asyncio.sleep(0.05)
    third = batcher.submit([3])
    assert await asyncio.gather(*second, *third) == [20, 30]
    assert backend.batches == expected
    await batcher.close()


async def test_a_fixed_window_is_waited_whole_even_when_the_batch_is_full() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=2, max_wait_s=1.0, wait="fixed")
    futures = batcher.submit([1, 2])
    await asyncio.sleep(0.1)
    assert backend.batches == []  # full, but still inside its window
    assert await asyncio.gather(*futures) == [10, 20]
    assert backend.batches == [[1, 2]]
    await batcher.close()


async def test_full_queue_refuses_the_whole_submission() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=2, max_queue=4)
    first = await blocked(backend, batcher, [1, 2])  # busy: nothing leaves the queue after this batch
    second = batcher.submit([3, 4, 5, 6])
    with pytest.raises(QueueFull):
        batcher.submit([7])
    assert batcher.queued == 4
    backend.gate.set()
    assert await asyncio.gather(*first, *second) == [10, 20, 30, 40, 50, 60]
    await batcher.close()


async def test_admission_and_batches_count_units_when_items_weigh_more_than_one() -> None:
    calls: list[list[list[str]]] = []

    def backend(requests: list[list[str]]) -> list[int]:
        calls.append(requests)
        return [len(r) for r in requests]

    batcher: MicroBatcher[list[str], int] = MicroBatcher(backend, max_batch=4, max_wait_s=0.05, max_queue=6,
                                                         weight=len)
    held = batcher.submit([["a", "b", "c"]])  # 3 units, waiting (nothing runs before the first await)
    with pytest.raises(QueueFull):
        batcher.submit([["d"], ["e", "f", "g"]])  # 3 + 4 > 6: neither item is taken
    assert batcher.queued == 3
    more = batcher.submit([["d"], ["e", "f"]])  # 3 + 3 = 6: both
    assert batcher.queued == 6
    assert await asyncio.gather(*held, *more) == [3, 1, 2]
    # 4 units fill a batch: [a b c] + [d]; [e f] would overflow it and opens the next one
    assert calls == [[["a", "b", "c"], ["d"]], [["e", "f"]]]
    # one item heavier than max_batch still goes, alone
    assert await batcher.submit([["v", "w", "x", "y", "z"]])[0] == 5
    await batcher.close()


async def test_queue_counts_running_bounds_items_at_the_backend_too() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=2, max_queue=3, queue_counts_running=True)
    first = await blocked(backend, batcher, [1, 2])
    assert batcher.queued == 0 and batcher.running == 2
    batcher.submit([3])
    with pytest.raises(QueueFull):
        batcher.submit([4])  # 2 at the backend + 1 waiting
    backend.gate.set()
    await asyncio.gather(*first)
    assert await batcher.submit([4])[0] == 40  # capacity is given back
    await batcher.close()


async def test_groups_never_share_a_batch_and_leave_oldest_first() -> None:
    seen: list[list[str]] = []

    def backend(items: list[str]) -> list[str]:
        seen.append(items)
        return [s.upper() for s in items]

    def group(item: str) -> Hashable:
        return item[0]

    batcher: MicroBatcher[str, str] = MicroBatcher(backend, max_batch=10, max_wait_s=0.05, max_queue=100,
                                                   group_key=group)
    items = ["a1", "b1", "a2", "c1", "b2", "a3"]
    assert await asyncio.gather(*batcher.submit(items)) == [s.upper() for s in items]
    assert seen == [["a1", "a2", "a3"], ["b1", "b2"], ["c1"]]
    await batcher.close()


async def test_a_failing_backend_fails_every_item_of_its_batch() -> None:
    def broken(items: list[int]) -> list[int]:
        raise ConnectionError("backend down")

    batcher: MicroBatcher[int, int] = MicroBatcher(broken, max_batch=4, max_wait_s=0.01, max_queue=10,
                                                   concurrency=1)
    results = await asyncio.gather(*batcher.submit([1, 2]), return_exceptions=True)
    assert len(results) == 2 and all(isinstance(r, ConnectionError) for r in results)
    # and the batcher keeps working afterwards (its concurrency slot was released)
    batcher.fn = lambda items: [0 for _ in items]
    assert await asyncio.wait_for(batcher.submit([3])[0], 5) == 0
    await batcher.close()


async def test_a_wrong_number_of_outputs_fails_the_batch() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: [1], max_batch=4, max_wait_s=0.01, max_queue=10)
    results = await asyncio.gather(*batcher.submit([1, 2]), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "2 items" in str(r) for r in results)
    await batcher.close()


async def test_at_most_concurrency_batches_at_the_backend() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=1, concurrency=2)
    futures = await blocked(backend, batcher, list(range(6)), batches=2)
    await asyncio.sleep(0.05)
    assert backend.active == 2 and batcher.running == 2 and batcher.queued == 4
    backend.gate.set()
    assert await asyncio.gather(*futures) == [i * 10 for i in range(6)]
    assert backend.most_active == 2
    await batcher.close()


async def test_abandoned_items_are_skipped() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=10)
    first = await blocked(backend, batcher, [1])
    waiting = batcher.submit([2, 3, 4])
    waiting[1].cancel()  # the caller of item 3 went away
    backend.gate.set()
    assert await asyncio.gather(first[0], waiting[0], waiting[2]) == [10, 20, 40]
    assert backend.batches == [[1], [2, 4]]
    assert batcher.queued == 0
    await batcher.close()


async def test_on_batch_reports_size_and_seconds() -> None:
    sizes: list[tuple[int, float]] = []
    batcher = make(Recorder(), max_wait_s=0.05, on_batch=lambda n, s: sizes.append((n, s)))
    await asyncio.gather(*batcher.submit([1, 2, 3]))
    assert len(sizes) == 1 and sizes[0][0] == 3 and sizes[0][1] >= 0
    await batcher.close()


async def test_close_fails_waiting_items_and_lets_running_batches_finish() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=1)
    running = await blocked(backend, batcher, [1])
    waiting = batcher.submit([2])
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)
    with pytest.raises(BatcherClosed):
        await waiting[0]
    backend.gate.set()
    await closing
    assert await running[0] == 10
    with pytest.raises(BatcherClosed):
        batcher.submit([3])


async def test_adaptive_window_sends_a_lone_item_at_once_and_follows_a_stream() -> None:
    """Window 30 s: a lone item, and a stream that stops, leave long before it ends."""
    backend = Recorder()
    batcher = make(backend, max_batch=64, max_wait_s=30.0, wait="adaptive")
    assert await asyncio.wait_for(batcher.submit([0])[0], timeout=10) == 0  # nothing coming: no wait
    stream: list[asyncio.Future[int]] = []
    for i in range(1, 7):  # a steady stream, 20 ms apart, then nothing
        stream += batcher.submit([i])
        await asyncio.sleep(0.02)
    assert await asyncio.wait_for(asyncio.gather(*stream), timeout=10) == [i * 10 for i in range(1, 7)]
    assert backend.batches[0] == [0]
    assert len(backend.batches) < 1 + 6  # the stream was waited for: its items shared batches
    await batcher.close()


async def test_adaptive_window_does_not_hold_one_client_that_sends_after_each_answer() -> None:
    """Window 30 s, one client in a closed loop: each request is answer-driven, none waits for company
    (before: each wait stretched the gap the next one waited for, doubling up to the whole window)."""
    backend = Recorder()
    batcher = make(backend, max_batch=64, max_wait_s=30.0, wait="adaptive")

    async def loop() -> list[int]:
        return [await batcher.submit([i])[0] for i in range(100)]

    assert await asyncio.wait_for(loop(), timeout=10) == [i * 10 for i in range(100)]
    assert backend.batches == [[i] for i in range(100)]
    await batcher.close()


async def test_an_empty_queue_takes_one_submission_heavier_than_the_limit() -> None:
    backend = Recorder()
    batcher = make(backend, max_batch=2, max_queue=3)
    assert await asyncio.gather(*batcher.submit([1, 2, 3, 4])) == [10, 20, 30, 40]
    first = await blocked(backend, batcher, [5, 6])
    batcher.submit([7, 8, 9])
    with pytest.raises(QueueFull):
        batcher.submit([10])  # not empty now: the limit holds
    backend.gate.set()
    await asyncio.gather(*first)
    await batcher.close()
