"""Rollout workers as real subprocesses on a real Redis: (b) a worker SIGKILLed mid-episode, graceful
SIGTERM, the policy each episode names; (c) a retriever outage during a run; a Redis restart that lost
the queue; a poison episode that kills every worker it runs in; a hung worker past the episode deadline."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from services.trainer.rollout.queue import EPISODES, GROUP, EpisodeQueue, results_key
from shared.data import load_split
from shared.processes import Proc, free_port, start_redis, start_service
from shared.schemas import EpisodeRequest, EpisodeSampling, PolicyRef

pytestmark = pytest.mark.slow


def direct(job: str, i: int, max_new_tokens: int, policy: PolicyRef | None = None) -> EpisodeRequest:
    return EpisodeRequest(job_id=job, episode_id=f"ep{i}", method="direct", search_backend="none",
                          question=f"Name a famous scientist number {i}.", ground_truth=["Einstein"],
                          sampling=EpisodeSampling(max_new_tokens=max_new_tokens, temperature=0.0), policy=policy)


def pending_of(q: EpisodeQueue, consumer: str) -> int:
    info = q.redis.xpending(EPISODES, GROUP)
    return next((int(c["pending"]) for c in info.get("consumers") or [] if c["name"] == consumer), 0)


def holders_of(q: EpisodeQueue, episode_id: str) -> set[str]:
    """The consumers that hold ``episode_id``'s entry pending (claimed, not acknowledged)."""
    out: set[str] = set()
    for e in q.redis.xpending_range(EPISODES, GROUP, "-", "+", 100):
        entries = cast(list[Any], q.redis.xrange(EPISODES, e["message_id"], e["message_id"]))
        if entries and entries[0][1]["episode"] == episode_id:
            out.add(str(e["consumer"]))
    return out


def test_sigkilled_worker_episodes_are_reclaimed_and_completed_once(
        private_redis: Proc, start_worker: Callable[..., Proc], waiter: Callable[..., None]) -> None:
    q = EpisodeQueue(private_redis.url)
    a = start_worker(private_redis.url, "a", batch_size=4, visibility_timeout_s=3)
    waiter(lambda: "a" in q.workers(), 240, "worker a to start", [a])
    reqs = [direct("kill", i, max_new_tokens=48) for i in range(4)]
    q.enqueue(reqs)
    waiter(lambda: pending_of(q, "a") >= 1, 120, "worker a to take episodes", [a])
    time.sleep(0.5)  # a is generating now
    taken = {e["message_id"] for e in
             q.redis.xpending_range(EPISODES, GROUP, "-", "+", 10, consumername="a")}
    assert q.all_results("kill") == []  # a is mid-episode
    a.kill()  # SIGKILL: no chance to clean up
    assert taken

    b = start_worker(private_redis.url, "b", batch_size=4, visibility_timeout_s=3)
    results = q.wait("kill", 4, timeout_s=300)
    assert sorted(r.episode_id for r in results) == ["ep0", "ep1", "ep2", "ep3"]
    assert {r.worker for r in results} == {"b"}
    assert all(r.error is None and r.response_ids for r in results)
    assert "reclaimed" in b.log_path.read_text()  # a's pending entries reached b only through XAUTOCLAIM
    time.sleep(1.0)
    assert q.redis.xlen(results_key("kill")) == 4  # none duplicated
    assert q.stats()["pending"] == 0
    assert b.alive()


def test_sigterm_finishes_the_batch_in_flight_and_the_named_policy(
        private_redis: Proc, start_worker: Callable[..., Proc], waiter: Callable[..., None],
        smollm2_path: Path) -> None:
    q = EpisodeQueue(private_redis.url)
    c = start_worker(private_redis.url, "c", batch_size=3, heartbeat_s=0.5, refill_limit=3)  # a run: 3 at most
    waiter(lambda: q.workers().get("c", {}).get("policies") == ["worker@v0"], 240, "worker c to start", [c])
    v1 = PolicyRef(owner="term", version=1, path=str(smollm2_path))  # the trainer's v1: same weights, its name

    q.enqueue([direct("term", i, max_new_tokens=16, policy=v1) for i in range(5)])
    waiter(lambda: pending_of(q, "c") == 3, 120, "worker c to take a batch", [c])
    waiter(lambda: q.workers().get("c", {}).get("policies") == ["term@v1"], 60, "worker c to serve term's v1", [c])
    os.killpg(c.popen.pid, signal.SIGTERM)
    assert c.popen.wait(240) == 0, c.log_tail()

    results = q.all_results("term")
    assert len(results) == 3  # the batch in flight was finished ...
    assert all(r.error is None and r.policy_version == 1 and r.worker == "c" for r in results)
    stats = q.stats()
    assert stats["pending"] == 0 and stats["waiting"] == 2  # ... and nothing new was taken
    assert "c" not in q.workers()


def test_a_continuous_worker_refills_free_rows_and_writes_each_result_as_it_ends(
        private_redis: Proc, start_worker: Callable[..., Proc], waiter: Callable[..., None]) -> None:
    """Batch 2, one long episode and five short ones: the short ones go through the row beside the long one
    and their results are written while it still decodes (per claimed batch, four would wait for it)."""
    q = EpisodeQueue(private_redis.url)
    w = start_worker(private_redis.url, "r", batch_size=2, batch_wait_ms=500)
    waiter(lambda: "r" in q.workers(), 240, "worker r to start", [w])
    long = EpisodeRequest(job_id="refill", episode_id="long", method="direct", search_backend="none",
                          question="Write the numbers from 1 to 300, separated by commas.", ground_truth=["1"],
                          sampling=EpisodeSampling(max_new_tokens=160, min_answer_tokens=150, temperature=0.0))
    q.enqueue([long] + [direct("refill", i, max_new_tokens=3) for i in range(5)])
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while "long" not in seen and time.monotonic() < deadline:
        seen += [r.episode_id for r in q.all_results("refill") if r.episode_id not in seen]
        time.sleep(0.05)
    assert seen.index("long") == 5, seen  # every short result was written before the long one ended
    results = {r.episode_id: r for r in q.all_results("refill")}
    assert len(results) == 6 and all(r.error is None for r in results.values())
    assert len(results["long"].response_ids) >= 100  # it really was decoding all along
    assert any("ran 6 episode(s)" in line for line in w.log_tail().splitlines()), w.log_tail()


def test_max_episodes_ends_the_worker_after_that_many_even_while_refilling(
        private_redis: Proc, start_worker: Callable[..., Proc], waiter: Callable[..., None]) -> None:
    """``WORKER_MAX_EPISODES=3`` with batch 2 and five episodes waiting: the refill takes no more than the room
    left, so exactly three results are written, the worker exits 0 and two episodes stay on the queue."""
    q = EpisodeQueue(private_redis.url)
    w = start_worker(private_redis.url, "m", batch_size=2, max_episodes=3)
    waiter(lambda: "m" in q.workers(), 240, "worker m to start", [w])
    q.enqueue([direct("max", i, max_new_tokens=4) for i in range(5)])
    assert w.popen.wait(240) == 0, w.log_tail()
    assert len(q.all_results("max")) == 3
    stats = q.stats()
    assert stats["pending"] == 0 and stats["waiting"] == 2


def test_retriever_outage_becomes_failed_search_observations(
        private_redis: Proc, start_worker: Callable[..., Proc], waiter: Callable[..., None],
        small_index: Path, logs_dir: Path, smollm2_path: Path) -> None:
    from transformers import AutoTokenizer

    retriever = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(small_index)}, log_dir=logs_dir)
    try:
        q = EpisodeQueue(private_redis.url)
        d = start_worker(private_redis.url, "d", batch_size=2, retriever_url=retriever.url, search_retries=1,
                         search_timeout_s=5)
        rows = load_split("hotpotqa", "all", 6)
        sampling = EpisodeSampling(max_new_tokens=8, temperature=0.0)

        def episode(i: int, method: str) -> EpisodeRequest:
            return EpisodeRequest(job_id="outage", episode_id=f"{method}{i}", method=method,  # type: ignore[arg-type]
                                  question=rows[i]["question"], ground_truth=rows[i]["answers"], sampling=sampling,
                                  max_turns=1, topk=2, obs_max_tokens=96)

        q.enqueue([episode(0, "rag"), episode(1, "rag")])
        before = q.wait("outage", 2, timeout_s=300)
        assert all(r.searches == 1 and r.search_failures == 0 for r in before)
    finally:
        retriever.stop()  # the outage

    q.enqueue([episode(2, "rag"), episode(3, "rag"), episode(4, "agent"), episode(5, "agent")])
    after = q.wait("outage", 6, timeout_s=300)[2:]
    assert d.alive()
    assert {r.episode_id for r in after} == {"rag2", "rag3", "agent4", "agent5"}
    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    for r in after:
        assert r.error is None and r.finish_reason != "error"
        assert r.search_failures == r.searches
        if r.episode_id.startswith("rag"):
            assert r.searches == 1
            assert "The search failed" in tok.decode(r.prompt_ids)
        elif r.searches:
            assert "The search failed" in r.text
    log = d.log_path.read_text()
    assert "search via retriever failed" in log
    json.dumps([r.model_dump() for r in after])  # results stay serializable


def test_worker_survives_a_redis_restart_that_lost_the_queue(
        start_worker: Callable[..., Proc], waiter: Callable[..., None], logs_dir: Path, tmp_path: Path) -> None:
    """Issue 18: any Redis error (connection refused, then NOGROUP) ended the worker."""
    port = free_port()
    server = start_redis(port=port, log_dir=logs_dir, data_dir=tmp_path / "before")
    try:
        q = EpisodeQueue(server.url)
        w = start_worker(server.url, "r", batch_size=2, redis_retry_s=60)
        waiter(lambda: "r" in q.workers(), 240, "worker r to start", [w])
        q.enqueue([direct("before", i, max_new_tokens=4) for i in range(2)])
        assert len(q.wait("before", 2, timeout_s=120)) == 2
    finally:
        server.kill()  # Redis goes away ...
    time.sleep(3.0)
    assert w.alive(), w.log_tail()
    server = start_redis(port=port, log_dir=logs_dir, data_dir=tmp_path / "after")  # ... and comes back empty
    try:
        waiter(lambda: "re-creating it" in w.log_path.read_text(), 60, "the worker to re-create the group", [w])
        q = EpisodeQueue(server.url)
        q.enqueue([direct("after", i, max_new_tokens=4) for i in range(2)])
        results = q.wait("after", 2, timeout_s=120)
        assert sorted(r.episode_id for r in results) == ["ep0", "ep1"]
        assert all(r.error is None and r.worker == "r" for r in results)
        assert w.alive()
        assert "Redis unavailable" in w.log_path.read_text()
    finally:
        server.stop()


def test_a_poison_episode_that_kills_its_worker_is_dead_lettered_alone(
        private_redis: Proc, start_worker: Callable[..., Proc], waiter: Callable[..., None]) -> None:
    """Issue 18: an episode that kills its worker (here: whoever holds it is SIGKILLed, as an OOM would)
    must be dead-lettered alone; its batch-mates, reclaimed with it, must still get real results."""
    q = EpisodeQueue(private_redis.url)
    settings = {"batch_size": 4, "visibility_timeout_s": 2, "heartbeat_s": 0.5, "batch_wait_ms": 1000}
    poison = EpisodeRequest(job_id="poison", episode_id="poison", method="direct", search_backend="none",
                            question="Write a very long essay on the whole history of science.",
                            ground_truth=["x"], sampling=EpisodeSampling(max_new_tokens=400, temperature=0.0))
    mates = [direct("poison", i, max_new_tokens=4) for i in range(3)]
    kills, n = 0, 0
    killed: list[Proc] = []
    q.enqueue([poison, *mates])  # queued before the first worker reads: it takes all four as one batch
    worker = start_worker(private_redis.url, f"p{n}", **settings)
    deadline = time.monotonic() + 400
    while not q.redis.hexists("searchlab:job:poison:done", "poison"):
        assert time.monotonic() < deadline, f"no result for the poison episode after {kills} kills"
        if worker.name in holders_of(q, "poison"):
            time.sleep(0.3)  # still held (not merely being dead-lettered): the poison runs in it, it dies of it
            if worker.name not in holders_of(q, "poison"):
                continue
            if not kills:
                assert pending_of(q, worker.name) == 4  # the first death takes the batch-mates with it
            worker.kill()
            kills += 1
            assert kills <= 3, "the poison episode was delivered more than max_attempts times:\n" + "\n".join(
                f"--- {p.name}\n{p.log_tail(8)}" for p in killed + [worker])
            killed.append(worker)
            n += 1
            worker = start_worker(private_redis.url, f"p{n}", **settings)
        assert worker.alive(), worker.log_tail()
        time.sleep(0.05)
    results = {r.episode_id: r for r in q.wait("poison", 4, timeout_s=300)}
    assert set(results) == {"poison", "ep0", "ep1", "ep2"}
    assert results["poison"].finish_reason == "error" and "dead-lettered" in (results["poison"].error or "")
    assert [d["episode"] for d in q.dead_letters()] == ["poison"]
    for i in range(3):  # the batch-mates died with it once, then ran alone and answered
        assert results[f"ep{i}"].error is None and results[f"ep{i}"].response_ids


def test_a_hung_workers_episode_is_reclaimed_after_its_deadline(
        private_redis: Proc, start_worker: Callable[..., Proc], waiter: Callable[..., None],
        small_retriever: Proc) -> None:
    """Issue 18: a worker hung mid-episode (here: on a retriever that accepts and never answers) kept
    refreshing its entry from the heartbeat thread, so the episode was never reclaimed."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)  # connections are accepted by the kernel and never answered
    try:
        q = EpisodeQueue(private_redis.url)
        hung = start_worker(private_redis.url, "hung", retriever_url=f"http://127.0.0.1:{blackhole.getsockname()[1]}",
                            search_timeout_s=600, search_retries=0, visibility_timeout_s=2, heartbeat_s=0.5,
                            episode_deadline_s=4)
        waiter(lambda: "hung" in q.workers(), 240, "worker hung to start", [hung])
        q.enqueue([EpisodeRequest(job_id="hung", episode_id="ep0", method="rag", question="Who wrote Faust?",
                                  ground_truth=["Goethe"], sampling=EpisodeSampling(max_new_tokens=4), max_turns=1,
                                  topk=1, obs_max_tokens=32)])
        waiter(lambda: pending_of(q, "hung") == 1, 120, "the episode to reach worker hung", [hung])
        live = start_worker(private_redis.url, "live", retriever_url=small_retriever.url, visibility_timeout_s=2)
        [result] = q.wait("hung", 1, timeout_s=300)
        assert result.worker == "live" and result.error is None and result.search_failures == 0
        assert hung.alive() and live.alive()  # hung is still stuck in its search, heartbeat beating
        assert "past its deadline" in hung.log_path.read_text()
    finally:
        blackhole.close()
