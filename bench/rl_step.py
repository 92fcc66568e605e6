"""One GRPO step end to end at the demo's sizes: earlier rollouts vs continuous + KV reuse, staleness 0 and 1.

    python bench/rl_step.py [--steps 3] [--workers 2] [--batch 8] [--model DIR]

Starts a real Redis, a retriever over a small corpus (the first 2,000 passages plus the supporting
passages of the questions) and, per run, ``--workers`` rollout workers (subprocesses, ``WORKER_BATCH_SIZE``
as the local cluster's). Each run trains ``--steps`` GRPO steps of the demo's RL stage in this process
(:func:`services.trainer.learn.rl.train_rl`: 4 HotpotQA train questions x 4 samples, two search turns,
96 new tokens a turn, top 10 blocks trained): generation, rewards, update, checkpoint, publish. The
first step (nothing to overlap yet) is left out; a step's time is the mean of the others. ``--model``: the
policy trained (the demo trains its SFT checkpoint, which searches; default the base model).

- ``per_turn``     the earlier worker (``WORKER_ROLLOUT=per_turn WORKER_LLM__ENGINE=batch``), max_staleness 0;
- ``continuous``   the default worker (continuous batching, KV kept across turns), max_staleness 0;
- ``pipelined``    the default worker, max_staleness 1 (step k+1 generated during step k's update).

Ends with ``BENCH rl_step step_s=… step_s_per_turn=… speedup=… speedup_staleness0=…`` (speedup: the
best new run vs ``per_turn``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from rollout import small_corpus  # bench/rollout.py: this folder is on sys.path when run as a script

from services.trainer.learn.rl import RLConfig, Rollouts, train_rl
from services.trainer.rollout.queue import EpisodeQueue
from shared.config import cache_dir
from shared.data import load_split
from shared.processes import Proc, spawn, start_redis, start_service

RUNS = {  # label -> (worker env, max_staleness)
    "per_turn": ({"WORKER_ROLLOUT": "per_turn", "WORKER_LLM__ENGINE": "batch"}, 0),
    "continuous": ({"WORKER_ROLLOUT": "continuous", "WORKER_LLM__ENGINE": "continuous"}, 0),
    "pipelined": ({"WORKER_ROLLOUT": "continuous", "WORKER_LLM__ENGINE": "continuous"}, 1),
}


def demo_config(steps: int, max_staleness: int, model: str = "smollm2") -> RLConfig:
    """The demo's RL stage (services/demo.py, DEFAULT sizes), from ``model``."""
    return RLConfig.model_validate({
        "model": model, "steps": steps, "batch_size": 4, "group_size": 4, "max_staleness": max_staleness,
        "prompts": {"kind": "qa", "dataset": "hotpotqa"},
        "episode": {"max_turns": 2, "max_total_tokens": 1024, "obs_max_tokens": 384, "topk": 3,
                    "sampling": {"max_new_tokens": 96, "temperature": 1.0},
                    "reward": {"kind": "hybrid", "metric": "f1", "format_weight": 0.2}},
        "algo": {"name": "grpo"}, "optim": {"lr": 5e-6}, "micro_batch_size": 2, "train_layers": 10,
        "trajectory_samples": 0, "step_timeout_s": 3600,
    })


def run(label: str, redis_url: str, retriever_url: str, args: argparse.Namespace,
        work: Path) -> tuple[list[float], list[dict[str, float]]]:
    env, staleness = RUNS[label]
    q = EpisodeQueue(redis_url)
    workers = []
    try:
        for i in range(args.workers):
            name = f"rl-{label}-{i}"
            workers.append(spawn(name, [sys.executable, "-m", "services.trainer.rollout.worker"], log_dir=work / "logs",
                                 env={"WORKER_REDIS_URL": redis_url, "WORKER_NAME": name, "WORKER_RETRIEVER_URL": retriever_url,
                                      "WORKER_BATCH_SIZE": str(args.batch), "WORKER_BLOCK_MS": "100", **env}))
        deadline = time.monotonic() + 600
        while not all(f"rl-{label}-{i}" in q.workers() for i in range(args.workers)):
            if time.monotonic() > deadline or not all(w.alive() for w in workers):
                raise RuntimeError(f"workers did not start:\n{workers[0].log_tail()}")
            time.sleep(0.2)
        marks = [time.monotonic()]
        rows: list[dict[str, float]] = []

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            marks.append(time.monotonic())
            rows.append(metrics)

        train_rl(demo_config(args.steps, staleness, args.model), f"bench-{label}", work / label,
                 Rollouts(redis_url, f"bench-{label}"), on_step=on_step)
        return [b - a for a, b in zip(marks, marks[1:], strict=False)], rows
    finally:
        q.close()
        for w in workers:
            w.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="GRPO steps per run (the first is left out)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="WORKER_BATCH_SIZE (the local cluster's default)")
    p.add_argument("--runs", default=",".join(RUNS), help="which runs, comma-separated")
    p.add_argument("--model", default="smollm2", help="the policy trained: embedded name or a checkpoint folder")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)  # the trainer gets every core, as in the local cluster
    work = Path(tempfile.mkdtemp(prefix="bench-rl-step-"))
    from services.retriever.index import ensure_index

    index = ensure_index(small_corpus(load_split("hotpotqa", "train", 200), work / "corpus.jsonl"), cache_dir() / "indexes" / "bench-rl-step")
    redis = start_redis(log_dir=work / "logs")
    procs: list[Proc] = [redis]
    times: dict[str, list[float]] = {}
    parts_of: dict[str, list[dict[str, float]]] = {}
    try:
        retriever = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(index)}, log_dir=work / "logs")
        procs.append(retriever)
        for label in args.runs.split(","):
            times[label], parts_of[label] = run(label, redis.url, retriever.url, args, work)
    finally:
        for proc in reversed(procs):
            proc.stop()
    print("| run | max_staleness | step seconds (each) | step s (mean after the first) | waiting for episodes s "
          "| update + publish s | policy tokens a step |\n|---|---:|---|---:|---:|---:|---:|")
    mean = {}
    for label, secs in times.items():
        later, rows = secs[1:] or secs, parts_of[label][1:] or parts_of[label]
        mean[label] = sum(later) / len(later)
        part = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in ("rollout_s", "update_s", "trained_tokens")}
        print(f"| {label} | {RUNS[label][1]} | {', '.join(f'{s:.1f}' for s in secs)} | {mean[label]:.1f} "
              f"| {part['rollout_s']:.1f} | {part['update_s']:.1f} | {part['trained_tokens']:.0f} |")
    base = mean.get("per_turn")
    best = min((v for k, v in mean.items() if k != "per_turn"), default=None)
    parts = [f"step_s_{k}={v:.1f}" for k, v in mean.items()]
    if base and best:
        parts += [f"step_s={best:.1f}", f"speedup={base / best:.2f}"]
        if "continuous" in mean:
            parts.append(f"speedup_staleness0={base / mean['continuous']:.2f}")
    print(f"BENCH rl_step {' '.join(parts)} steps={args.steps} workers={args.workers} batch={args.batch} episodes=16 "
          f"model={'base' if args.model == 'smollm2' else Path(args.model).parent.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
