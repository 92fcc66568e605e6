"""Rollout throughput: continuous batching with KV reuse vs per-turn batches vs one episode at a time.

    python bench/rollout.py [--n 8] [--batch 8] [--max-new-tokens 32] [--max-turns 2] [--noop 100] [--policy DIR]
                            [--threads 1]

Starts a real Redis, a retriever over a small corpus (the first 2,000 passages plus the supporting
passages of the questions) and rollout workers as subprocesses (``python -m services.trainer.rollout.worker``).
The same N agent episodes (HotpotQA questions, greedy) run three times, each through its own worker:

- ``continuous``  ``WORKER_ROLLOUT=continuous`` (the default), ``WORKER_BATCH_SIZE=batch``;
- ``per_turn``    the earlier worker: ``WORKER_ROLLOUT=per_turn WORKER_LLM__ENGINE=batch``, same batch size;
- ``sequential``  the earlier worker one episode at a time (``WORKER_BATCH_SIZE=1``).

``--policy DIR`` runs every episode with that model folder (e.g. the demo's SFT checkpoint, a policy that
searches: the base model mostly answers at once, so its rows run in lockstep and there is little to overlap).
``--threads`` is each worker's torch thread count, the same for all three (default 1, as in the local
cluster, where two workers share two cores; 2 is one worker with the machine to itself: a one-row decode
step is bound by reading the weights, a batched one by arithmetic, so only the batched worker gains).
The clock runs from enqueue to the last result (model loading excluded). Then the queue's own
overhead: no-op episodes sent one at a time, enqueue -> result. Ends with one line:

    BENCH rollout episodes_per_s=… continuous_vs_sequential=… per_turn_vs_sequential=… queue_overhead_ms=…
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from services.trainer.rollout.queue import EpisodeQueue
from shared.config import cache_dir, corpus_path
from shared.data import load_split, open_text
from shared.processes import Proc, spawn, start_redis, start_service
from shared.schemas import EpisodeRequest, EpisodeResult, EpisodeSampling, PolicyRef


def small_corpus(rows: list[dict], out: Path, first: int = 2000) -> Path:
    wanted = {pid for r in rows for pid in r.get("supporting_passage_ids", [])}
    with open_text(corpus_path()) as src, open(out, "w") as dst:
        for i, line in enumerate(src):
            if i < first or json.loads(line)["id"] in wanted:
                dst.write(line)
    return out


RUNS = {  # label -> (batched?, worker env)
    "continuous": (True, {"WORKER_ROLLOUT": "continuous", "WORKER_LLM__ENGINE": "continuous"}),
    "per_turn": (True, {"WORKER_ROLLOUT": "per_turn", "WORKER_LLM__ENGINE": "batch"}),
    "sequential": (False, {"WORKER_ROLLOUT": "per_turn", "WORKER_LLM__ENGINE": "batch"}),
}


def start_worker(redis_url: str, name: str, batch: int, retriever_url: str, logs: Path,
                 extra: dict[str, str]) -> Proc:
    env = {"WORKER_REDIS_URL": redis_url, "WORKER_NAME": name, "WORKER_BATCH_SIZE": str(batch),
           "WORKER_RETRIEVER_URL": retriever_url, "WORKER_BLOCK_MS": "100", "WORKER_HEARTBEAT_S": "0.5", **extra}
    return spawn(name, [sys.executable, "-m", "services.trainer.rollout.worker"], env=env, log_dir=logs)


def wait_registered(q: EpisodeQueue, name: str, proc: Proc, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while name not in q.workers():
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"worker {name} did not start:\n{proc.log_tail()}")
        time.sleep(0.2)


def run_job(q: EpisodeQueue, job: str, rows: list[dict], args: argparse.Namespace) -> tuple[float, list[EpisodeResult]]:
    sampling = EpisodeSampling(max_new_tokens=args.max_new_tokens, temperature=0.0)
    policy = PolicyRef(owner="bench", path=args.policy) if args.policy else None
    reqs = [EpisodeRequest(job_id=job, episode_id=str(r["id"]), method="agent", question=r["question"],
                           ground_truth=r["answers"], sampling=sampling, max_turns=args.max_turns, topk=3,
                           obs_max_tokens=128, policy=policy) for r in rows]
    start = time.monotonic()
    q.enqueue(reqs)
    results = q.wait(job, len(reqs), timeout_s=3600)
    return time.monotonic() - start, results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8, help="agent episodes per run")
    p.add_argument("--batch", type=int, default=8, help="WORKER_BATCH_SIZE of the batched worker")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-turns", type=int, default=2)
    p.add_argument("--noop", type=int, default=100, help="no-op episodes for the queue overhead")
    p.add_argument("--policy", default="", help="model folder every episode runs with (default: the worker's model)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each worker (all three runs alike)")
    args = p.parse_args()
    threads = {var: str(args.threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    rows = load_split("hotpotqa", "eval", args.n)
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    logs = work / "logs"
    from services.retriever.index import ensure_index

    index = ensure_index(small_corpus(rows, work / "corpus.jsonl"), cache_dir() / "indexes" / "bench-rollout")
    redis = start_redis(log_dir=logs)
    retriever = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(index)}, log_dir=logs)
    procs: list[Proc] = [redis, retriever]
    q = EpisodeQueue(redis.url)
    try:
        timings: dict[str, tuple[float, list[EpisodeResult]]] = {}
        for label, (batched, extra) in RUNS.items():
            worker = start_worker(redis.url, f"bench-{label}", args.batch if batched else 1, retriever.url, logs,
                                  {**extra, **threads})
            procs.append(worker)
            wait_registered(q, f"bench-{label}", worker)
            timings[label] = run_job(q, f"bench-{label}", rows, args)
            if label != "sequential":
                worker.stop()

        # queue overhead: the sequential worker (batch 1, no batch-fill wait) answers no-op episodes
        latencies = []
        for i in range(args.noop):
            t0 = time.monotonic()
            q.enqueue([EpisodeRequest(job_id=f"bench-noop{i}", episode_id=f"noop{i}", method="noop")])
            q.wait(f"bench-noop{i}", 1, timeout_s=60)
            latencies.append(time.monotonic() - t0)
    finally:
        q.close()
        for proc in reversed(procs):
            proc.stop()

    print(f"{'run':<12}{'episodes':>10}{'seconds':>10}{'episodes/s':>12}{'gen tokens':>12}{'tokens/s':>10}"
          f"{'turns':>8}{'searches':>10}")
    rates: dict[str, tuple[float, float]] = {}
    for label, (seconds, results) in timings.items():
        tokens = sum(sum(r.loss_mask) for r in results)
        rates[label] = (len(results) / seconds, tokens / seconds)
        print(f"{label:<12}{len(results):>10}{seconds:>10.1f}{rates[label][0]:>12.3f}{tokens:>12}"
              f"{rates[label][1]:>10.1f}{statistics.mean(r.turns for r in results):>8.2f}"
              f"{statistics.mean(r.searches for r in results):>10.2f}")
    overhead_ms = 1000 * statistics.median(latencies)
    print(f"queue overhead (no-op episode, enqueue -> result): median {overhead_ms:.1f} ms, "
          f"p90 {1000 * sorted(latencies)[int(0.9 * len(latencies))]:.1f} ms over {len(latencies)}")
    eps, eps_turn, eps_seq = rates["continuous"][0], rates["per_turn"][0], rates["sequential"][0]
    print(f"BENCH rollout episodes_per_s={eps:.3f} episodes_per_s_per_turn={eps_turn:.3f} "
          f"episodes_per_s_sequential={eps_seq:.3f} continuous_vs_sequential={eps / eps_seq:.2f} "
          f"per_turn_vs_sequential={eps_turn / eps_seq:.2f} continuous_vs_per_turn={eps / eps_turn:.2f} "
          f"tokens_per_s={rates['continuous'][1]:.1f} tokens_per_s_per_turn={rates['per_turn'][1]:.1f} "
          f"tokens_per_s_sequential={rates['sequential'][1]:.1f} queue_overhead_ms={overhead_ms:.1f} "
          f"batch={args.batch} n={args.n} threads={args.threads} policy={'base' if not args.policy else Path(args.policy).parent.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
