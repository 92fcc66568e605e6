"""Async front of the retriever: request checks, an LRU result cache and micro-batching.

Hundreds of rollouts each send one small request (verl's ``SearchTool``: one query per tool
call). Encoding them one by one wastes the encoder, so concurrent requests are coalesced:
the first waiting request opens a batch, more join until ``max_batch`` queries or ``max_wait_ms``
have passed, then the whole batch goes through one encoder forward and one FAISS search in a
worker thread. While that runs, the event loop keeps accepting requests, which form the next
batch, so under load batches fill without waiting. With micro-batching off, every request
is searched on its own (still off the event loop): the baseline the bench compares against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.schemas import Hit, SearchMode

log = logging.getLogger(__name__)

SearchFn = Callable[[Sequence[str], int, SearchMode], list[list[Hit]]]


class InvalidRequest(ValueError):
    """The request is malformed in a way the schema cannot say (empty query, topk too large...)."""


class QueueFull(RuntimeError):
    """More queries are waiting than the service accepts: the caller should retry later."""


@dataclass(frozen=True)
class Limits:
    default_topk: int = 3
    max_topk: int = 50
    max_queries: int = 256  # per request
    max_query_chars: int = 4096
    default_mode: SearchMode = "dense"


def check_request(queries: list[str], topk: int | None, mode: SearchMode | None, limits: Limits,
                  modes: Sequence[str]) -> tuple[list[str], int, SearchMode]:
    """Validate one request -> (queries, topk, mode), or raise :class:`InvalidRequest` saying why."""
    if not queries:
        raise InvalidRequest("'queries' is empty: give at least one query")
    if len(queries) > limits.max_queries:
        raise InvalidRequest(f"too many queries in one request: {len(queries)} > {limits.max_queries}")
    for i, q in enumerate(queries):
        if not q.strip():
            raise InvalidRequest(f"query {i} is empty")
        if len(q) > limits.max_query_chars:
            raise InvalidRequest(f"query {i} is {len(q)} characters long; the limit is {limits.max_query_chars}")
    k = limits.default_topk if topk is None else topk
    if k <= 0:
        raise InvalidRequest(f"'topk' must be at least 1, got {k}")
    if k > limits.max_topk:
        raise InvalidRequest(f"'topk' is {k}; this service returns at most {limits.max_topk}")
    m: SearchMode = mode or limits.default_mode
    if m not in modes:
        raise InvalidRequest(f"mode '{m}' is not available for this index; available: {', '.join(modes)}")
    return queries, k, m


class ResultCache:
    """LRU of (mode, query) -> hits, valid for any topk up to the depth that was searched."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[tuple[str, str], list[Hit]] = OrderedDict()

    def get(self, mode: str, query: str, topk: int) -> list[Hit] | None:
        if self.size <= 0:
            return None
        hits = self._data.get((mode, query))
        if hits is None or len(hits) < topk:
            return None
        self._data.move_to_end((mode, query))
        return hits[:topk]

    def put(self, mode: str, query: str, hits: list[Hit]) -> None:
        if self.size <= 0:
            return
        self._data[(mode, query)] = hits
        self._data.move_to_end((mode, query))
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class SearchMetrics:
    def __init__(self, registry: CollectorRegistry | None):
        registry = registry or CollectorRegistry()
        self.queries = Counter("searchlab_retriever_queries", "Queries received", ["mode"], registry=registry)
        self.cache_hits = Counter("searchlab_retriever_cache_hits", "Queries answered from the cache",
                                  registry=registry)
        self.batches = Counter("searchlab_retriever_batches", "Encoder/FAISS batches run", registry=registry)
        self.batch_size = Histogram("searchlab_retriever_batch_size", "Queries per batch", registry=registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_seconds = Histogram("searchlab_retriever_batch_seconds", "Encode + search time per batch",
                                       registry=registry,
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.pending = Gauge("searchlab_retriever_pending_queries", "Queries waiting for a batch",
                             registry=registry)


@dataclass
class _Pending:
    queries: list[str]
    topk: int
    mode: SearchMode
    future: asyncio.Future[list[list[Hit]]]
    enqueued: float = field(default_factory=time.perf_counter)


class Searcher:
    """Searches for the HTTP layer: cache, then micro-batches (or one request at a time)."""

    def __init__(self, search: SearchFn, *, microbatch: bool = True, max_batch: int = 64,
                 max_wait_ms: float = 2.0, max_pending: int = 4096, cache_size: int = 10_000,
                 registry: CollectorRegistry | None = None):
        self._search = search
        self.microbatch = microbatch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_pending = max_pending
        self.cache = ResultCache(cache_size)
        self.metrics = SearchMetrics(registry)
        # One worker: the encoder and FAISS already use every core inside one call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retriever-search")
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._pending_queries = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.microbatch and self._task is None:
            self._task = asyncio.create_task(self._batch_loop(), name="retriever-microbatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {"microbatch": self.microbatch, "max_batch": self.max_batch, "max_wait_ms": self.max_wait_s * 1000,
                "cache_size": self.cache.size, "cached": len(self.cache), "pending_queries": self._pending_queries}

    # -- entry point ------------------------------------------------------------------------
    async def search(self, queries: list[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
        self.metrics.queries.labels(mode).inc(len(queries))
        results: list[list[Hit] | None] = [self.cache.get(mode, q, topk) for q in queries]
        missing = [i for i, r in enumerate(results) if r is None]
        self.metrics.cache_hits.inc(len(queries) - len(missing))
        if missing:
            todo = [queries[i] for i in missing]
            found = await (self._enqueue(todo, topk, mode) if self.microbatch else self._run_one(todo, topk, mode))
            for i, hits in zip(missing, found, strict=True):
                results[i] = hits
                self.cache.put(mode, queries[i], hits)
        return [r if r is not None else [] for r in results]

    # -- unbatched --------------------------------------------------------------------------
    async def _run_one(self, queries: list[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
        self._admit(len(queries))
        try:
            return await self._in_worker(queries, topk, mode)
        finally:
            self._release(len(queries))

    # -- micro-batching ---------------------------------------------------------------------
    async def _enqueue(self, queries: list[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
        if self._task is None:
            raise RuntimeError("Searcher.start() was not called")
        self._admit(len(queries))
        future: asyncio.Future[list[list[Hit]]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(queries, topk, mode, future))
        return await future

    async def _batch_loop(self) -> None:
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch, n = [first], len(first.queries)
            deadline = time.perf_counter() + self.max_wait_s
            while n < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:  # sleep until a request arrives or the wait is over (no polling)
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if n + len(item.queries) > self.max_batch:
                    carry = item  # opens the next batch
                    break
                batch.append(item)
                n += len(item.queries)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        by_mode: dict[SearchMode, list[_Pending]] = {}
        for item in batch:
            if item.future.done():  # the client went away while waiting
                self._release(len(item.queries))
            else:
                by_mode.setdefault(item.mode, []).append(item)
        for mode, items in by_mode.items():
            unique = list(dict.fromkeys(q for item in items for q in item.queries))
            depth = max(item.topk for item in items)
            try:
                found = await self._in_worker(unique, depth, mode)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, none left hanging
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._release(sum(len(item.queries) for item in items))
            by_query = dict(zip(unique, found, strict=True))
            for item in items:
                if not item.future.done():
                    item.future.set_result([by_query[q][:item.topk] for q in item.queries])

    # -- shared -----------------------------------------------------------------------------
    async def _in_worker(self, queries: list[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
        start = time.perf_counter()
        found = await asyncio.get_running_loop().run_in_executor(self._executor, self._search, queries, topk, mode)
        self.metrics.batches.inc()
        self.metrics.batch_size.observe(len(queries))
        self.metrics.batch_seconds.observe(time.perf_counter() - start)
        return found

    def _admit(self, n: int) -> None:
        if self._pending_queries + n > self.max_pending:
            raise QueueFull(f"{self._pending_queries} queries are waiting (limit {self.max_pending}); retry later")
        self._pending_queries += n
        self.metrics.pending.set(self._pending_queries)

    def _release(self, n: int) -> None:
        self._pending_queries -= n
        self.metrics.pending.set(self._pending_queries)
