"""The worker's remote lane: episodes that name their own rollout servers, many in flight at once.

An episode with ``generation`` set (:class:`shared.schemas.RemoteGeneration`: verl's SGLang replicas,
queued by searchlab's verl agent loop) needs no model on the worker, only its tokenizer; its time is
spent waiting on the servers and the search backends. So instead of a batch at a time, the lane runs
each such episode as a coroutine on one event loop (its own thread), up to ``capacity`` at once::

    worker main loop:  claim -> lane.submit(delivery)     (while lane.free() > 0)
    lane event loop:   AsyncAgent.run(request, EpisodeSteps(tokenizer), RemoteGenerator.bind(...))
                       -> queue.complete(delivery, result)   (or queue.fail: re-queued / dead-lettered)

Generation requests are spread over the episode's servers (least loaded, then sticky per episode),
retriever queries of concurrent episodes leave together (:class:`AsyncSearcher`). The worker's
heartbeat refreshes the lane's entries too, so long episodes are not reclaimed (until their deadline);
a worker that dies leaves them pending and another reclaims them after the visibility timeout, as in
the batch path. Result writes go through the worker's ``write`` (retried while Redis is away).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from services.trainer.rollout.agent import EpisodeSteps
from services.trainer.rollout.async_agent import AsyncAgent, AsyncSearcher, RemoteGenerator
from services.trainer.rollout.queue import Delivery, EpisodeQueue
from services.trainer.rollout.search import SearchEndpoints
from shared.client import JudgeClient
from shared.llm import HFTokenizer

log = logging.getLogger("searchlab.worker")


class RemoteLane:
    """Up to ``capacity`` remote-generation episodes in flight on one event loop thread."""

    def __init__(self, name: str, queue: EpisodeQueue, endpoints: SearchEndpoints, *, capacity: int,
                 judge_url: str | None = None, judge_timeout_s: float = 120.0, generate_timeout_s: float = 600.0,
                 tokenizer_cache: int = 4, on_done: Callable[[], None] = lambda: None,
                 write: Callable[[Callable[[], Any], str], Any] = lambda call, what: call()):
        self.name = name
        self.queue = queue
        self.endpoints = endpoints
        self.capacity = capacity
        self.judge_url = judge_url
        self.judge_timeout_s = judge_timeout_s
        self.generate_timeout_s = generate_timeout_s
        self.tokenizer_cache = tokenizer_cache
        self.on_done = on_done
        self.write = write  # (queue call, what) -> its value; the worker's retries Redis errors
        self._tokenizers: OrderedDict[str, HFTokenizer] = OrderedDict()
        self._inflight: dict[str, Delivery] = {}  # entry id -> delivery
        self._lock = threading.Lock()
        self._freed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-remote", daemon=True)
        self._thread.start()
        self._agent: AsyncAgent | None = None
        self._generator: RemoteGenerator | None = None

    # -- the worker's side (main thread) -----------------------------------------------------
    def free(self) -> int:
        with self._lock:
            return self.capacity - len(self._inflight)

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._inflight.values())

    def wait_free(self, timeout_s: float) -> bool:
        """Block until a slot frees (or ``timeout_s``); True if one is free."""
        self._freed.clear()
        return self.free() > 0 or self._freed.wait(timeout_s)

    def submit(self, delivery: Delivery) -> Future[None]:
        with self._lock:
            self._inflight[delivery.entry_id] = delivery
        return asyncio.run_coroutine_threadsafe(self._run(delivery), self._loop)

    def close(self, drain_s: float = 60.0) -> None:
        """Let the episodes in flight finish (up to ``drain_s``), then stop the loop."""
        waited = 0.0
        while self.free() < self.capacity and waited < drain_s:
            self._freed.wait(0.5)
            waited += 0.5
        asyncio.run_coroutine_threadsafe(self._aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # -- the lane's side (its event loop) ----------------------------------------------------
    def _parts(self) -> tuple[AsyncAgent, RemoteGenerator]:
        if self._agent is None or self._generator is None:
            keys = self.endpoints.keys
            judge = JudgeClient(self.judge_url, keys.of("judge"), timeout_s=self.judge_timeout_s) \
                if self.judge_url else None
            self._agent = AsyncAgent(AsyncSearcher(self.endpoints), judge)
            # a rollout server is none of the four services: it gets the one key for all (WORKER_API_KEY)
            self._generator = RemoteGenerator(keys.fallback(), timeout_s=self.generate_timeout_s)
        return self._agent, self._generator

    async def _tokenizer(self, name: str) -> HFTokenizer:
        if name not in self._tokenizers:
            self._tokenizers[name] = await asyncio.to_thread(HFTokenizer, name)
            while len(self._tokenizers) > self.tokenizer_cache:
                self._tokenizers.popitem(last=False)
        self._tokenizers.move_to_end(name)
        return self._tokenizers[name]

    async def _run(self, d: Delivery) -> None:
        req = d.request
        assert req.generation is not None
        agent, generator = self._parts()
        try:
            tokens = await self._tokenizer(req.generation.tokenizer)
            steps = EpisodeSteps(tokens, self.name, req.policy_version)
            generate = generator.bind(req.episode_id, req.generation.base_urls, tokens.decode,
                                      req.generation.sampling)
            result = await agent.run(req, steps, generate)
        except Exception as exc:  # the one place a remote episode's crash is contained (logged)
            log.exception("%s: remote episode %s raised", self.name, req.episode_id)
            error = f"{type(exc).__name__}: {exc}"
            await asyncio.to_thread(self.write, partial(self.queue.fail, d, error, self.name), "fail")
        else:
            if await asyncio.to_thread(self.write, partial(self.queue.complete, d, result), "complete") is False:
                log.info("%s: episode %s already had a result; this run was dropped", self.name, req.episode_id)
            self.on_done()
        finally:
            generator.release(req.episode_id)
            with self._lock:
                self._inflight.pop(d.entry_id, None)
            self._freed.set()

    async def _aclose(self) -> None:
        if self._agent is not None:
            await self._agent.searcher.close()
            if self._agent.judge is not None:
                await self._agent.judge.aclose()
        if self._generator is not None:
            await self._generator.close()
