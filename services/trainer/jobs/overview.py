"""What the dashboard's cluster panel shows (``GET /cluster``): each configured service's ``/ready``,
Redis, the episode queue's depth and the live rollout workers.

Every probe has a short timeout and they run together, so a service that is down costs the page at
most ``timeout_s``; a failure is a ``ready: false`` with the reason, never an error of the endpoint.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import redis

from services.trainer.rollout.queue import EpisodeQueue
from shared.schemas import ClusterView, QueueStats, ServiceProbe, WorkerView


class ClusterProbe:
    """Built once at start-up (an HTTP client and a queue handle); :meth:`snapshot` per request."""

    def __init__(self, redis_url: str, services: dict[str, str], self_url: str = "", timeout_s: float = 2.0):
        self.redis_url = redis_url
        self.services = services
        self.self_url = self_url
        self.http = httpx.AsyncClient(timeout=timeout_s)
        self.queue = EpisodeQueue(redis_url)

    async def aclose(self) -> None:
        await self.http.aclose()
        self.queue.close()

    async def _ready(self, name: str, url: str) -> ServiceProbe:
        try:
            response = await self.http.get(url.rstrip("/") + "/ready")
        except httpx.HTTPError as exc:
            return ServiceProbe(name=name, url=url, ready=False, detail=f"unreachable ({type(exc).__name__})")
        ready = response.status_code == 200
        return ServiceProbe(name=name, url=url, ready=ready, detail="ready" if ready else f"HTTP {response.status_code}")

    def _queue(self) -> tuple[ServiceProbe, QueueStats | None, list[WorkerView]]:
        scheme, _, rest = self.redis_url.partition("://")
        url = f"{scheme}://{rest.rsplit('@', 1)[-1]}"  # never show a password
        try:
            stats = self.queue.stats()
            workers = self.queue.workers()
        except redis.RedisError as exc:
            return ServiceProbe(name="redis", url=url, ready=False, detail=f"unreachable ({type(exc).__name__})"), \
                None, []
        now = time.time()
        views = [WorkerView(name=name, policies=list(info.get("policies", [])), completed=int(info.get("completed", 0)),
                            seen_s=round(max(0.0, now - float(info.get("seen", now))), 1))
                 for name, info in sorted(workers.items())]
        queue = QueueStats(waiting=stats["waiting"], pending=stats["pending"], dead=stats["dead"])
        return ServiceProbe(name="redis", url=url, ready=True, detail="ready"), queue, views

    async def snapshot(self) -> ClusterView:
        probes = await asyncio.gather(*(self._ready(n, u) for n, u in self.services.items()))
        redis_probe, queue, workers = await asyncio.to_thread(self._queue)
        trainer = ServiceProbe(name="trainer", url=self.self_url, ready=True, detail="ready (this service)")
        return ClusterView(services=[trainer, *probes], redis=redis_probe, queue=queue, workers=workers)
