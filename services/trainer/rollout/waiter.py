"""Waiting for many episodes at once from one process: a future per episode, one reader per job.

    waiter = ResultWaiter(redis_url, job_id)            # one per process and job (redis.asyncio)
    future = waiter.expect(episode_id)                   # before the episode is enqueued
    queue.enqueue([request]) ... result = await waiter.wait(future, episode_id, timeout_s)

searchlab's verl agent loop runs one coroutine per sample, thousands at once in one process; each
would otherwise poll Redis for its own result. Here one task follows the job's result stream
(``searchlab:results:<job>``, :mod:`services.trainer.rollout.queue`) with a blocking ``XREAD`` and
hands each result to the future of its episode. What it has read it removes: the result entry, and
the episode's request, attempt counter and done marker, so a long run's streams stay as small as its
episodes in flight. The job id is this process's own (no other process reads its stream), so an
entry nobody expects (a duplicate run's second result, a previous process's leftover) is garbage
and is removed too. A re-delivery of an episode already forgotten finds no request and is dropped
by the queue (``EpisodeQueue._deliver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from services.trainer.rollout.queue import job_key, results_key
from shared.schemas import EpisodeResult

log = logging.getLogger(__name__)


class ResultWaiter:
    """Futures for the results of one job, fed by a single reader of its result stream."""

    def __init__(self, redis_url: str, job_id: str, *, block_ms: int = 1000, count: int = 512):
        self.redis = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
        self.job_id = job_id
        self.block_ms = block_ms
        self.count = count
        self._futures: dict[str, asyncio.Future[EpisodeResult]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._last = "0-0"

    def expect(self, episode_id: str) -> asyncio.Future[EpisodeResult]:
        """A future for ``episode_id``'s result; call before enqueueing it, so no result is missed."""
        future: asyncio.Future[EpisodeResult] = asyncio.get_running_loop().create_future()
        self._futures[episode_id] = future
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name=f"results:{self.job_id}")
        return future

    async def wait(self, future: asyncio.Future[EpisodeResult], episode_id: str, timeout_s: float) -> EpisodeResult:
        """The result, or ``TimeoutError`` naming the episode after ``timeout_s``."""
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"episode {self.job_id}/{episode_id}: no result after {timeout_s:.0f}s "
                               "(are rollout workers running on this queue?)") from None
        finally:
            self._futures.pop(episode_id, None)

    async def _read(self) -> None:
        while self._futures:
            try:
                resp = await self.redis.xread({results_key(self.job_id): self._last}, count=self.count,
                                              block=self.block_ms)
            except (OSError, redis.RedisError) as exc:  # the reader outlives a Redis blip; waiters time out
                log.warning("reading results of %s failed: %s; retrying", self.job_id, exc)
                await asyncio.sleep(1.0)
                continue
            entries = [e for _, stream in cast(list[Any], resp or []) for e in stream]
            if entries:
                self._last = entries[-1][0]
                await self._deliver(entries)

    async def _deliver(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        done: list[str] = []
        for _, fields in entries:
            result = EpisodeResult.model_validate_json(fields["result"])
            future = self._futures.get(result.episode_id)
            if future is not None and not future.done():
                future.set_result(result)
                done.append(result.episode_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xdel(results_key(self.job_id), *[entry_id for entry_id, _ in entries])
        if done:
            for what in ("requests", "attempts", "done"):
                pipe.hdel(job_key(self.job_id, what), *done)
        await pipe.execute()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.redis.aclose()
