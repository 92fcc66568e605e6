"""Search backends of the agent loop, registered by name (CONVENTIONS.md §7).

- ``retriever``: the real retriever's ``POST /retrieve`` (FAISS / BM25 over a corpus).
- ``simulator``: the ZeroSearch simulator's ``/retrieve`` facade; each query carries the
  episode's ``p_noise`` (and the question and gold answers, which the simulator may inject).

A backend answers a batch of queries concurrently; each query succeeds or fails on its own.
Failures come back as :class:`SearchOutcome` with ``error`` set (the client already retried
with backoff), so the agent turns them into observations and metrics, never into a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shared.client import RetrieverClient, ServiceCallError, SimulatorClient
from shared.keys import ServiceKeys

log = logging.getLogger(__name__)


@dataclass
class SearchQuery:
    query: str
    topk: int = 3
    p_noise: float | None = None  # simulator only
    question: str | None = None  # simulator only
    gold: list[str] | None = None  # simulator only


@dataclass
class SearchOutcome:
    documents: list[dict[str, str]] = field(default_factory=list)  # {"id", "title", "text"}
    error: str | None = None  # None on success


def hit_documents(hits: Sequence[Any]) -> list[dict[str, str]]:
    docs = []
    for hit in hits:
        title, _, text = hit.document.contents.partition("\n")
        docs.append({"id": hit.document.id, "title": title.strip().strip('"'), "text": text.strip()})
    return docs


class HTTPSearchBackend:
    """A ``/retrieve`` endpoint (retriever or simulator facade), queried concurrently from a thread pool."""

    def __init__(self, name: str, client: RetrieverClient, concurrency: int = 16, send_context: bool = False):
        self.name = name
        self.client = client
        self.send_context = send_context  # simulator: send p_noise, question and gold with each query
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"search-{name}")

    def _one(self, q: SearchQuery) -> SearchOutcome:
        extra: dict[str, Any] = {}
        if self.send_context:
            extra = {"p_noise": q.p_noise, "question": q.question, "gold": q.gold or None}
        try:
            hits = self.client.retrieve([q.query], topk=q.topk, **extra)
        except ServiceCallError as exc:
            log.warning("search via %s failed for %r: %s", self.name, q.query[:80], exc)
            return SearchOutcome(error=f"{exc.code}: {exc.message}"[:300])
        return SearchOutcome(documents=hit_documents(hits[0] if hits else []))

    def search(self, queries: Sequence[SearchQuery]) -> list[SearchOutcome]:
        return list(self._pool.map(self._one, queries))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()


@dataclass
class SearchEndpoints:
    """Where each backend lives, and how to call it."""

    retriever_url: str | None = None
    simulator_url: str | None = None
    keys: ServiceKeys = field(default_factory=ServiceKeys)  # each service's bearer token (none: send none)
    timeout_s: float = 30.0
    retries: int = 2
    concurrency: int = 16


def _retriever(cfg: SearchEndpoints) -> HTTPSearchBackend:
    if not cfg.retriever_url:
        raise ValueError("search backend 'retriever' needs a retriever URL (WORKER_RETRIEVER_URL)")
    client = RetrieverClient(cfg.retriever_url, cfg.keys.of("retriever"), timeout_s=cfg.timeout_s,
                             max_retries=cfg.retries)
    return HTTPSearchBackend("retriever", client, cfg.concurrency)


def _simulator(cfg: SearchEndpoints) -> HTTPSearchBackend:
    if not cfg.simulator_url:
        raise ValueError("search backend 'simulator' needs a simulator URL (WORKER_SIMULATOR_URL)")
    client = SimulatorClient(cfg.simulator_url, cfg.keys.of("simulator"), timeout_s=cfg.timeout_s,
                             max_retries=cfg.retries)
    return HTTPSearchBackend("simulator", client, cfg.concurrency, send_context=True)


SEARCH_BACKENDS: dict[str, Callable[[SearchEndpoints], HTTPSearchBackend]] = {
    "retriever": _retriever,
    "simulator": _simulator,
}


class SearchRegistry:
    """Backends built on first use from :data:`SEARCH_BACKENDS`; unknown names raise ``ValueError``."""

    def __init__(self, endpoints: SearchEndpoints):
        self.endpoints = endpoints
        self._built: dict[str, HTTPSearchBackend] = {}

    def get(self, name: str) -> HTTPSearchBackend:
        if name not in self._built:
            try:
                factory = SEARCH_BACKENDS[name]
            except KeyError:
                raise ValueError(f"unknown search backend {name!r}; valid: {', '.join(sorted(SEARCH_BACKENDS))}") from None
            self._built[name] = factory(self.endpoints)
        return self._built[name]

    def close(self) -> None:
        for backend in self._built.values():
            backend.close()
        self._built.clear()
