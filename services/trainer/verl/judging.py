"""The judge service for verl's reward: answers of concurrent samples batched into one request, and cached.

verl's reward workers are async Ray actors: every sample's ``compute_score`` runs on one event loop, so
the answers waiting at the same moment leave together (one ``POST /judge``, up to ``max_batch`` items,
after at most ``window_s``), and a (question, gold, answer) already judged is not asked again. Kept in a
module of its own (verl loads ``reward.py`` by file path, as a fresh module each time).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from services.trainer.verl.loop_config import LoopRuntime
from shared.batching import MicroBatcher
from shared.client import JudgeClient

CACHE_SIZE = 100_000


class JudgeBatcher:
    """Answers of concurrent samples go to the judge service together; a (question, gold, answer) seen
    before is not asked again."""

    def __init__(self, url: str, api_key: str | None, *, max_batch: int = 64, window_s: float = 0.02):
        self.client = JudgeClient(url, api_key, timeout_s=120.0)
        self.cache: OrderedDict[tuple[str, tuple[str, ...], str], float] = OrderedDict()
        self.batcher: MicroBatcher[dict[str, Any], float] = MicroBatcher(
            self._judge, max_batch=max_batch, max_wait_s=window_s, max_queue=1 << 16, concurrency=4,
            name="the judge batcher")
        self.calls = 0  # POST /judge requests sent (tests and logs)

    def _judge(self, items: list[dict[str, Any]]) -> list[float]:
        self.calls += 1
        return [float(s) for s in self.client.judge(items, "llm").scores]

    async def score(self, question: str, gold: list[str], answer: str) -> float:
        key = (question, tuple(gold), answer)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        value = await self.batcher.submit([{"question": question, "gold": gold, "prediction": answer}])[0]
        self.cache[key] = value
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return value


_JUDGES: dict[tuple[int, str], JudgeBatcher] = {}


def judge_for(url: str) -> JudgeBatcher:
    """One batcher per event loop and judge URL (verl's reward workers are async Ray actors)."""
    key = (id(asyncio.get_running_loop()), url)
    if key not in _JUDGES:
        _JUDGES[key] = JudgeBatcher(url, LoopRuntime().keys().of("judge"))
    return _JUDGES[key]
