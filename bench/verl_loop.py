"""Throughput of searchlab's verl agent loop: the queue path (Redis + workers) against inline, on CPU.

    python bench/verl_loop.py [--episodes 64] [--max-turn-tokens 40] [--max-turns 2] [--lane 4] [--workers 1,2,4]

Starts a real Redis, a retriever over a small corpus, searchlab's SGLang-compatible policy server
(SmolLM2 on CPU, where verl's SGLang rollout server stands) and rollout workers as subprocesses. One
step's batch of ``--episodes`` samples (HotpotQA train prompts with two worked examples, so the
untrained model searches; greedy) goes through verl's own ``AgentLoopWorker.generate_sequences``
(``services.trainer.verl.local``) with ``SearchlabAgentLoop`` in each dispatch mode:

- ``inline``: the loop generates through the server manager and searches itself;
- ``queue``:  the loop enqueues every sample; one worker (remote lane: all episodes in flight) runs
  them, generating on the policy server over HTTP, and the loop awaits each result;
- workers scaling: the queue path again with each worker's lane capped at ``--lane`` episodes, with
  each count of ``--workers`` (a worker then holds at most ``lane`` episodes, so more workers keep more
  of the step in flight: what adding workers buys when one worker's capacity is the limit).

The clock runs over ``generate_sequences`` (servers and workers started and warm). One line at the end:

    BENCH verl_loop episodes_per_s_queue=… episodes_per_s_inline=… queue_vs_inline=…
                    lane=… episodes_per_s_1_workers=… episodes_per_s_2_workers=… … workers_2_vs_1=… workers_4_vs_1=…
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from services.trainer.rollout.queue import EpisodeQueue
from shared.config import cache_dir
from shared.data import load_split
from shared.models import resolve
from shared.processes import Proc, free_port, spawn, start_redis, start_service, wait_http

EXAMPLES = [
    {"role": "user", "content": "Question: Who wrote Hamlet?"},
    {"role": "assistant", "content": "<think> I need to search. </think> <search> Who wrote Hamlet? </search>"},
    {"role": "user", "content": "Question: What is the capital of Peru?"},
    {"role": "assistant", "content": "<think> I need to search. </think> <search> What is the capital of Peru? "
                                     "</search>"},
]


def parquet(rows: list[dict[str, Any]], out: Path) -> Path:
    from services.trainer.verl.run import qa_to_verl_row, write_parquet

    verl_rows = []
    for i, r in enumerate(rows):
        row = qa_to_verl_row(r, i, "train")
        row["prompt"] = [*EXAMPLES, {"role": "user", "content": f"Question: {r['question']}"}]
        verl_rows.append(row)
    return write_parquet(verl_rows, out)


def config(work: Path, args: argparse.Namespace, retriever: str, dispatch: str) -> Any:
    from services.trainer.verl.overrides import compose
    from services.trainer.verl.run import VerlConfig, prepare

    cfg = VerlConfig(model_path=str(resolve("smollm2")), retriever_url=retriever, dispatch=dispatch,  # type: ignore[arg-type]
                     train_batch_size=8, max_prompt_length=1024, max_response_length=320, max_turns=args.max_turns,
                     max_turn_tokens=args.max_turn_tokens, obs_max_tokens=96, temperature=0.0, n_gpus_per_node=1,
                     tensor_parallel=1, micro_batch_size_per_gpu=1, episode_timeout_s=3600)
    return compose(prepare(cfg, work / f"run-{dispatch}", ["musique"]).stages[0].overrides)


def batch(cfg: Any, data: Path, n: int) -> Any:
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    dataset = RLHFDataset(str(data), AutoTokenizer.from_pretrained(cfg.actor_rollout_ref.model.path), cfg.data)
    out = DataProto.from_single_dict(collate_fn([dataset[i % len(dataset)] for i in range(n)]))
    out.non_tensor_batch["uid"] = np.array([uuid.uuid4().hex for _ in range(n)], dtype=object)
    out.meta_info["global_steps"] = 1
    return out


def timed(cfg: Any, policy_url: str, gen: Any) -> tuple[float, Any]:
    from services.trainer.verl.local import LocalAgentLoopWorker, http_server_manager

    async def go() -> tuple[float, Any]:
        worker = LocalAgentLoopWorker(cfg, http_server_manager(cfg, [policy_url]))
        start = time.monotonic()
        out = await worker.generate_sequences(gen)
        return time.monotonic() - start, out

    return asyncio.run(go())


def start_workers(n: int, lane: int, redis_url: str, policy_url: str, retriever: str, logs: Path) -> list[Proc]:
    q = EpisodeQueue(redis_url)
    procs = []
    for i in range(n):
        name = f"bench-w{i}-{uuid.uuid4().hex[:4]}"
        env = {"WORKER_REDIS_URL": redis_url, "WORKER_NAME": name, "WORKER_RETRIEVER_URL": retriever,
               "WORKER_LLM__BACKEND": "openai", "WORKER_LLM__BASE_URL": policy_url, "WORKER_LLM__MODEL": "smollm2",
               "WORKER_REMOTE_INFLIGHT": str(lane), "WORKER_BLOCK_MS": "100", "OMP_NUM_THREADS": "1"}
        procs.append(spawn(name, [sys.executable, "-m", "services.trainer.rollout.worker"], env=env, log_dir=logs))
    deadline = time.monotonic() + 300
    while len([p for p in procs if p.name in q.workers()]) < n:
        if time.monotonic() > deadline or not all(p.alive() for p in procs):
            raise RuntimeError("workers did not start:\n" + "\n".join(p.log_tail() for p in procs))
        time.sleep(0.2)
    q.close()
    return procs


def stats(out: Any) -> tuple[float, float]:
    """Mean searches and mean policy tokens per episode."""
    traces = out.non_tensor_batch["searchlab"]
    return float(np.mean([t["searches"] for t in traces])), float(out.batch["response_mask"].sum(-1).float().mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=64, help="samples in the step's batch (all in flight)")
    p.add_argument("--max-turn-tokens", type=int, default=40)
    p.add_argument("--max-turns", type=int, default=2)
    p.add_argument("--lane", type=int, default=4, help="per-worker in-flight cap of the scaling runs")
    p.add_argument("--workers", default="1,2,4", help="worker counts of the scaling runs (the first is the base)")
    args = p.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    import os

    from services.retriever.index import ensure_index

    sys.path.insert(0, str(Path(__file__).parent))
    from rollout import small_corpus  # bench/rollout.py's corpus slice

    work = Path(tempfile.mkdtemp(prefix="bench-verl-loop-"))
    logs = work / "logs"
    rows = load_split("hotpotqa", "train", 32)
    index = ensure_index(small_corpus(rows, work / "corpus.jsonl"), cache_dir() / "indexes" / "bench-verl-loop")
    redis = start_redis(log_dir=logs)
    os.environ["SEARCHLAB_REDIS_URL"] = redis.url  # where the loop's queue mode enqueues
    retriever = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(index)}, log_dir=logs)
    port = free_port()
    policy = spawn("policy", [sys.executable, "-m", "services.trainer.rollout.policy_server"], log_dir=logs,
                   env={"POLICY_PORT": str(port), "POLICY_MAX_BATCH": "64", "POLICY_BATCH_WAIT_MS": "10"})
    policy.url = f"http://127.0.0.1:{port}"
    procs: list[Proc] = [redis, retriever, policy]
    results: dict[str, tuple[float, Any]] = {}
    try:
        wait_http(policy, policy.url + "/ready", 300)
        data = parquet(rows, work / "train.parquet")
        cfg = {d: config(work, args, retriever.url, d) for d in ("inline", "queue")}
        gen = batch(cfg["inline"], data, args.episodes)
        timed(cfg["inline"], policy.url, batch(cfg["inline"], data, 4))  # warm-up: server, tokenizer, caches
        results["inline"] = timed(cfg["inline"], policy.url, gen)
        workers = start_workers(1, args.episodes, redis.url, policy.url, retriever.url, logs)
        results["queue"] = timed(cfg["queue"], policy.url, gen)
        for w in workers:
            w.stop()
        for n in counts:
            workers = start_workers(n, args.lane, redis.url, policy.url, retriever.url, logs)
            results[f"{n}_workers"] = timed(cfg["queue"], policy.url, gen)
            for w in workers:
                w.stop()
    finally:
        for proc in reversed(procs):
            proc.stop()

    print(f"{'run':<10}{'episodes':>10}{'seconds':>10}{'episodes/s':>12}{'searches':>10}{'policy tok':>12}")
    rate = {}
    for label, (seconds, out) in results.items():
        rate[label] = len(out) / seconds
        searches, tokens = stats(out)
        print(f"{label:<10}{len(out):>10}{seconds:>10.1f}{rate[label]:>12.3f}{searches:>10.2f}{tokens:>12.1f}")
    base = rate[f"{counts[0]}_workers"]
    scaling = " ".join(f"episodes_per_s_{n}_workers={rate[f'{n}_workers']:.3f}" for n in counts)
    ratios = " ".join(f"workers_{n}_vs_{counts[0]}={rate[f'{n}_workers'] / base:.2f}" for n in counts[1:])
    print(f"BENCH verl_loop episodes_per_s_queue={rate['queue']:.3f} episodes_per_s_inline={rate['inline']:.3f} "
          f"queue_vs_inline={rate['queue'] / rate['inline']:.2f} lane={args.lane} {scaling} {ratios} "
          f"episodes={args.episodes} load_avg={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
