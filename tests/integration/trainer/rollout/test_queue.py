"""The episode queue on a real Redis: idempotent enqueue, exactly-once results, reclaim, dead letters,
staleness; and (a) 50 episodes through 2 real workers, every result exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis

from services.trainer.rollout.queue import DEAD, EpisodeQueue, job_key, results_key
from shared.processes import Proc, start_redis
from shared.schemas import EpisodeRequest, EpisodeResult, EpisodeSampling, PolicyRef


def req(job: str, i: int, **kw: object) -> EpisodeRequest:
    return EpisodeRequest.model_validate({"job_id": job, "episode_id": f"ep{i}", "method": "direct",
                                          "question": f"question {i}?", "ground_truth": ["x"], **kw})


def result_of(r: EpisodeRequest, worker: str = "w", version: int = 0) -> EpisodeResult:
    return EpisodeResult(job_id=r.job_id, episode_id=r.episode_id, worker=worker, policy_version=version,
                         finish_reason="answer")


def test_enqueue_is_idempotent_and_results_exactly_once(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url)
    reqs = [req("job1", i) for i in range(5)]
    assert q.enqueue(reqs) == 5
    assert q.enqueue(reqs) == 0  # same episode ids: nothing new
    deliveries = q.claim("w1", 10, block_ms=100)
    assert sorted(d.request.episode_id for d in deliveries) == [f"ep{i}" for i in range(5)]
    assert all(d.attempt == 1 for d in deliveries)
    for d in deliveries:
        assert q.complete(d, result_of(d.request))
    assert not q.complete(deliveries[0], result_of(deliveries[0].request, "again"))  # a re-run: dropped
    results = q.all_results("job1")
    assert sorted(r.episode_id for r in results) == [f"ep{i}" for i in range(5)]
    assert q.stats()["pending"] == 0
    assert q.claim("w1", 10, block_ms=100) == []


def test_dead_consumer_entries_are_reclaimed_after_the_visibility_timeout(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url, visibility_timeout_s=0.5)
    q.enqueue([req("job2", i) for i in range(3)])
    taken = q.claim("dead-worker", 3, block_ms=100)
    assert len(taken) == 3
    assert q.claim("live-worker", 3, block_ms=100) == []  # not idle long enough yet
    time.sleep(0.7)
    again = q.claim("live-worker", 3, block_ms=100)
    assert sorted(d.request.episode_id for d in again) == ["ep0", "ep1", "ep2"]
    assert all(d.attempt == 2 for d in again)
    for d in again:
        q.complete(d, result_of(d.request, "live-worker"))
    for d in taken:  # the "dead" worker comes back late: its results are dropped
        assert not q.complete(d, result_of(d.request, "dead-worker"))
    assert {r.worker for r in q.all_results("job2")} == {"live-worker"}
    assert len(q.all_results("job2")) == 3


def test_heartbeat_keeps_a_slow_episode_from_being_reclaimed(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url, visibility_timeout_s=0.6)
    q.enqueue([req("job3", 0)])
    [d] = q.claim("slow", 1, block_ms=100)
    for _ in range(3):
        time.sleep(0.3)
        q.touch("slow", [d.entry_id])
    assert q.claim("other", 1, block_ms=100) == []


def test_failing_episode_is_retried_then_dead_lettered(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url, max_attempts=2)
    q.enqueue([req("job4", 0)])
    [d1] = q.claim("w", 1, block_ms=100)
    q.fail(d1, "RuntimeError: boom", "w")
    [d2] = q.claim("w", 1, block_ms=100)
    assert d2.attempt == 2
    q.fail(d2, "RuntimeError: boom again", "w")
    assert q.claim("w", 1, block_ms=100) == []
    [dead] = q.dead_letters()
    assert dead["episode"] == "ep0" and "boom again" in dead["error"]
    [res] = q.all_results("job4")
    assert res.finish_reason == "error" and "boom again" in (res.error or "")
    assert q.stats()["pending"] == 0


def test_an_episode_whose_workers_keep_dying_is_dead_lettered(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url, visibility_timeout_s=0.2, max_attempts=2)
    q.enqueue([req("job5", 0)])
    assert len(q.claim("w1", 1, block_ms=100)) == 1  # w1 dies
    time.sleep(0.3)
    assert len(q.claim("w2", 1, block_ms=100)) == 1  # w2 dies too
    time.sleep(0.3)
    assert q.claim("w3", 1, block_ms=100) == []  # third delivery: dead-lettered instead
    assert len(q.dead_letters()) == 1
    [res] = q.all_results("job5")
    assert res.finish_reason == "error" and "delivered 2 times" in (res.error or "")


def test_a_lost_consumer_group_is_recreated_instead_of_raising(private_redis: Proc) -> None:
    """Issue 18: Redis restarted without its data -> NOGROUP on every read, which killed the worker."""
    q = EpisodeQueue(private_redis.url)
    q.redis.flushall()  # the queue's data (and its consumer group) is gone
    assert q.claim("w", 2, block_ms=100) == []  # re-creates the group rather than raising NOGROUP
    q.enqueue([req("job-nogroup", 0)])
    [d] = q.claim("w", 2, block_ms=100)
    assert q.complete(d, result_of(d.request))
    assert [r.episode_id for r in q.all_results("job-nogroup")] == ["ep0"]


def test_a_hung_episode_is_reclaimed_after_its_deadline_despite_the_heartbeat(private_redis: Proc) -> None:
    """Issue 18: a worker hung mid-episode kept beating, so its episode was never reclaimed."""
    q = EpisodeQueue(private_redis.url, visibility_timeout_s=0.4, episode_deadline_s=1.0)
    q.enqueue([req("job-hung", 0)])
    [d] = q.claim("hung", 1, block_ms=100)
    other = EpisodeQueue(private_redis.url, visibility_timeout_s=0.4)
    taken = []
    for _ in range(25):  # the hung worker's heartbeat thread beats on, every 0.1 s
        q.heartbeat("hung", [d])
        taken = other.claim("live", 1, block_ms=0)
        if taken:
            break
        time.sleep(0.1)
    assert [t.request.episode_id for t in taken] == ["ep0"]  # reclaimed although "hung" still beats
    assert taken[0].reclaimed and taken[0].attempt == 2
    assert q.heartbeat("hung", [d]) == [d]  # past its deadline: reported, not refreshed
    assert other.complete(taken[0], result_of(d.request, "live"))
    assert not q.complete(d, result_of(d.request, "hung"))  # the hung worker's late result is dropped
    assert [r.worker for r in q.all_results("job-hung")] == ["live"]


def test_heartbeat_within_the_deadline_still_refreshes(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url, visibility_timeout_s=0.6, episode_deadline_s=30.0)
    q.enqueue([req("job-beat", 0)])
    [d] = q.claim("slow", 1, block_ms=100)
    for _ in range(3):
        time.sleep(0.3)
        assert q.heartbeat("slow", [d]) == []
    assert q.claim("other", 1, block_ms=100) == []


def test_a_jobs_keys_expire_after_its_last_write(private_redis: Proc) -> None:
    """Issue 18: a job nobody finished (trainer died, an eval) kept its requests and results forever."""
    q = EpisodeQueue(private_redis.url, job_ttl_s=600)
    q.enqueue([req("job-ttl", i) for i in range(2)])
    for d in q.claim("w", 2, block_ms=100):
        q.complete(d, result_of(d.request))
    for key in (job_key("job-ttl", "requests"), job_key("job-ttl", "attempts"), job_key("job-ttl", "done"),
                results_key("job-ttl")):
        assert 0 < int(q.redis.ttl(key)) <= 600, key


def test_the_dead_letter_stream_is_bounded(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url, max_attempts=1, dead_maxlen=3)
    q.enqueue([req("job-dead", i) for i in range(6)])
    for d in q.claim("w", 6, block_ms=100):
        q.fail(d, "RuntimeError: poison", "w")
    assert [d["episode"] for d in q.dead_letters()] == ["ep3", "ep4", "ep5"]  # the newest kept
    assert len(q.all_results("job-dead")) == 6  # every episode still got its error result


def test_a_full_redis_refuses_new_episodes_and_evicts_none(logs_dir: Path) -> None:
    """Issue 18: no maxmemory. Now the cap is set with noeviction: the write that does not fit fails
    loudly, and every episode queued before it is still there."""
    server = start_redis(log_dir=logs_dir, maxmemory="8mb")
    try:
        q = EpisodeQueue(server.url)
        config = cast(dict[str, str], q.redis.config_get("maxmemory*"))
        assert config["maxmemory-policy"] == "noeviction" and int(config["maxmemory"]) == 8 * 1024 * 1024
        added = 0
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for batch in range(1000):
                added += q.enqueue([req("job-full", batch * 25 + i, question="q" * 8_000) for i in range(25)])
        assert added > 0
        assert q.redis.hlen(job_key("job-full", "requests")) >= added  # nothing evicted
        assert q.stats()["waiting"] >= added
    finally:
        server.stop()


def test_stale_results_are_dropped_and_requeued(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url)
    v2, v3 = PolicyRef(owner="job6", version=2, path="/ckpt/v2"), PolicyRef(owner="job6", version=3, path="/ckpt/v3")
    reqs = [req("job6", i, policy=v2 if i == 0 else v3) for i in range(3)]
    q.enqueue(reqs)
    for d in q.claim("w", 3, block_ms=100):
        version = 1 if d.request.episode_id == "ep0" else 3  # ep0 came from a worker still on v1
        q.complete(d, result_of(d.request, version=version))

    import threading

    def fresh_worker() -> None:  # picks up the re-queued episode and answers with v3
        w = EpisodeQueue(private_redis.url)
        for _ in range(50):
            got = w.claim("w2", 1, block_ms=100)
            if got:
                assert got[0].request.policy == v3  # re-queued with the job's current policy
                w.complete(got[0], result_of(got[0].request, "w2", version=3))
                return

    t = threading.Thread(target=fresh_worker)
    t.start()
    results = q.collect("job6", [r.episode_id for r in reqs], v3, max_staleness=1, timeout_s=30)
    t.join()
    assert sorted(r.episode_id for r in results) == ["ep0", "ep1", "ep2"]
    assert all(r.policy_version >= 2 for r in results)
    assert [r.worker for r in results if r.episode_id == "ep0"] == ["w2"]
    assert len(q.all_results("job6")) == 3  # the stale result is gone from the stream


def test_incremental_results_reader(private_redis: Proc) -> None:
    q = EpisodeQueue(private_redis.url)
    q.enqueue([req("job7", i) for i in range(2)])
    d = q.claim("w", 2, block_ms=100)
    stop = False
    reader = q.follow("job7", timeout_s=30, should_stop=lambda: stop)
    q.complete(d[0], result_of(d[0].request))
    assert [r.episode_id for r in next(reader)] == [d[0].request.episode_id]
    q.complete(d[1], result_of(d[1].request))
    assert [r.episode_id for r in next(reader)] == [d[1].request.episode_id]  # only what is new
    stop = True
    assert list(reader) == []
    with pytest.raises(TimeoutError, match="job7"):
        next(q.follow("job7-empty", timeout_s=0.2))


@pytest.mark.slow
def test_fifty_episodes_through_two_workers_exactly_once(private_redis: Proc, start_worker: Callable[..., Proc],
                                                        waiter: Callable[..., None]) -> None:
    q = EpisodeQueue(private_redis.url, max_attempts=2)
    workers = [start_worker(private_redis.url, f"w{i}", batch_size=8, max_attempts=2) for i in range(2)]
    waiter(lambda: len(q.workers()) == 2, 240, "both workers to start", workers)

    sampling = EpisodeSampling(max_new_tokens=3, temperature=0.0)
    reqs = [req("fifty", i, sampling=sampling, search_backend="none") for i in range(50)]
    poison = req("fifty", 999, sampling=sampling, policy=PolicyRef(owner="fifty", path="/nonexistent/model-folder"))  # fails on every worker
    assert q.enqueue([*reqs, poison]) == 51
    assert q.enqueue(reqs) == 0

    results = q.wait("fifty", 51, timeout_s=300)
    by_id = {r.episode_id: r for r in results}
    assert len(results) == len(by_id) == 51
    assert set(by_id) == {r.episode_id for r in reqs} | {"ep999"}
    assert by_id["ep999"].finish_reason == "error" and "dead-lettered" in (by_id["ep999"].error or "")
    assert [d["episode"] for d in q.redis.xrange(DEAD) for d in [d[1]]] == ["ep999"]
    good = [by_id[r.episode_id] for r in reqs]
    assert all(r.error is None and r.response_ids and r.turns == 1 for r in good)
    assert {r.worker for r in good} == {"w0", "w1"}

    time.sleep(1.0)  # nothing more arrives, nothing is left in flight
    assert q.redis.xlen(results_key("fifty")) == 51
    assert q.stats()["pending"] == 0
    for w in workers:
        w.stop()
        assert w.popen.returncode == 0, w.log_tail()
