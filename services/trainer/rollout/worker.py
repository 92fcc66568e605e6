"""A rollout worker: takes episodes off the Redis queue, runs them in batches, writes their results.

    python -m services.trainer.rollout.worker          # configured by WORKER_* env vars (worker_config.py)

Any number of workers, on any host, share the ``workers`` consumer group. Each loop: claim up to
``batch_size`` episodes (stale ones of dead workers first) -> group them by the policy each names
(:class:`shared.schemas.PolicyRef`; none: the worker's configured model) -> load what is not loaded
yet into a small LRU (``WORKER_POLICY_CACHE`` models) -> run each group together (``WORKER_ROLLOUT``:
continuous batching with KV reuse across turns, or per-turn batches) -> write each result exactly once and acknowledge it. A heartbeat thread keeps
in-flight entries from being reclaimed while a long batch runs. If a batch raises, its episodes
are re-run one by one so that only the poison episode is retried (and dead-lettered after
``max_attempts``); an episode reclaimed from a worker that died (or hung) runs alone, so an episode
that kills its worker is charged alone too. The heartbeat stops refreshing an episode
``WORKER_EPISODE_DEADLINE_S`` after it was claimed: a hung episode becomes reclaimable.
SIGTERM / SIGINT: the batch in flight is finished, then the worker exits.

Redis errors never end the worker: it logs, backs off (capped, doubling) and reconnects, and the
queue re-creates a lost consumer group; a result computed while Redis is away is written once it
is back (its entry stays pending meanwhile, so a worker death then loses nothing either).

Episodes that name their own rollout servers (``EpisodeRequest.generation``: verl's SGLang replicas)
take the remote lane instead (:mod:`services.trainer.rollout.remote_lane`): no model is loaded for
them, and up to ``WORKER_REMOTE_INFLIGHT`` of them run at once as coroutines, each result written as
soon as its episode ends. The main loop keeps claiming while the lane has room.

Weights on a remote backend (``WORKER_LLM__BACKEND=openai``: one SGLang server behind the worker):
before a group of episodes runs with a policy (folder, version) other than the one on the server, the
server is told to load it (``POST /update_weights_from_disk``, :meth:`shared.llm.OpenAIBackend.load_weights`).
If it does not, the group is not generated on the old weights: its episodes are re-queued (and
dead-lettered after ``max_attempts``) and counted in ``weight_sync_failures`` of the workers hash.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import TypeVar

import redis

from services.trainer.rollout.agent import AgentRunner
from services.trainer.rollout.continuous import ContinuousRunner
from services.trainer.rollout.queue import Delivery, EpisodeQueue
from services.trainer.rollout.remote_lane import RemoteLane
from services.trainer.rollout.search import SearchEndpoints, SearchRegistry
from services.trainer.rollout.settings import WorkerSettings
from shared.client import JudgeClient
from shared.llm import LLMBackend, get_backend
from shared.models import resolve
from shared.schemas import EpisodeRequest, EpisodeResult, PolicyRef
from shared.sglang import WeightSyncError

log = logging.getLogger("searchlab.worker")
T = TypeVar("T")


class Policies:
    """The models this worker has loaded, by model folder, least recently used evicted first.

    A remote generation backend (``WORKER_LLM__BACKEND=openai``: an SGLang server) holds one set of
    weights: it is created once, and moved to each policy a group of episodes names before that group
    runs (:meth:`_sync_remote`)."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.capacity = settings.policy_cache
        self.loaded: OrderedDict[str, tuple[LLMBackend, PolicyRef]] = OrderedDict()
        self.remote_at: tuple[str, int] | None = None  # (folder, version) on the remote server; None: unknown
        self.weight_syncs = 0  # successful /update_weights_from_disk calls

    def default(self) -> PolicyRef:
        return PolicyRef(owner="worker", version=0, path=self.settings.llm.model)

    def get(self, ref: PolicyRef) -> LLMBackend:
        if self.settings.llm.backend != "local":
            return self._sync_remote(ref)
        key = str(resolve(ref.path))  # one name, one load
        if key in self.loaded:
            self.loaded.move_to_end(key)
            backend, _ = self.loaded[key]
        else:
            log.info("%s loading policy %s v%d from %s (%s backend)", self.settings.name, ref.owner, ref.version,
                     ref.path, self.settings.llm.backend)
            backend = get_backend(self.settings.llm.model_copy(update={"model": ref.path}))
            while len(self.loaded) >= self.capacity:
                evicted, (_, old) = self.loaded.popitem(last=False)
                log.info("%s unloaded policy %s v%d (%s)", self.settings.name, old.owner, old.version, evicted)
        self.loaded[key] = (backend, ref)
        return backend

    def _sync_remote(self, ref: PolicyRef) -> LLMBackend:
        """The remote backend, with ``ref``'s weights on its server (``WeightSyncError`` if they could not be
        loaded: the server's weights are then unknown, and the next group loads its own again)."""
        if "<remote>" not in self.loaded:  # the server starts with the worker's configured model
            self.loaded["<remote>"] = (get_backend(self.settings.llm), self.default())
            self.remote_at = (self.settings.llm.model, 0)
        backend, _ = self.loaded["<remote>"]
        if (ref.path, ref.version) != self.remote_at:
            load = getattr(backend, "load_weights", None)
            if load is None:
                raise WeightSyncError(f"the {self.settings.llm.backend} backend cannot load new weights")
            log.info("%s: rollout server %s loads policy %s v%d from %s", self.settings.name,
                     self.settings.llm.base_url, ref.owner, ref.version, ref.path)
            self.remote_at = None
            load(ref.path, f"{ref.owner}@v{ref.version}")
            self.remote_at = (ref.path, ref.version)
            self.weight_syncs += 1
        self.loaded["<remote>"] = (backend, ref)
        return backend

    def names(self) -> list[str]:
        return [f"{ref.owner}@v{ref.version}" for _, ref in self.loaded.values()]


class Backoff:
    """Capped, doubling waits between retries of a Redis call that failed (reset by a success)."""

    def __init__(self, first_s: float = 0.25, cap_s: float = 8.0):
        self.first_s, self.cap_s = first_s, cap_s
        self.next_s = first_s

    def wait(self, stopping: threading.Event) -> None:
        stopping.wait(self.next_s)
        self.next_s = min(self.next_s * 2, self.cap_s)

    def reset(self) -> None:
        self.next_s = self.first_s


REDIS_ERRORS = (OSError, redis.RedisError)


class Worker:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.name = settings.name
        self.queue = EpisodeQueue(settings.redis_url, visibility_timeout_s=settings.visibility_timeout_s,
                                  max_attempts=settings.max_attempts,
                                  episode_deadline_s=settings.episode_deadline_s)
        keys = settings.keys()
        endpoints = SearchEndpoints(
            retriever_url=settings.retriever_url, simulator_url=settings.simulator_url, keys=keys,
            timeout_s=settings.search_timeout_s, retries=settings.search_retries,
            concurrency=settings.search_concurrency)
        self.search = SearchRegistry(endpoints)
        self._count_lock = threading.Lock()
        self.lane = RemoteLane(self.name, self.queue, endpoints, capacity=settings.remote_inflight,
                               judge_url=settings.judge_url, judge_timeout_s=settings.judge_timeout_s,
                               generate_timeout_s=settings.generate_timeout_s, on_done=self._count,
                               write=self.write)
        self.judge = (JudgeClient(settings.judge_url, keys.of("judge"), timeout_s=settings.judge_timeout_s)
                      if settings.judge_url else None)
        self.policies = Policies(settings)
        self._inflight: list[Delivery] = []
        self._inflight_lock = threading.Lock()
        self.stopping = threading.Event()
        self.completed = 0
        self.weight_sync_failures = 0  # episodes re-queued because the rollout server kept its old weights
        self.redis_errors = 0  # Redis calls that failed and were retried
        self._registered: list[str] = []
        self._held: list[Delivery] = []  # read while refilling a run of another policy: processed next
        self._expired: set[str] = set()  # entries past their deadline (logged once)

    # -- loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped (or ``max_episodes``); returns the number of episodes completed."""
        self.policies.get(self.policies.default())  # fail at start, not at the first episode, on a bad model
        self.write(self._register, "register")
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        heartbeat.start()
        log.info("%s ready: batch %d, visibility %.0fs", self.name, self.settings.batch_size,
                 self.settings.visibility_timeout_s)
        backoff = Backoff()
        while not self.stopping.is_set() and ((room := self._room()) is None or room > 0):
            count = min(self.settings.batch_size, self.lane.free())
            if room is not None:
                count = min(count, room)
            if count <= 0:  # the remote lane is full (or has the last episodes): wait for a slot
                self.lane.wait_free(self.settings.block_ms / 1000)
                continue
            if self._held:
                deliveries, self._held = self._held, []
                self.process(deliveries)
                continue
            try:
                deliveries = self._claim(count)
            except REDIS_ERRORS as exc:  # Redis is down or restarting: wait and reconnect, never exit
                self.redis_errors += 1
                log.warning("%s: Redis unavailable (%s: %s); retrying in %.2fs", self.name, type(exc).__name__,
                            exc, backoff.next_s)
                backoff.wait(self.stopping)
                continue
            backoff.reset()
            if deliveries:
                self.process(deliveries)
        self.lane.close()
        self.stopping.set()
        heartbeat.join(timeout=5)
        try:
            self.queue.unregister_worker(self.name)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not unregister: %s", self.name, exc)
        self.search.close()
        self.queue.close()
        log.info("%s stopped after %d episodes", self.name, self.completed)
        return self.completed

    def _claim(self, count: int) -> list[Delivery]:
        """A reclaimed episode alone (it may be the one that killed its last worker), else a batch of new ones."""
        reclaimed = self.queue.reclaim(self.name, 1)
        if reclaimed:
            return reclaimed
        deliveries = self.queue.read(self.name, count, self.settings.block_ms)
        if 0 < len(deliveries) < count and self.settings.batch_wait_ms:
            time.sleep(self.settings.batch_wait_ms / 1000)  # episodes enqueued together arrive one by one
            deliveries += self.queue.read(self.name, count - len(deliveries), 0)
        return deliveries

    def write(self, call: Callable[[], T], what: str) -> T | None:
        """``call()`` (a queue write), retried with backoff while Redis is unavailable.

        Gives up (None) after ``WORKER_REDIS_RETRY_S``: the episode's entry is still pending then, so
        another worker reclaims and re-runs it; nothing is lost, at worst done twice (and written once)."""
        backoff = Backoff()
        deadline = time.monotonic() + self.settings.redis_retry_s
        while True:
            try:
                return call()
            except REDIS_ERRORS as exc:
                self.redis_errors += 1
                if time.monotonic() > deadline:
                    log.error("%s: %s failed for %.0fs, giving up (%s); the episode will be reclaimed",
                              self.name, what, self.settings.redis_retry_s, exc)
                    return None
                log.warning("%s: %s failed (%s: %s); retrying in %.2fs", self.name, what, type(exc).__name__, exc,
                            backoff.next_s)
                backoff.wait(threading.Event())

    def _room(self) -> int | None:
        """Episodes still to take under ``max_episodes`` (the lane's in-flight ones count as done); None: no limit."""
        if self.settings.max_episodes is None:
            return None
        return self.settings.max_episodes - self.completed - (self.lane.capacity - self.lane.free())

    def _count(self) -> None:
        with self._count_lock:
            self.completed += 1

    def process(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if d.request.generation is not None:
                self.lane.submit(d)
        deliveries = [d for d in deliveries if d.request.generation is None]
        if not deliveries:
            return
        with self._inflight_lock:
            self._inflight = list(deliveries)
        try:
            groups: dict[tuple[str, int], list[Delivery]] = defaultdict(list)
            for d in deliveries:
                ref = d.request.policy or self.policies.default()
                groups[(ref.path, ref.version)].append(d)
            for group in groups.values():
                self._run_group(group[0].request.policy or self.policies.default(), group)
        finally:
            with self._inflight_lock:
                self._inflight = []

    def _run_group(self, policy: PolicyRef, group: list[Delivery]) -> None:
        started = time.monotonic()
        try:
            backend = self.policies.get(policy)
        except WeightSyncError as exc:  # never generate this version's episodes on other weights
            log.error("%s: policy %s v%d not on the rollout server; %d episode(s) re-queued: %s", self.name,
                      policy.owner, policy.version, len(group), exc)
            self.weight_sync_failures += len(group)
            for d in group:
                self.write(partial(self.queue.fail, d, f"weight sync of {policy.owner}@v{policy.version}: {exc}",
                                   self.name), "fail")
            self.write(self._register, "register")
            return
        except (OSError, ValueError) as exc:  # a policy that does not load fails its episodes, not the worker
            log.error("%s: policy %s v%d (%s) did not load: %s", self.name, policy.owner, policy.version,
                      policy.path, exc)
            for d in group:
                error = f"policy {policy.path!r} did not load: {type(exc).__name__}: {exc}"
                self.write(partial(self.queue.fail, d, error, self.name), "fail")
            return
        if self.policies.names() != self._registered:  # a policy loaded or evicted: say so now, not at the next beat
            self.write(self._register, "register")
        group = list(group)  # a continuous run appends the episodes it refills with
        written: set[int] = set()

        def emit(indices: list[int], results: list[EpisodeResult]) -> None:
            for i, result in zip(indices, results, strict=True):
                if self.write(partial(self.queue.complete, group[i], result), "complete") is False:
                    log.info("%s: episode %s already had a result; this run was dropped", self.name,
                             group[i].request.episode_id)
                written.add(i)
                self._count()
            done = {id(group[i]) for i in indices}
            with self._inflight_lock:  # no longer refreshed by the heartbeat
                self._inflight = [d for d in self._inflight if id(d) not in done]

        try:
            if self.settings.rollout == "continuous":
                runner = ContinuousRunner(backend, self.search, self.judge, self.name, policy.version,
                                          slots=self.settings.batch_size)
                refill = partial(self._refill, policy, group, written) if self.settings.batch_size > 1 else None
                results = runner.run([d.request for d in group], more=refill, emit=emit)
            else:
                results = AgentRunner(backend, self.search, self.judge, self.name,
                                      policy.version).run([d.request for d in group])
                emit(list(range(len(group))), results)
        except Exception as exc:  # the one place an episode crash is contained (logged)
            left = [d for i, d in enumerate(group) if i not in written]
            if len(group) > 1:
                log.warning("%s: a batch of %d raised %r; re-running its %d unfinished episodes one by one",
                            self.name, len(group), exc, len(left))
                for d in left:
                    self._run_group(policy, [d])
                return
            log.exception("%s: episode %s raised", self.name, group[0].request.episode_id)
            self.write(partial(self.queue.fail, group[0], f"{type(exc).__name__}: {exc}", self.name), "fail")
            return
        log.info("%s ran %d episode(s) of %s@v%d in %.1fs: %d policy tokens, %d searches (%d failed)", self.name,
                 len(group), policy.owner, policy.version, time.monotonic() - started, sum(sum(r.loss_mask) for r in results), sum(r.searches for r in results),
                 sum(r.search_failures for r in results))

    def _refill(self, policy: PolicyRef, group: list[Delivery], written: set[int], free: int) -> list[EpisodeRequest]:
        """New episodes for a continuous run's free rows: a non-blocking read of the queue. Those of this
        policy join the run (and the heartbeat's in-flight list); others are held for the next loop, and
        the run stops refilling then, as it does when stopping, past ``refill_limit`` or ``max_episodes``."""
        if (room := self._room()) is not None:  # completed + in the lane + unfinished here stay under it
            free = min(free, room - (len(group) - len(written)))
        free = min(free, self.settings.refill_limit - len(group))
        if self.stopping.is_set() or self._held or free <= 0:
            return []
        try:
            deliveries = self.queue.read(self.name, free, 0)
        except REDIS_ERRORS as exc:  # nothing lost: the main loop reconnects; this run drains what it has
            self.redis_errors += 1
            log.warning("%s: refill read failed (%s); the run goes on without it", self.name, exc)
            return []
        key = (policy.path, policy.version)
        joining = []
        for d in deliveries:
            ref = d.request.policy or self.policies.default()
            if d.request.generation is None and (ref.path, ref.version) == key:
                joining.append(d)
            else:
                self._held.append(d)
        with self._inflight_lock:
            self._inflight += joining
        group += joining
        return [d.request for d in joining]

    def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval_s
        while not self.stopping.wait(interval):
            with self._inflight_lock:
                inflight = self._inflight + self.lane.deliveries()
            try:
                for d in self.queue.heartbeat(self.name, inflight):
                    if d.entry_id not in self._expired:
                        self._expired.add(d.entry_id)
                        log.warning("%s: episode %s/%s is past its deadline (%.0fs); no longer refreshed, so "
                                    "another worker may reclaim it", self.name, d.request.job_id,
                                    d.request.episode_id, self.settings.episode_deadline_s)
                self._register()
            except (OSError, redis.RedisError) as exc:
                log.warning("%s heartbeat failed: %s", self.name, exc)

    def _register(self) -> None:
        self._registered = self.policies.names()
        self.queue.register_worker(self.name, self._registered, self.completed,
                                   weight_sync_failures=self.weight_sync_failures)

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        log.info("%s got signal %d: finishing the batch in flight, then exiting", self.name, signum)
        self.stopping.set()


def main(argv: list[str] | None = None) -> int:
    settings = WorkerSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
