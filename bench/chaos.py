"""Fault suite: one job through rollout workers that are killed, a Redis that restarts, a retriever and a
judge that go away, and afterwards every episode has exactly one result.

    python bench/chaos.py [--episodes 500] [--workers 4] [--kills 20] [--redis-restarts 1] [--outage-s 10]

Real processes on loopback: redis-server (append-only file), the retriever (dense + BM25 over the first
500 corpus passages), the judge (LLM verdicts) and ``--workers`` rollout workers
(``python -m services.trainer.rollout.worker``). One job of ``--episodes`` RAG episodes (HotpotQA
train questions: one search, then an answer scored by the judge, reward metric ``llm``) is enqueued;
while it runs, faults are injected at points spread over its progress (results so far):

- ``--kills`` SIGKILLs of a random live worker, evenly spaced between 5% and 90%; the bench then starts
  a replacement, as a supervisor (``searchlab up``) would;
- at 20% the retriever is stopped for ``--outage-s`` seconds, then started again on its port;
- at 40% the judge, likewise;
- at 60% (``--redis-restarts``) Redis is shut down (it writes its append-only file) and started again
  from it after ``--redis-down-s`` (8 s: longer than redis-py's own ~5 s of reconnect retries, so the
  workers' backoff is what carries them through, counted as ``redis_retries``).

The model: a tiny real transformers model, a 2-layer 64-wide Llama created from a config with
SmolLM2's tokenizer (:func:`shared.models.tiny_llama`, written to a temp dir, nothing downloaded),
used by the workers and the judge alike, with short generations (``--max-new-tokens`` 8). Its
answers are noise; what is measured is the machinery around it, and the tiny model is what makes
500 episodes with 20 worker restarts affordable on 2 CPU cores.

Checks: ``results`` (entries in the job's result stream) == ``episodes``, ``duplicates`` (entries
beyond one per episode) == 0, ``lost`` (episodes with no result) == 0. Episodes that exhausted their
attempts would end as error results (``dead_lettered``, reported apart); searches and verdicts that
failed during the outages are counted too. Exit 1 if a check fails. Ends with one line:

    BENCH chaos episodes=500 results=500 duplicates=0 lost=0 kills=20 redis_restarts=1 retriever_outage_s=10 …
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

import redis

from services.trainer.rollout.queue import EpisodeQueue, job_key, results_key
from shared.config import cache_dir, corpus_path
from shared.data import load_split, open_text
from shared.models import tiny_llama
from shared.processes import Proc, free_port, spawn, start_redis, start_service
from shared.schemas import EpisodeRequest, EpisodeRewardSpec, EpisodeSampling

JOB = "chaos"
REDIS_RETRY = re.compile(r"Redis unavailable|(?:complete|fail|register) failed \(")  # a worker's Redis call retried


def first_passages(out: Path, n: int = 500) -> Path:
    with open_text(corpus_path()) as src, open(out, "w") as dst:
        for i, line in enumerate(src):
            if i >= n:
                break
            dst.write(line)
    return out


def episodes(n: int, max_new_tokens: int) -> list[EpisodeRequest]:
    rows = load_split("hotpotqa", "train", min(n, 200))
    sampling = EpisodeSampling(max_new_tokens=max_new_tokens, temperature=1.0)
    return [EpisodeRequest(job_id=JOB, episode_id=f"ep{i}", method="rag", question=rows[i % len(rows)]["question"],
                           ground_truth=rows[i % len(rows)]["answers"], sampling=sampling, max_turns=1, topk=2,
                           obs_max_tokens=64, reward=EpisodeRewardSpec(metric="llm")) for i in range(n)]


class Cluster:
    """The processes under test, each restartable on its own port."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.logs = work / "logs"
        self.model = tiny_llama(work / "tiny-llama")
        from services.retriever.index import ensure_index

        self.index = ensure_index(first_passages(work / "corpus.jsonl"), cache_dir() / "indexes" / "bench-chaos")
        self.redis_port, self.retriever_port, self.judge_port = free_port(), free_port(), free_port()
        self.redis = self._redis()
        self.retriever = self._retriever()
        self.judge = self._judge()
        self.workers: list[Proc] = []
        self.started = 0

    def _redis(self) -> Proc:
        return start_redis(port=self.redis_port, log_dir=self.logs, data_dir=self.work / "redis", appendonly=True)

    def _retriever(self) -> Proc:
        return start_service("retriever", {"RETRIEVER_INDEX_DIR": str(self.index)}, log_dir=self.logs,
                             port=self.retriever_port)

    def _judge(self) -> Proc:
        return start_service("judge", {"JUDGE_LLM__MODEL": str(self.model), "JUDGE_LLM__DTYPE": "float32",
                                       "JUDGE_REDIS_URL": ""}, log_dir=self.logs, port=self.judge_port)

    def start_worker(self) -> Proc:
        name = f"worker-{self.started}"
        self.started += 1
        env = {"WORKER_REDIS_URL": self.redis.url, "WORKER_NAME": name, "WORKER_LLM__MODEL": str(self.model),
               "WORKER_LLM__DTYPE": "float32", "WORKER_RETRIEVER_URL": self.retriever.url,
               "WORKER_JUDGE_URL": self.judge.url, "WORKER_BATCH_SIZE": str(self.args.batch),
               "WORKER_VISIBILITY_TIMEOUT_S": "6", "WORKER_HEARTBEAT_S": "1", "WORKER_BLOCK_MS": "200",
               "WORKER_MAX_ATTEMPTS": str(self.args.max_attempts), "WORKER_SEARCH_TIMEOUT_S": "3",
               "WORKER_SEARCH_RETRIES": "1", "WORKER_JUDGE_TIMEOUT_S": "5"}
        proc = spawn(name, [sys.executable, "-m", "services.trainer.rollout.worker"], env=env, log_dir=self.logs)
        self.workers.append(proc)
        return proc

    def kill_random_worker(self, rng: random.Random) -> str:
        victim = rng.choice([w for w in self.workers if w.alive()] or self.workers)
        victim.kill()
        self.workers.remove(victim)
        self.start_worker()
        return victim.name

    def outage(self, name: str, seconds: float) -> threading.Thread:
        def run() -> None:
            proc = self.retriever if name == "retriever" else self.judge
            proc.kill()
            time.sleep(seconds)
            if name == "retriever":
                self.retriever = self._retriever()
            else:
                self.judge = self._judge()
        thread = threading.Thread(target=run, name=f"{name}-outage", daemon=True)
        thread.start()
        return thread

    def restart_redis(self) -> None:
        self.redis.stop()  # SIGTERM: Redis writes its append-only file and exits
        time.sleep(self.args.redis_down_s)
        self.redis = self._redis()

    def stop(self) -> None:
        for proc in [*self.workers, self.judge, self.retriever, self.redis]:
            proc.stop()


def answered(q: EpisodeQueue) -> int | None:
    """Episodes with a result so far (None while Redis is away)."""
    try:
        return int(q.redis.hlen(job_key(JOB, "done")))
    except (OSError, redis.RedisError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--redis-restarts", type=int, default=1, choices=(0, 1))
    p.add_argument("--outage-s", type=float, default=10.0, help="retriever and judge outage, each")
    p.add_argument("--redis-down-s", type=float, default=8.0, help="how long Redis stays down when restarted")
    p.add_argument("--batch", type=int, default=8, help="WORKER_BATCH_SIZE")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--max-attempts", type=int, default=6, help="WORKER_MAX_ATTEMPTS")
    p.add_argument("--timeout-s", type=float, default=3600.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    started = time.monotonic()
    cluster = Cluster(args, work)
    try:
        q = EpisodeQueue(cluster.redis.url)
        for _ in range(args.workers):
            cluster.start_worker()
        reqs = episodes(args.episodes, args.max_new_tokens)
        q.enqueue(reqs)
        n = args.episodes
        events: list[tuple[int, str]] = [(max(1, int(n * (0.05 + 0.85 * i / max(args.kills - 1, 1)))), "kill")
                                         for i in range(args.kills)]
        events += [(int(n * 0.2), "retriever"), (int(n * 0.4), "judge")]
        events += [(int(n * 0.6), "redis")] * args.redis_restarts
        events.sort()
        done_events: list[str] = []
        outages: list[threading.Thread] = []
        deadline = time.monotonic() + args.timeout_s
        count = 0
        while time.monotonic() < deadline:
            got = answered(q)
            count = got if got is not None else count
            while events and count >= events[0][0]:
                _, what = events.pop(0)
                if what == "kill":
                    done_events.append(f"kill {cluster.kill_random_worker(rng)} at {count}")
                elif what == "redis":
                    cluster.restart_redis()
                    done_events.append(f"redis restart at {count}")
                else:
                    outages.append(cluster.outage(what, args.outage_s))
                    done_events.append(f"{what} outage at {count}")
            if count >= n and not events:
                break
            time.sleep(0.2)
        for thread in outages:
            thread.join(timeout=300)
        time.sleep(3.0)  # a late duplicate (a killed worker's run, re-run elsewhere) would show up now
        entries = cast(list[Any], q.redis.xrange(results_key(JOB)))
        results = [json.loads(fields["result"]) for _, fields in entries]
        ids = [r["episode_id"] for r in results]
        logs = "".join(w.read_text(errors="replace") for w in cluster.logs.glob("worker-*.log"))
    finally:
        cluster.stop()
    wanted = {r.episode_id for r in reqs}
    duplicates = len(ids) - len(set(ids))
    lost = len(wanted - set(ids))
    dead = sum(1 for r in results if r["finish_reason"] == "error")
    search_failures = sum(int(r["search_failures"]) for r in results)
    judge_failures = sum(int(r.get("reward_parts", {}).get("judge_failed", 0)) for r in results)
    for line in done_events:
        print(line)
    kills = sum(1 for e in done_events if e.startswith("kill"))
    restarts = sum(1 for e in done_events if e.startswith("redis"))
    ok = len(results) == n and duplicates == 0 and lost == 0
    print(f"BENCH chaos episodes={n} results={len(results)} duplicates={duplicates} lost={lost} kills={kills} "
          f"redis_restarts={restarts} redis_down_s={args.redis_down_s:.0f} retriever_outage_s={args.outage_s:.0f} judge_outage_s={args.outage_s:.0f} "
          f"workers={args.workers} dead_lettered={dead} search_failures={search_failures} "
          f"judge_failures={judge_failures} redis_retries={len(REDIS_RETRY.findall(logs))} "
          f"reruns_dropped={logs.count('already had a result')} seconds={time.monotonic() - started:.0f} "
          f"ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
