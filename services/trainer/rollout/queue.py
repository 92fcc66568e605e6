"""The episode queue on Redis Streams (DESIGN.md §4).

Keys (``job`` is a job id, ``ep`` an episode id):

- ``searchlab:episodes``                stream of requests; consumer group ``workers``
- ``searchlab:job:<job>:requests``      hash ep -> request JSON (the idempotency key of enqueue; kept for re-queues)
- ``searchlab:job:<job>:attempts``      hash ep -> deliveries so far
- ``searchlab:job:<job>:done``          hash ep -> id of its entry in the result stream (exactly one result)
- ``searchlab:results:<job>``           stream of results of one job
- ``searchlab:episodes:dead``           dead-letter stream: poison episodes with their error
- ``searchlab:workers``                 hash worker name -> JSON {policies, completed, weight_sync_failures, seen}

Life of an episode: ``enqueue`` adds it once (a second enqueue of the same id is a no-op) ->
a worker ``claim``s it (``XAUTOCLAIM`` of entries idle longer than the visibility timeout first,
then ``XREADGROUP``) -> ``complete`` writes the result and ``XACK``s in one Lua script, so a re-run
never yields a second result -> or ``fail`` re-queues it, and after ``max_attempts`` deliveries
(failures or worker deaths) it goes to the dead-letter stream and an error result is written, so
whoever waits for the job is not left waiting forever.

Attempts are counted per episode: a worker takes a reclaimed entry (one whose worker died or hung)
on its own (:meth:`EpisodeQueue.reclaim` with ``count=1``) and runs it alone, so when an episode
kills its worker only that episode is charged again, never the batch-mates it died beside (each
loses at most the one delivery of the batch). Hung workers: :meth:`EpisodeQueue.heartbeat` stops
refreshing an entry ``episode_deadline_s`` after it was claimed, so an episode stuck in a worker
whose heartbeat thread still beats becomes reclaimable regardless (a late result is dropped).

Redis errors: a lost consumer group (Redis restarted without its data) is re-created on the next
read (``NOGROUP``); the worker backs off and retries every other error (:mod:`.worker`).
Bounds: the dead-letter stream keeps its last ``dead_maxlen`` entries; a job's keys are deleted when
the job ends (:meth:`EpisodeQueue.delete_job`), and every write to them renews their time to live
(``job_ttl_s``), so the keys of a job nobody finishes (its trainer died, an eval's results) go away
by themselves ``job_ttl_s`` after its last activity.

Policies: every request names the policy it is generated with (:class:`shared.schemas.PolicyRef`:
owner, version, model folder); there is no cluster-wide policy slot, so two jobs at once each get
their own. Staleness: results carry the policy version that generated them; :meth:`EpisodeQueue.collect`
drops results older than ``current - max_staleness`` and re-queues those episodes with the current policy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from shared.schemas import EpisodeRequest, EpisodeResult, PolicyRef

log = logging.getLogger(__name__)

EPISODES = "searchlab:episodes"
GROUP = "workers"
DEAD = "searchlab:episodes:dead"
WORKERS = "searchlab:workers"
JOB_TTL_S = 3 * 24 * 3600  # a job's keys live this long past their last write


def job_key(job_id: str, what: str) -> str:
    return f"searchlab:job:{job_id}:{what}"


def results_key(job_id: str) -> str:
    return f"searchlab:results:{job_id}"


# KEYS: requests hash, episodes stream. ARGV: episode id, request JSON, job id, ttl. -> stream id, or false if known.
_ENQUEUE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('XADD', KEYS[2], '*', 'job', ARGV[3], 'episode', ARGV[1])
"""
# KEYS: done hash, results stream, episodes stream. ARGV: episode id, result JSON, group, entry id, ttl.
_COMPLETE = """
local written = 0
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local id = redis.call('XADD', KEYS[2], '*', 'episode', ARGV[1], 'result', ARGV[2])
  redis.call('HSET', KEYS[1], ARGV[1], id)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  written = 1
end
redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[3], ARGV[4])
return written
"""
# KEYS: episodes stream. ARGV: group, old entry id, job id, episode id. -> new entry id
_RETRY = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return redis.call('XADD', KEYS[1], '*', 'job', ARGV[3], 'episode', ARGV[4])
"""
# KEYS: requests hash, done hash, results stream, attempts hash, episodes stream.
# ARGV: episode id, new request JSON, job id. Drops the stale result and queues the episode again.
_REQUEUE = """
local rid = redis.call('HGET', KEYS[2], ARGV[1])
if rid then redis.call('XDEL', KEYS[3], rid) end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XADD', KEYS[5], '*', 'job', ARGV[3], 'episode', ARGV[1])
"""


@dataclass
class Delivery:
    """One episode handed to a worker: the stream entry to acknowledge and the request."""

    entry_id: str
    request: EpisodeRequest
    attempt: int  # 1 on the first delivery
    reclaimed: bool = False  # taken over from a worker that died or hung: run it alone
    claimed_at: float = field(default_factory=time.monotonic)  # when this worker got it (the deadline's start)


class EpisodeQueue:
    """Producer and consumer side of the queue over one Redis connection pool."""

    def __init__(self, redis_url: str, *, visibility_timeout_s: float = 120.0, max_attempts: int = 3,
                 episode_deadline_s: float | None = None, job_ttl_s: int = JOB_TTL_S, dead_maxlen: int = 10_000):
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=30,
                                          health_check_interval=30)
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self.episode_deadline_s = episode_deadline_s  # None: an entry is refreshed as long as its worker beats
        self.job_ttl_s = job_ttl_s  # a job's keys expire this long after their last write
        self.dead_maxlen = dead_maxlen  # dead letters kept (the oldest are trimmed)
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self._complete = self.redis.register_script(_COMPLETE)
        self._retry = self.redis.register_script(_RETRY)
        self._requeue = self.redis.register_script(_REQUEUE)
        self._claim_cursor = "0-0"
        self.ensure_group()

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(EPISODES, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def close(self) -> None:
        self.redis.close()

    # -- producer ---------------------------------------------------------------------------
    def enqueue(self, requests: Iterable[EpisodeRequest]) -> int:
        """Queue episodes; an episode id already enqueued for its job is skipped. Returns how many were added."""
        pipe = self.redis.pipeline(transaction=False)
        for req in requests:
            self._enqueue(keys=[job_key(req.job_id, "requests"), EPISODES],
                          args=[req.episode_id, req.model_dump_json(), req.job_id, self.job_ttl_s], client=pipe)
        return sum(1 for r in pipe.execute() if r)

    def all_results(self, job_id: str) -> list[EpisodeResult]:
        """Every result of a job written so far, in completion order."""
        entries = cast(list[Any], self.redis.xrange(results_key(job_id)))
        return [EpisodeResult.model_validate_json(fields["result"]) for _, fields in entries]

    def follow(self, job_id: str, timeout_s: float, progress: Callable[[], str] = lambda: "",
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[list[EpisodeResult]]:
        """The job's results from the first on, in completion order, a batch per read as they arrive.

        Raises ``TimeoutError`` (with ``progress()`` in its message) once ``timeout_s`` has passed; ends
        when ``should_stop()``. The caller stops iterating when it has what it waits for."""
        last = "0-0"
        deadline = time.monotonic() + timeout_s
        while not should_stop():
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise TimeoutError(f"job {job_id}: {progress()} after {timeout_s:.0f}s")
            resp = self.redis.xread({results_key(job_id): last}, count=256, block=min(left_ms, 1000))
            batch = []
            for _, entries in cast(list[Any], resp or []):
                for entry_id, fields in entries:
                    last = entry_id
                    batch.append(EpisodeResult.model_validate_json(fields["result"]))
            if batch:
                yield batch

    def wait(self, job_id: str, n: int, timeout_s: float = 600.0,
             on_result: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
        """Block until the job has ``n`` results (or raise ``TimeoutError``); results in completion order."""
        out: list[EpisodeResult] = []
        if n <= 0:
            return out
        for batch in self.follow(job_id, timeout_s, lambda: f"{len(out)}/{n} results ({self.stats()})"):
            for result in batch:
                out.append(result)
                if on_result is not None:
                    on_result(result)
            if len(out) >= n:
                break
        return out

    def collect(self, job_id: str, episode_ids: Iterable[str], current: PolicyRef, max_staleness: int = 0,
                timeout_s: float = 600.0) -> list[EpisodeResult]:
        """Results of ``episode_ids``, each generated by a policy no older than ``current.version - max_staleness``.

        A staler result is dropped and its episode re-queued (with the ``current`` policy); this waits
        for its fresh result. Returns one result per episode, in completion order.
        """
        wanted = set(episode_ids)
        fresh: dict[str, EpisodeResult] = {}
        oldest = current.version - max_staleness
        for batch in self.follow(job_id, timeout_s, lambda: f"{len(fresh)}/{len(wanted)} fresh results"):
            for result in batch:
                if result.episode_id not in wanted or result.episode_id in fresh:
                    continue
                if result.policy_version < oldest and result.finish_reason != "error":
                    log.info("job %s: result of %s is stale (v%d < v%d); re-queued", job_id,
                             result.episode_id, result.policy_version, oldest)
                    self.requeue(job_id, result.episode_id, current)
                else:
                    fresh[result.episode_id] = result
            if len(fresh) >= len(wanted):
                break
        return list(fresh.values())

    def requeue(self, job_id: str, episode_id: str, policy: PolicyRef) -> None:
        """Drop an episode's result and queue it again, to be generated by ``policy``."""
        raw = self.redis.hget(job_key(job_id, "requests"), episode_id)
        if raw is None:
            raise KeyError(f"job {job_id} has no episode {episode_id!r}")
        req = EpisodeRequest.model_validate_json(cast(str, raw)).model_copy(update={"policy": policy})
        self._requeue(keys=[job_key(job_id, "requests"), job_key(job_id, "done"), results_key(job_id),
                            job_key(job_id, "attempts"), EPISODES],
                      args=[episode_id, req.model_dump_json(), job_id])

    def delete_job(self, job_id: str) -> None:
        """Forget a finished job's requests, results and counters."""
        self.redis.delete(*(job_key(job_id, w) for w in ("requests", "attempts", "done")), results_key(job_id))

    # -- consumer ---------------------------------------------------------------------------
    def claim(self, consumer: str, count: int, block_ms: int = 1000) -> list[Delivery]:
        """Up to ``count`` episodes for ``consumer``: reclaimed stale ones first, then new ones."""
        deliveries = self.reclaim(consumer, count)
        if len(deliveries) < count:
            deliveries += self.read(consumer, count - len(deliveries), block_ms if not deliveries else 0)
        return deliveries

    def reclaim(self, consumer: str, count: int) -> list[Delivery]:
        """Up to ``count`` entries idle past the visibility timeout (their worker died or hung), now ``consumer``'s."""
        min_idle = int(self.visibility_timeout_s * 1000)
        resp = cast(list[Any], self._grouped(lambda: self.redis.xautoclaim(
            EPISODES, GROUP, consumer, min_idle, self._claim_cursor, count=count)))
        if not resp:
            return []
        self._claim_cursor = resp[0]
        entries = [e for e in resp[1] if e and e[1]]
        if entries:
            log.info("%s reclaimed %d stale episode(s)", consumer, len(entries))
        return [d for d in (self._deliver(entry_id, fields, consumer, reclaimed=True)
                            for entry_id, fields in entries) if d]

    def read(self, consumer: str, count: int, block_ms: int = 1000) -> list[Delivery]:
        """Up to ``count`` new episodes, waiting up to ``block_ms`` for the first (0: do not wait)."""
        block = block_ms if block_ms > 0 else None  # (0 would block forever)
        read = self._grouped(lambda: self.redis.xreadgroup(GROUP, consumer, {EPISODES: ">"}, count=count,
                                                           block=block))
        entries = [e for _, new in cast(list[Any], read or []) for e in new]
        return [d for d in (self._deliver(entry_id, fields, consumer) for entry_id, fields in entries) if d]

    def _grouped(self, call: Callable[[], Any]) -> Any:
        """``call()``; if the consumer group is gone (Redis lost its data), re-create it and return None."""
        try:
            return call()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group %s of %s is gone (Redis lost its data?); re-creating it", GROUP, EPISODES)
            self.ensure_group()
            self._claim_cursor = "0-0"
            return None

    def _deliver(self, entry_id: str, fields: dict[str, str], consumer: str, reclaimed: bool = False) -> Delivery | None:
        job_id, episode_id = fields["job"], fields["episode"]
        if self.redis.hexists(job_key(job_id, "done"), episode_id):  # already answered (e.g. re-delivered)
            self.redis.xack(EPISODES, GROUP, entry_id)
            self.redis.xdel(EPISODES, entry_id)
            return None
        raw = self.redis.hget(job_key(job_id, "requests"), episode_id)
        if raw is None:  # the job was deleted
            self.redis.xack(EPISODES, GROUP, entry_id)
            self.redis.xdel(EPISODES, entry_id)
            return None
        request = EpisodeRequest.model_validate_json(cast(str, raw))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(job_key(job_id, "attempts"), episode_id, 1)
        pipe.expire(job_key(job_id, "attempts"), self.job_ttl_s)
        attempt = int(pipe.execute()[0])
        if attempt > self.max_attempts:
            self._dead_letter(entry_id, request, f"delivered {attempt - 1} times without a result "
                                                 "(its workers died or timed out)", consumer)
            return None
        return Delivery(entry_id, request, attempt, reclaimed=reclaimed)

    def touch(self, consumer: str, entry_ids: list[str]) -> None:
        """Heartbeat: reset the idle time of in-flight entries so they are not reclaimed."""
        if entry_ids:
            self.redis.xclaim(EPISODES, GROUP, consumer, 0, list[Any](entry_ids), justid=True)

    def heartbeat(self, consumer: str, deliveries: list[Delivery]) -> list[Delivery]:
        """:meth:`touch` the deliveries still within ``episode_deadline_s`` of their claim; returns the others.

        An episode past its deadline is left to go idle, so another worker reclaims it after the
        visibility timeout even though this worker's heartbeat goes on (its main loop hangs)."""
        now = time.monotonic()
        deadline = self.episode_deadline_s
        expired = [d for d in deliveries if deadline is not None and now - d.claimed_at > deadline]
        self.touch(consumer, [d.entry_id for d in deliveries if d not in expired])
        return expired

    def complete(self, delivery: Delivery, result: EpisodeResult) -> bool:
        """Write the result (once per episode) and acknowledge. False if the episode already had one."""
        req = delivery.request
        written = self._complete(keys=[job_key(req.job_id, "done"), results_key(req.job_id), EPISODES],
                                 args=[req.episode_id, result.model_dump_json(), GROUP, delivery.entry_id,
                                       self.job_ttl_s])
        return bool(written)

    def fail(self, delivery: Delivery, error: str, consumer: str) -> None:
        """An episode raised: queue it again, or dead-letter it after ``max_attempts``."""
        req = delivery.request
        if delivery.attempt >= self.max_attempts:
            self._dead_letter(delivery.entry_id, req, error, consumer)
        else:
            log.warning("episode %s/%s failed (attempt %d/%d): %s", req.job_id, req.episode_id, delivery.attempt,
                        self.max_attempts, error)
            self._retry(keys=[EPISODES], args=[GROUP, delivery.entry_id, req.job_id, req.episode_id])

    def _dead_letter(self, entry_id: str, req: EpisodeRequest, error: str, consumer: str) -> None:
        log.error("episode %s/%s dead-lettered: %s", req.job_id, req.episode_id, error)
        self.redis.xadd(DEAD, {"job": req.job_id, "episode": req.episode_id, "error": error[:2000],
                               "worker": consumer, "request": req.model_dump_json()},
                        maxlen=self.dead_maxlen, approximate=False)  # rare: exact trimming is cheap
        result = EpisodeResult(job_id=req.job_id, episode_id=req.episode_id, group_id=req.group_id,
                               policy_version=req.policy_version, worker=consumer, finish_reason="error",
                               error=f"dead-lettered: {error}"[:2000])
        self._complete(keys=[job_key(req.job_id, "done"), results_key(req.job_id), EPISODES],
                       args=[req.episode_id, result.model_dump_json(), GROUP, entry_id, self.job_ttl_s])

    def dead_letters(self) -> list[dict[str, str]]:
        return [fields for _, fields in cast(list[Any], self.redis.xrange(DEAD))]

    # -- workers and status -----------------------------------------------------------------
    def register_worker(self, name: str, policies: list[str], completed: int, weight_sync_failures: int = 0) -> None:
        """A worker's heartbeat: it is alive, with ``policies`` (``owner@vN``) loaded; ``weight_sync_failures``:
        episodes it re-queued because its rollout server did not load their policy."""
        info = {"policies": policies, "completed": completed, "weight_sync_failures": weight_sync_failures,
                "seen": time.time()}
        self.redis.hset(WORKERS, name, json.dumps(info))

    def unregister_worker(self, name: str) -> None:
        self.redis.hdel(WORKERS, name)

    def workers(self, max_age_s: float | None = None) -> dict[str, dict[str, Any]]:
        """Workers that reported within ``max_age_s`` (default: the visibility timeout)."""
        max_age = self.visibility_timeout_s if max_age_s is None else max_age_s
        now = time.time()
        out = {}
        for name, raw in cast(dict[str, str], self.redis.hgetall(WORKERS)).items():
            info = json.loads(raw)
            if now - float(info.get("seen", 0)) <= max_age:
                out[name] = info
        return out

    def stats(self) -> dict[str, int]:
        """Queue depth for ``searchlab status``: waiting, in flight (pending), live workers, dead letters."""
        pending = int(cast(dict[str, Any], self.redis.xpending(EPISODES, GROUP))["pending"])
        entries = int(self.redis.xlen(EPISODES))  # acknowledged entries are deleted: waiting + pending
        return {"waiting": max(0, entries - pending), "pending": pending, "workers": len(self.workers()),
                "dead": int(self.redis.xlen(DEAD))}
