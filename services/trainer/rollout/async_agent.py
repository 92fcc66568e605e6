"""One episode as a coroutine: many episodes in flight per process, generation on remote servers.

    agent = AsyncAgent(searcher, judge)
    result = await agent.run(request, steps, generate)   # EpisodeRequest -> EpisodeResult

The state machine is :class:`~services.trainer.rollout.agent.EpisodeSteps` (the batched runner's own
transitions); this module only supplies the waiting::

    t = steps.start(request)
    while t is not done:
        GENERATE: params = steps.sampling(t); gen = await generate(prompt + response, params)
                  steps.after_generation(t, gen, limit)
        SEARCH:   outcome = await searcher.search(backend, steps.search_query(t)); steps.after_search(t, outcome)
    answer -> (the judge, when the reward asks for it) -> steps.result(t, answer, score)

Who generates is a parameter (``generate``): :class:`RemoteGenerator` (SGLang-compatible servers over
HTTP: the rollout worker's remote lane) or verl's own server manager (searchlab's verl agent loop,
``dispatch=inline``). Searches of all episodes in flight share one :class:`AsyncSearcher`: retriever
queries with the same top-k that arrive within a few milliseconds leave as one ``POST /retrieve``;
simulator queries go one request each (each carries its own ``p_noise``, question and gold), all
concurrently. A failed search is an observation and a count (``search_failures``), never an exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from services.trainer.rollout.agent import AgentState, EpisodeSteps
from services.trainer.rollout.search import SearchEndpoints, SearchOutcome, SearchQuery, hit_documents
from shared.batching import MicroBatcher
from shared.client import JudgeClient, RetrieverClient, ServiceCallError, ServiceClient, SimulatorClient
from shared.llm import Generation, SamplingParams
from shared.schemas import EpisodeRequest, EpisodeResult, Hit
from shared.sglang import parse_sglang_generate, sglang_generate_body

log = logging.getLogger(__name__)

Generate = Callable[[list[int], SamplingParams], Awaitable[Generation]]


# --------------------------------------------------------------------------- search


class AsyncSearcher:
    """The search backends for every episode in flight (retriever queries batched, simulator concurrent)."""

    def __init__(self, endpoints: SearchEndpoints, *, max_batch: int = 32, window_s: float = 0.005):
        self.endpoints = endpoints
        self.max_batch = max_batch
        self.window_s = window_s
        self._retriever: RetrieverClient | None = None
        self._simulator: SimulatorClient | None = None
        self._batcher: MicroBatcher[SearchQuery, list[Hit]] | None = None
        self._limit = asyncio.Semaphore(endpoints.concurrency)

    def _client(self, name: str) -> RetrieverClient:
        e = self.endpoints
        if name == "retriever":
            if not e.retriever_url:
                raise ValueError("search backend 'retriever' needs a retriever URL")
            self._retriever = self._retriever or RetrieverClient(e.retriever_url, e.keys.of("retriever"),
                                                                 timeout_s=e.timeout_s, max_retries=e.retries)
            return self._retriever
        if name == "simulator":
            if not e.simulator_url:
                raise ValueError("search backend 'simulator' needs a simulator URL")
            self._simulator = self._simulator or SimulatorClient(e.simulator_url, e.keys.of("simulator"),
                                                                 timeout_s=e.timeout_s, max_retries=e.retries)
            return self._simulator
        raise ValueError(f"unknown search backend {name!r}; valid: retriever, simulator")

    def _retrieve_batch(self, queries: list[SearchQuery]) -> list[list[Hit]]:
        """One ``POST /retrieve`` for queries of equal top-k (runs in the batcher's thread)."""
        assert self._retriever is not None
        return self._retriever.retrieve([q.query for q in queries], topk=queries[0].topk)

    async def search(self, backend: str, q: SearchQuery) -> SearchOutcome:
        try:
            client = self._client(backend)
            if backend == "retriever":
                if self._batcher is None:
                    self._batcher = MicroBatcher(self._retrieve_batch, max_batch=self.max_batch,
                                                 max_wait_s=self.window_s, max_queue=1 << 16,
                                                 concurrency=max(1, self.endpoints.concurrency // 4),
                                                 group_key=lambda query: query.topk, name="the retriever batcher",
                                                 unit="queries")
                hits = await self._batcher.submit([q])[0]
            else:
                async with self._limit:
                    found = await client.aretrieve([q.query], topk=q.topk, p_noise=q.p_noise, question=q.question,
                                                   gold=q.gold or None)
                hits = found[0] if found else []
        except (ServiceCallError, ValueError) as exc:
            code = f"{exc.code}: {exc.message}" if isinstance(exc, ServiceCallError) else str(exc)
            log.warning("search via %s failed for %r: %s", backend, q.query[:80], code)
            return SearchOutcome(error=code[:300])
        return SearchOutcome(documents=hit_documents(hits))

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        for client in (self._retriever, self._simulator):
            if client is not None:
                client.close()
                await client.aclose()


# --------------------------------------------------------------------------- generation


class _Server(ServiceClient):
    service = "rollout-server"


class RemoteGenerator:
    """SGLang-compatible servers over HTTP (``POST /generate``: token ids in, ids and log-probs out).

    An episode takes the least loaded of its servers at its first turn and keeps it for the rest (the
    server's prefix cache holds its conversation), as verl's own load balancer does."""

    def __init__(self, api_key: str | None = None, timeout_s: float = 600.0, retries: int = 2):
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self._servers: dict[str, _Server] = {}
        self._inflight: Counter[str] = Counter()
        self._sticky: dict[str, str] = {}

    def _pick(self, episode: str, base_urls: Sequence[str]) -> str:
        url = self._sticky.get(episode)
        if url is None or url not in base_urls:
            url = min(base_urls, key=lambda u: self._inflight[u])
            self._sticky[episode] = url
        return url

    def release(self, episode: str) -> None:
        """The episode is over: forget its server."""
        self._sticky.pop(episode, None)

    def bind(self, episode: str, base_urls: Sequence[str], decode: Callable[[Sequence[int]], str],
             extra: dict[str, Any] | None = None) -> Generate:
        """``generate(prompt, params)`` for one episode on ``base_urls``; text decoded locally (a server
        started without its tokenizer returns ids only)."""

        async def generate(prompt: list[int], params: SamplingParams) -> Generation:
            url = self._pick(episode, base_urls)
            server = self._servers.get(url)
            if server is None:
                server = self._servers[url] = _Server(url, self.api_key, timeout_s=self.timeout_s,
                                                      max_retries=self.retries)
            self._inflight[url] += 1
            try:
                response = await server.arequest("POST", "/generate", json=sglang_generate_body(prompt, params, extra))
            finally:
                self._inflight[url] -= 1
            gen = parse_sglang_generate(response.json())
            gen.text = decode(gen.token_ids)
            return gen

        return generate

    async def close(self) -> None:
        for server in self._servers.values():
            await server.aclose()
        self._servers.clear()


# --------------------------------------------------------------------------- the episode


class AsyncAgent:
    """Runs one episode to its result; any number of them concurrently on one event loop."""

    def __init__(self, searcher: AsyncSearcher, judge: JudgeClient | None = None):
        self.searcher = searcher
        self.judge = judge

    async def run(self, request: EpisodeRequest, steps: EpisodeSteps, generate: Generate) -> EpisodeResult:
        t = steps.start(request)
        while t.state is not AgentState.DONE:
            if t.state is AgentState.GENERATE:
                params, limit = steps.sampling(t)
                steps.after_generation(t, await generate(t.prompt_ids + t.response_ids, params), limit)
            else:
                steps.after_search(t, await self.searcher.search(request.search_backend, steps.search_query(t)))
        answer = steps.answer(t)
        return steps.result(t, answer, await self._judge(steps.judge_item(t, answer)))

    async def _judge(self, item: dict[str, Any] | None) -> float | None:
        """The judge's score (the judge service batches concurrent requests); None: not asked or it failed."""
        if item is None:
            return None
        if self.judge is None:
            log.warning("reward metric 'llm' asked but no judge is configured; using f1")
            return None
        try:
            return float((await self.judge.ajudge([item], "llm")).scores[0])
        except ServiceCallError as exc:
            log.warning("judge failed (%s); rule metric f1 used instead", exc)
            return None
