"""A trainer restart in the middle of a real RL job (issue 18: the job ended ``interrupted`` and its
queued episodes were orphaned). Real Redis, real trainer processes, real workers, a tiny real model
(2-layer Llama from a config, SmolLM2's tokenizer): the trainer is SIGKILLed during step 2, a new one
starts on the same Redis and the job goes on from its last published ``policy/v2`` to the end."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from services.trainer.rollout.queue import EpisodeQueue
from shared.client import TrainerClient
from shared.models import tiny_llama
from shared.processes import Proc, start_service

pytestmark = pytest.mark.slow
KEY = "resume-key"


def in_queue(q: EpisodeQueue) -> int:
    stats = q.stats()
    return stats["waiting"] + stats["pending"]


def test_an_rl_job_resumes_from_its_last_version_after_a_trainer_restart(
        private_redis: Proc, small_retriever: Proc, start_worker: Callable[..., Proc], waiter: Callable[..., None],
        logs_dir: Path, tmp_path: Path) -> None:
    model = tiny_llama(tmp_path / "out" / "models" / "tiny")  # under the trainer's output root
    env = {"TRAINER_API_KEY": KEY, "TRAINER_REDIS_URL": private_redis.url, "TRAINER_OUTPUT_DIR": str(tmp_path / "out"),
           "TRAINER_RETRIEVER_URL": small_retriever.url, "TRAINER_TORCH_THREADS": "1"}
    config = {
        "model": str(model), "steps": 3, "batch_size": 2, "group_size": 2, "micro_batch_size": 4, "dtype": "float32",
        "prompts": {"dataset": "hotpotqa", "limit": 8},
        "episode": {"max_turns": 1, "max_total_tokens": 64, "obs_max_tokens": 16, "topk": 1,
                    "sampling": {"max_new_tokens": 8, "temperature": 1.0, "seed": 0}},
        "algo": {"name": "grpo", "entropy_coef": 0.01}, "optim": {"lr": 1e-3}, "step_timeout_s": 600,
    }
    q = EpisodeQueue(private_redis.url)
    worker_settings = {"retriever_url": small_retriever.url, "batch_size": 4, "llm__model": str(model),
                       "llm__dtype": "float32", "visibility_timeout_s": 5}
    first = start_service("trainer", env, log_dir=logs_dir)
    try:
        a = start_worker(private_redis.url, "resume-a", **worker_settings)
        client = TrainerClient(first.url, KEY)
        job_id = client.submit("rl", config)
        for event in client.events(job_id):
            if event["type"] == "step":  # step 1 done, v2 published
                break
        a.kill()  # no worker: step 2's episodes wait in the queue ...
        waiter(lambda: in_queue(q) >= 4, 120, "step 2's episodes to be queued")
    finally:
        first.kill()  # ... and the trainer dies with them queued
    orphans = in_queue(q)

    second = start_service("trainer", env, log_dir=logs_dir)
    try:
        client = TrainerClient(second.url, KEY)
        b = start_worker(private_redis.url, "resume-b", **worker_settings)
        status = client.wait(job_id, timeout_s=600)
        assert status.state == "succeeded", f"{status.error}\n--- worker\n{b.log_tail()}"
        steps = [e["step"] for e in client.events(job_id) if e["type"] == "step"]
        assert steps == [1, 2, 3]  # it went on with step 2, not from the start
        result = json.loads(client.artifact(job_id, "result.json"))
        assert result["resumed_from_version"] == 2 and result["final_version"] == 4
        log = b.log_tail(400)
        assert f"of {job_id}@v1 in" not in log  # the start weights were not used again ...
        assert f"loading policy {job_id} v2 from" in log  # ... the resumed run began from policy/v2
        ran = sum(int(n) for n in re.findall(rf"ran (\d+) episode\(s\) of {re.escape(job_id)}@v\d+ in", log))
        assert ran == 8  # steps 2 and 3 (2 x 2 x 2): none of the orphans was run
        assert orphans >= 4
        waiter(lambda: in_queue(q) == 0, 60, "the orphans to be dropped", [b])
    finally:
        second.stop()
