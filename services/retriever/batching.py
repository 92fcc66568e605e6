"""Async front of the retriever: request checks, an LRU result cache and micro-batching.

Hundreds of rollouts each send one small request (verl's ``SearchTool``: one query per tool
call). Encoding them one by one wastes the encoder, so concurrent requests are coalesced by the
shared :class:`shared.batching.MicroBatcher`, one batch at a time per search process:

- **Fast alone.** The window is adaptive (``wait="adaptive"``): a request that finds no company
  coming (recent requests further apart than the window, or one client sending each request after
  the previous answer) leaves at once; a burst is waited for until it pauses, at most
  ``max_wait_ms`` after its oldest request arrived.
- **Full and fair under load.** While every search process is busy, requests wait; a process
  that comes free takes the oldest waiting requests, up to ``max_batch`` queries (the encoder's
  and FAISS's efficient size), in arrival order.
- **Shed before latency explodes.** At most ``max_waiting_batches`` full batches per search
  process may wait (and never more than ``max_pending`` queries): a request admitted waits behind
  at most that many batches plus the running one; past it, :class:`QueueFull` -> 503 +
  ``Retry-After``. An idle service takes any one request, however many queries it has.

With micro-batching off, every request is searched on its own (still off the event loop): the
baseline the bench compares against.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.batching import MicroBatcher, QueueFull
from shared.schemas import Hit, SearchMode

log = logging.getLogger(__name__)

__all__ = ["InvalidRequest", "Limits", "QueueFull", "ResultCache", "Searcher", "check_request"]

# (queries, topk, mode) -> one result per query, in order, each cut by [:k] to fewer hits: the hits
# themselves, or rows of ids that ``Finish`` turns into hits per request (``process.SearchPool``).
SearchFn = Callable[[Sequence[str], int, SearchMode], Sequence[Any]]
Finish = Callable[[list[Any]], list[list[Hit]]]


def _as_is(results: list[Any]) -> list[list[Hit]]:
    return results


class InvalidRequest(ValueError):
    """The request is malformed in a way the schema cannot say (empty query, topk too large...)."""


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
        self.shed = Counter("searchlab_retriever_shed_queries", "Queries refused with 503 (queue full)",
                            registry=registry)


@dataclass(frozen=True)
class _Request:
    """What the batcher holds for one request: its queries not found in the cache."""

    queries: list[str]
    topk: int
    mode: SearchMode


def _query_count(request: _Request) -> int:
    return len(request.queries)


def _mode_of(request: _Request) -> Hashable:
    return request.mode


class Searcher:
    """Searches for the HTTP layer: cache, then the shared micro-batcher (or one request at a time).

    Batcher items are requests, weighing their number of queries (``max_batch``, ``max_pending``
    count queries); requests of different modes never share a batch. ``concurrency``: batches at
    the backend at once (one per search process), each in a thread of its own. Micro-batching off:
    every request is a batch of its own, sent at once (``max_batch=1``, no window, ``max_pending``
    requests at a time). ``finish`` turns a request's results into hits, on the event loop after
    its batch is done (so a search slot is free again before the passages are read).
    """

    def __init__(self, search: SearchFn, *, finish: Finish = _as_is, microbatch: bool = True, max_batch: int = 64,
                 max_wait_ms: float = 5.0, max_waiting_batches: int = 1, max_pending: int = 4096,
                 concurrency: int = 1, cache_size: int = 10_000, registry: CollectorRegistry | None = None):
        self._search = search
        self._finish = finish
        self.microbatch = microbatch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.concurrency = concurrency
        self.max_pending = min(max_pending, max_batch * concurrency * max_waiting_batches) if microbatch \
            else max_pending
        self.cache = ResultCache(cache_size)
        self.metrics = SearchMetrics(registry)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="retriever-search")
        self._batcher: MicroBatcher[_Request, list[Any]] = MicroBatcher(
            self._search_batch, max_batch=max_batch if microbatch else 1,
            max_wait_s=self.max_wait_s if microbatch else 0.0, max_queue=self.max_pending,
            concurrency=concurrency if microbatch else max_pending, wait="adaptive", weight=_query_count,
            group_key=_mode_of, executor=self._executor, name="the retriever", unit="queries")
        self.metrics.pending.set_function(self._pending_queries)

    async def stop(self) -> None:
        await self._batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {"microbatch": self.microbatch, "max_batch": self.max_batch, "max_wait_ms": self.max_wait_s * 1000,
                "concurrency": self.concurrency, "max_pending": self.max_pending, "cache_size": self.cache.size,
                "cached": len(self.cache), "pending_queries": self._pending_queries()}

    async def search(self, queries: list[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
        """Hits per query; raises :class:`QueueFull` when ``max_pending`` queries are already in."""
        self.metrics.queries.labels(mode).inc(len(queries))
        results: list[list[Hit] | None] = [self.cache.get(mode, q, topk) for q in queries]
        missing = [i for i, r in enumerate(results) if r is None]
        self.metrics.cache_hits.inc(len(queries) - len(missing))
        if missing:
            try:
                [future] = self._batcher.submit([_Request([queries[i] for i in missing], topk, mode)])
            except QueueFull:
                self.metrics.shed.inc(len(missing))
                raise
            for i, hits in zip(missing, self._finish(await future), strict=True):
                results[i] = hits
                self.cache.put(mode, queries[i], hits)
        return [r if r is not None else [] for r in results]

    def _search_batch(self, requests: list[_Request]) -> list[list[Any]]:
        """One encoder forward + one FAISS search for a batch of one mode (in the search thread):
        each distinct query once, as deep as the deepest request wants, then cut per request."""
        mode = requests[0].mode
        unique = list(dict.fromkeys(q for request in requests for q in request.queries))
        depth = max(request.topk for request in requests)
        start = time.perf_counter()
        found = self._search(unique, depth, mode)
        self.metrics.batches.inc()
        self.metrics.batch_size.observe(len(unique))
        self.metrics.batch_seconds.observe(time.perf_counter() - start)
        by_query = dict(zip(unique, found, strict=True))
        return [[by_query[q][:request.topk] for q in request.queries] for request in requests]

    def _pending_queries(self) -> int:
        return self._batcher.queued + self._batcher.running
