"""The judge engine: scores (question, gold, prediction) items by an LLM verdict or a rule metric.

- Rule methods (``em``, ``acc``, ``cover_em``, ``f1``, ``recall``) are :mod:`shared.metrics` (max over gold).
- ``llm`` renders a versioned prompt (:mod:`services.judge.prompts`), looks the verdict up in the
  Redis cache, sends the misses through the shared :class:`shared.batching.MicroBatcher` (items of
  concurrent requests share backend batches; identical items in flight are judged once) and parses each reply into
  correct / incorrect / unparseable. Score 1.0 only for "correct"; an unparseable reply scores 0.0
  and says so in its detail.

No HTTP here: ``app.py`` maps :class:`JudgeInputError` to 422, :class:`QueueFull` to 503 and
:class:`JudgeBackendError` to 502.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.judge.cache import VerdictCache, cache_key
from services.judge.config import JudgeSettings
from services.judge.prompts import Messages, get_prompt, parse_verdict
from shared.batching import MicroBatcher, QueueFull
from shared.llm import LLMBackend, SamplingParams
from shared.metrics import METRICS, best_match
from shared.schemas import JudgeDetail, JudgeItem, JudgeResponse

log = logging.getLogger(__name__)

__all__ = ["Judge", "JudgeBackendError", "JudgeInputError", "QueueFull", "RULE_METHODS"]

RULE_METHODS = tuple(METRICS)  # em, acc, cover_em, f1, recall


class JudgeInputError(ValueError):
    """A request the judge cannot take as given (the client's fault)."""


class JudgeBackendError(RuntimeError):
    """The judge model's backend failed for a batch."""


class JudgeMetrics:
    def __init__(self, registry: CollectorRegistry | None):
        reg = registry if registry is not None else CollectorRegistry()  # a private one by default
        self.items = Counter("judge_items", "items judged", ["method"], registry=reg)
        self.verdicts = Counter("judge_verdicts", "llm verdicts returned", ["verdict"], registry=reg)
        self.cache_hits = Counter("judge_cache_hits", "llm items answered from the verdict cache", registry=reg)
        self.cache_misses = Counter("judge_cache_misses", "llm items looked up and not in the cache", registry=reg)
        self.cache_errors = Counter("judge_cache_errors", "verdict cache operations that failed", registry=reg)
        self.cache_skipped = Counter("judge_cache_skipped", "llm items judged without the cache (off/down)", registry=reg)
        self.coalesced = Counter("judge_inflight_shared", "llm items that joined an identical item in flight", registry=reg)
        self.rejected = Counter("judge_rejected", "llm items refused because the queue was full", registry=reg)
        self.queue = Gauge("judge_queue_items", "llm items waiting for the backend", registry=reg)
        self.batch_size = Histogram("judge_batch_size", "items per backend call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=reg)
        self.backend_seconds = Histogram("judge_backend_seconds", "seconds per backend call",
                                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=reg)


class Judge:
    """Build once (``Judge(settings, backend, cache)``), ``await start()``, then ``await judge(...)``."""

    def __init__(self, settings: JudgeSettings, backend: LLMBackend | None, cache: VerdictCache | None = None,
                 registry: CollectorRegistry | None = None):
        self.settings = settings
        self.backend = backend
        self.cache = cache
        self.prompt = get_prompt(settings.prompt_version)
        self.sampling = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=0.0)
        self.metrics = JudgeMetrics(registry)
        self.metrics.queue.set_function(lambda: self.batcher.queued)
        self.batcher: MicroBatcher[Messages, str] = MicroBatcher(
            self._chat, max_batch=settings.max_batch, max_wait_s=settings.batch_wait_ms / 1000,
            max_queue=settings.max_queue, concurrency=settings.concurrency, on_batch=self._observe_batch,
            name="the judge queue", unit="items")
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self._rule_slots = asyncio.Semaphore(2)  # rule requests scored at once (the rest wait their turn)

    @property
    def model_name(self) -> str:
        return self.backend.model_name if self.backend is not None else ""

    async def start(self) -> None:
        """Nothing to start any more (the batcher starts with its first item); kept for callers."""

    async def close(self) -> None:
        await self.batcher.close()
        if self.cache is not None:
            await self.cache.close()

    # -- entry point ----------------------------------------------------------------------
    async def judge(self, items: Sequence[JudgeItem], method: str) -> JudgeResponse:
        if not items:
            raise JudgeInputError("items is empty: send at least one {question, gold, prediction}")
        if len(items) > self.settings.max_items:
            raise JudgeInputError(f"{len(items)} items in one request; the limit is {self.settings.max_items}")
        if method == "llm":
            response = await self._judge_llm(items)
        elif method in METRICS:
            work = sum(len(item.gold) * len(item.prediction) + sum(map(len, item.gold)) for item in items)
            if work > self.settings.max_rule_chars:
                raise JudgeInputError(f"this request asks to compare {work:,} characters by rule "
                                      f"(#gold x prediction length, summed over items); the limit is "
                                      f"{self.settings.max_rule_chars:,}: send fewer or shorter items")
            async with self._rule_slots:  # CPU work off the event loop: /health and other requests still answer
                response = await asyncio.to_thread(self._judge_rule, items, method)
        else:
            raise JudgeInputError(f"unknown method {method!r}; valid: llm, {', '.join(RULE_METHODS)}")
        self.metrics.items.labels(method).inc(len(items))
        return response

    # -- rule methods -----------------------------------------------------------------------
    @staticmethod
    def _judge_rule(items: Sequence[JudgeItem], method: str) -> JudgeResponse:
        matches = [best_match(item.prediction, item.gold, method) for item in items]
        return JudgeResponse(scores=[m.score for m in matches],
                             details=[JudgeDetail(matched_gold=m.gold) for m in matches])

    # -- llm method -------------------------------------------------------------------------
    async def _judge_llm(self, items: Sequence[JudgeItem]) -> JudgeResponse:
        if self.backend is None:
            raise JudgeInputError("the llm method is not available: this judge has no LLM backend")
        keys = [cache_key(self.settings.cache_prefix, self.model_name, self.prompt.version, item.question,
                          item.gold, item.prediction) for item in items]
        unique = list(dict.fromkeys(keys))
        cached = await self._cache_lookup(unique)

        # Everything not cached: join an identical item in flight, or queue it (all or nothing).
        waiting: dict[str, asyncio.Future[str]] = {}
        to_queue: list[str] = []
        for key in unique:
            if key in cached:
                continue
            if key in self._inflight:
                waiting[key] = self._inflight[key]
                self.metrics.coalesced.inc()
            else:
                to_queue.append(key)
        if to_queue:
            first: dict[str, JudgeItem] = {}
            for key, item in zip(keys, items, strict=True):
                first.setdefault(key, item)
            conversations = [self.prompt.render(first[k].question, first[k].gold, first[k].prediction,
                                                self.settings.max_prediction_chars) for k in to_queue]
            try:
                futures = self.batcher.submit(conversations)
            except QueueFull:
                self.metrics.rejected.inc(len(to_queue))
                raise
            for key, future in zip(to_queue, futures, strict=True):
                self._inflight[key] = future
                future.add_done_callback(self._forget(key))
                waiting[key] = future

        raws: dict[str, str] = {}
        if waiting:
            results = await asyncio.gather(*waiting.values(), return_exceptions=True)
            for key, result in zip(waiting, results, strict=True):
                if isinstance(result, BaseException):
                    raise JudgeBackendError(f"the judge model failed: {type(result).__name__}: {result}") \
                        from result
                raws[key] = result
        await self._cache_store({k: raws[k] for k in to_queue})

        scores: list[float] = []
        details: list[JudgeDetail] = []
        for key in keys:
            from_cache = key in cached
            raw = cached[key] if from_cache else raws[key]
            verdict = parse_verdict(raw)
            scores.append(1.0 if verdict == "correct" else 0.0)
            details.append(JudgeDetail(verdict=verdict, raw=raw, cached=from_cache))  # type: ignore[arg-type]
            self.metrics.verdicts.labels(verdict).inc()
        return JudgeResponse(scores=scores, details=details)

    def _forget(self, key: str) -> Callable[[asyncio.Future[str]], None]:
        def done(_: asyncio.Future[str]) -> None:
            self._inflight.pop(key, None)

        return done

    async def _cache_lookup(self, keys: list[str]) -> dict[str, str]:
        if self.cache is None:
            self.metrics.cache_skipped.inc(len(keys))
            return {}
        errors = self.cache.errors
        found = await self.cache.get_many(keys)
        self.metrics.cache_errors.inc(self.cache.errors - errors)
        if found is None:
            self.metrics.cache_skipped.inc(len(keys))
            return {}
        self.metrics.cache_hits.inc(len(found))
        self.metrics.cache_misses.inc(len(keys) - len(found))
        return found

    async def _cache_store(self, entries: dict[str, str]) -> None:
        if self.cache is None or not entries:
            return
        errors = self.cache.errors
        await self.cache.set_many(entries)
        self.metrics.cache_errors.inc(self.cache.errors - errors)

    def _chat(self, conversations: list[Messages]) -> list[str]:
        """One backend call (runs in a worker thread)."""
        assert self.backend is not None
        return self.backend.chat(conversations, self.sampling)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.backend_seconds.observe(seconds)

    def info(self) -> dict[str, object]:
        return {
            "backend": self.settings.llm.backend,
            "model": self.model_name,
            "base_url": self.settings.llm.base_url,
            "prompt_version": self.prompt.version,
            "methods": ["llm", *RULE_METHODS],
            "cache": self.settings.cache_mode,
            "cache_ttl_s": self.settings.cache_ttl_s,
            "max_items": self.settings.max_items,
            "max_batch": self.settings.max_batch,
            "batch_wait_ms": self.settings.batch_wait_ms,
            "max_queue": self.settings.max_queue,
            "backend_concurrency": self.settings.concurrency,
        }


def build_judge(settings: JudgeSettings, registry: CollectorRegistry | None = None) -> Judge:
    """Load the backend (may take seconds: call it off the event loop) and connect the cache."""
    from shared.llm import get_backend

    start = time.monotonic()
    backend = get_backend(settings.llm)
    cache = (VerdictCache(settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_s, settings.redis_retry_s)
             if settings.redis_url else None)
    log.info("judge ready: %s backend, model %s, prompt %s, cache %s (%.1fs)", settings.llm.backend,
             backend.model_name, settings.prompt_version, settings.cache_mode, time.monotonic() - start)
    return Judge(settings, backend, cache, registry)
