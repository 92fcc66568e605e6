"""Request checks, the result cache and micro-batching (pure logic; the search function is a fake)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from services.retriever.batching import (
    InvalidRequest,
    Limits,
    QueueFull,
    ResultCache,
    Searcher,
    check_request,
)
from shared.schemas import Document, Hit, SearchMode

LIMITS = Limits(default_topk=3, max_topk=10, max_queries=4, max_query_chars=50, default_mode="dense")
MODES = ("dense", "bm25", "hybrid")


def test_check_request_fills_defaults() -> None:
    assert check_request(["a"], None, None, LIMITS, MODES) == (["a"], 3, "dense")
    assert check_request(["a", "b"], 10, "bm25", LIMITS, MODES) == (["a", "b"], 10, "bm25")


@pytest.mark.parametrize(
    ("queries", "topk", "mode", "says"),
    [
        ([], None, None, "empty"),
        (["a", ""], None, None, "query 1 is empty"),
        (["a"] * 5, None, None, "too many queries"),
        (["x" * 51], None, None, "characters"),
        (["a"], 0, None, "at least 1"),
        (["a"], 11, None, "at most 10"),
        (["a"], None, "hybrid", "not available"),
    ],
)
def test_check_request_says_what_is_wrong(queries: list[str], topk: int | None, mode: SearchMode | None,
                                          says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        check_request(queries, topk, mode, LIMITS, ("dense",))


def _hits(query: str, k: int) -> list[Hit]:
    return [Hit(document=Document(id=f"{query}-{i}", contents=f'"{query}"\n{i}'), score=float(k - i))
            for i in range(k)]


def test_cache_serves_smaller_topk_and_evicts_least_recent() -> None:
    cache = ResultCache(2)
    cache.put("dense", "a", _hits("a", 5))
    assert [h.document.id for h in cache.get("dense", "a", 2) or []] == ["a-0", "a-1"]
    assert cache.get("dense", "a", 6) is None  # searched less deep than asked
    assert cache.get("bm25", "a", 1) is None  # modes are cached apart
    cache.put("dense", "b", _hits("b", 3))
    cache.get("dense", "a", 1)  # a is now the most recent
    cache.put("dense", "c", _hits("c", 3))
    assert cache.get("dense", "b", 1) is None and cache.get("dense", "a", 1) is not None
    off = ResultCache(0)
    off.put("dense", "a", _hits("a", 3))
    assert off.get("dense", "a", 1) is None and len(off) == 0


class FakeSearch:
    """Records every call; slow enough that concurrent requests overlap."""

    def __init__(self, delay_s: float = 0.02):
        self.calls: list[tuple[list[str], int, str]] = []
        self.delay_s = delay_s
        self.threads: set[str] = set()

    def __call__(self, queries: Sequence[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
        self.calls.append((list(queries), topk, mode))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return [_hits(q, topk) for q in queries]


async def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    fake = FakeSearch()
    searcher = Searcher(fake, max_batch=8, max_wait_ms=20, max_waiting_batches=3, cache_size=0)
    try:
        queries = [f"q{i}" for i in range(20)]
        results = await asyncio.gather(*(searcher.search([q], 1 + i % 3, "dense") for i, q in enumerate(queries)))
    finally:
        await searcher.stop()
    for i, (q, result) in enumerate(zip(queries, results, strict=True)):
        assert [h.document.id for h in result[0]] == [f"{q}-{j}" for j in range(1 + i % 3)]
    assert len(fake.calls) < len(queries)
    assert all(len(call[0]) <= 8 for call in fake.calls)
    assert fake.threads and threading.main_thread().name not in fake.threads  # off the event loop


async def test_modes_are_searched_apart_and_duplicates_once() -> None:
    fake = FakeSearch()
    searcher = Searcher(fake, max_batch=64, max_wait_ms=30, cache_size=0)
    try:
        await asyncio.gather(searcher.search(["x"], 3, "dense"), searcher.search(["x"], 5, "dense"),
                             searcher.search(["x"], 3, "bm25"))
    finally:
        await searcher.stop()
    assert sorted((c[2], c[0], c[1]) for c in fake.calls) == [("bm25", ["x"], 3), ("dense", ["x"], 5)]


async def test_unbatched_searches_each_request_alone_and_cache_answers_repeats() -> None:
    fake = FakeSearch(delay_s=0)
    searcher = Searcher(fake, microbatch=False, cache_size=100)
    try:
        await asyncio.gather(*(searcher.search([f"q{i}"], 3, "dense") for i in range(5)))
        assert len(fake.calls) == 5
        again = await searcher.search(["q1", "q9"], 2, "dense")
    finally:
        await searcher.stop()
    assert fake.calls[-1] == (["q9"], 2, "dense")  # q1 came from the cache
    assert [h.document.id for h in again[0]] == ["q1-0", "q1-1"]


class GatedSearch(FakeSearch):
    """A fake search that holds every batch until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__(delay_s=0)
        self.gate = threading.Event()

    def __call__(self, queries: Sequence[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
        self.gate.wait(10)
        return super().__call__(queries, topk, mode)


async def _until_running(searcher: Searcher, n: int) -> None:
    for _ in range(500):
        if searcher.stats()["pending_queries"] >= n and not searcher._batcher.queued:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the first batch never reached the search function")


async def test_under_load_the_oldest_go_first_and_no_one_waits_behind_more_than_the_allowed_batches() -> None:
    fake = GatedSearch()
    searcher = Searcher(fake, max_batch=4, max_wait_ms=0, max_waiting_batches=2, cache_size=0)
    try:
        first = asyncio.create_task(searcher.search(["q0"], 1, "dense"))
        await _until_running(searcher, 1)  # q0 is at the (blocked) search function
        waiting = [asyncio.create_task(searcher.search([f"q{i}"], 1, "dense")) for i in range(1, 9)]
        await asyncio.sleep(0)  # all eight submitted: two full batches wait
        with pytest.raises(QueueFull, match="full"):
            await searcher.search(["q9"], 1, "dense")  # a third batch would have to wait: shed
        fake.gate.set()
        results = await asyncio.gather(first, *waiting)
    finally:
        await searcher.stop()
    assert [r[0][0].document.id for r in results] == [f"q{i}-0" for i in range(9)]
    assert [call[0] for call in fake.calls] == [["q0"], ["q1", "q2", "q3", "q4"], ["q5", "q6", "q7", "q8"]]


async def test_shed_capacity_is_given_back_and_an_idle_service_takes_a_heavy_request() -> None:
    fake = GatedSearch()
    searcher = Searcher(fake, max_batch=2, max_wait_ms=0, max_waiting_batches=1, cache_size=0)
    try:
        first = asyncio.create_task(searcher.search(["a", "b", "c"], 1, "dense"))  # heavier than a batch
        await _until_running(searcher, 3)
        second = asyncio.create_task(searcher.search(["d", "e"], 1, "dense"))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await searcher.search(["f"], 1, "dense")
        fake.gate.set()
        await asyncio.gather(first, second)
        assert len(await searcher.search(["f"], 1, "dense")) == 1  # capacity is given back
    finally:
        await searcher.stop()
    assert fake.calls[0][0] == ["a", "b", "c"]


async def test_a_lone_request_does_not_wait_for_company() -> None:
    """The window is 30 s: a request that waited for company would time out here."""
    fake = FakeSearch(delay_s=0)
    searcher = Searcher(fake, max_batch=64, max_wait_ms=30_000, cache_size=0)
    try:
        for i in range(3):  # alone, one after the other: never any company coming
            assert (await asyncio.wait_for(searcher.search([f"q{i}"], 1, "dense"), timeout=10))[0]
            await asyncio.sleep(0.05)
    finally:
        await searcher.stop()
    assert [call[0] for call in fake.calls] == [["q0"], ["q1"], ["q2"]]


async def test_a_burst_waits_for_itself_and_then_leaves_without_the_whole_window() -> None:
    fake = FakeSearch(delay_s=0)
    searcher = Searcher(fake, max_batch=64, max_wait_ms=30_000, cache_size=0)
    try:
        burst = [asyncio.create_task(searcher.search([f"q{i}"], 1, "dense")) for i in range(12)]
        await asyncio.wait_for(asyncio.gather(*burst), timeout=10)
    finally:
        await searcher.stop()
    assert [call[0] for call in fake.calls] == [[f"q{i}" for i in range(12)]]


async def test_a_failing_search_fails_its_requests_not_the_batcher() -> None:
    calls = 0

    def flaky(queries: Sequence[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("encoder exploded")
        return [_hits(q, topk) for q in queries]

    searcher = Searcher(flaky, max_wait_ms=0, cache_size=0)
    try:
        with pytest.raises(RuntimeError, match="exploded"):
            await searcher.search(["a"], 1, "dense")
        assert (await searcher.search(["b"], 1, "dense"))[0][0].document.id == "b-0"
    finally:
        await searcher.stop()
