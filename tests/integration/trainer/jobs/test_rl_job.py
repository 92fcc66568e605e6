"""A real RL job through the trainer's API: real Redis, a real retriever, a real rollout worker
(subprocess), the embedded SmolLM2. Two GRPO steps at tiny sizes: the policy's weights change,
the version moves, and the worker loads each new version its requests name and generates with it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.client import TrainerClient
from shared.processes import Proc

pytestmark = pytest.mark.slow


def test_rl_job_updates_the_policy_and_workers_follow(job_client: TrainerClient, private_redis: Proc, small_retriever: Proc,
                                                      start_worker: Callable[..., Proc]) -> None:
    worker = start_worker(private_redis.url, "rl-worker-0", retriever_url=small_retriever.url, batch_size=4)
    config = {
        "model": "smollm2", "steps": 2, "batch_size": 2, "group_size": 2, "micro_batch_size": 4,
        "prompts": {"dataset": "hotpotqa", "limit": 4},
        "episode": {"max_turns": 1, "max_total_tokens": 96, "obs_max_tokens": 32, "topk": 1,
                    "sampling": {"max_new_tokens": 16, "temperature": 1.0, "seed": 0},
                    "reward": {"kind": "hybrid", "metric": "f1", "format_weight": 0.2}},
        # an entropy bonus keeps the gradient non-zero even if every group's rewards tie at this size
        "algo": {"name": "grpo", "entropy_coef": 0.01},
        "optim": {"lr": 1e-4}, "step_timeout_s": 600,
    }
    job_id = job_client.submit("rl", config)
    steps = [e for e in job_client.events(job_id) if e["type"] == "step"]
    status = job_client.wait(job_id, timeout_s=60)
    assert status.state == "succeeded", f"{status.error}\n--- worker\n{worker.log_tail()}"
    assert [e["step"] for e in steps] == [1, 2]

    result = json.loads(job_client.artifact(job_id, "result.json"))
    start, final = result["start_version"], result["final_version"]
    assert final == start + 2  # one new version per step
    versions = [e["metrics"]["policy_version"] for e in steps]
    assert versions == [start + 1, start + 2]
    for e in steps:
        m = e["metrics"]
        assert m["episodes"] == 4 and m["trained_tokens"] > 0
        assert {"reward_mean", "accuracy", "turns_mean", "searches_mean", "p_noise", "max_masks",
                "clipfrac", "entropy", "response_length_mean"} <= set(m)

    # the job keeps a bounded sample of each step's trajectories, the policy's text and the environment's apart
    for step in (1, 2):
        assert f"trajectories/step_000{step}.jsonl" in status.artifacts
    samples = [json.loads(line) for line in job_client.artifact(job_id, "trajectories/step_0001.jsonl").splitlines()]
    assert len(samples) == 4  # batch 2 x group 2, under the default bound of 8
    for s in samples:
        assert s["step"] == 1 and s["question"] and s["ground_truth"] and s["prompt"]
        assert s["turns"][0]["role"] == "policy" and {t["role"] for t in s["turns"]} <= {"policy", "observation"}
        assert set(s["reward_parts"]) >= {"format", "answer"}
    assert sum(s["reward"] for s in samples) / 4 == pytest.approx(steps[0]["metrics"]["reward_mean"])

    # TensorBoard's own reader: every step, under verl's metric names (ours in searchlab/)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(result["checkpoint"]).parent / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"critic/score/mean", "response_length/mean", "actor/pg_loss", "actor/entropy", "actor/ppo_kl",
            "searchlab/accuracy", "searchlab/turns_mean"} <= tags
    scores = events.Scalars("critic/score/mean")
    assert [e.step for e in scores] == [1, 2]
    assert [e.value for e in scores] == pytest.approx([e["metrics"]["reward_mean"] for e in steps])

    # the weights moved
    from safetensors.torch import load_file

    from shared.models import resolve

    tuned = load_file(str(Path(result["checkpoint"]) / "model.safetensors"))
    base = load_file(str(resolve("smollm2") / "model.safetensors"))
    assert any(not bool((tuned[k] == base[k]).all()) for k in tuned)
    assert "checkpoint/model.safetensors" in status.artifacts and "curves.png" in status.artifacts

    # the worker generated step 0 with the start weights and step 1 with the first update (start + 1),
    # each named by the job's requests; the update is a new folder, which it loaded
    log = worker.log_tail(400)
    for version in (start, start + 1):
        assert f"of {job_id}@v{version} in" in log, log
    assert f"loading policy {job_id} v{start + 1} from {result['checkpoint'].rsplit('/', 1)[0]}/policy/v{start + 1}" \
        in log, log


def test_pipelined_rl_trains_each_step_on_the_previous_versions_samples(
        job_client: TrainerClient, private_redis: Proc, small_retriever: Proc, start_worker: Callable[..., Proc]) -> None:
    """max_staleness 1: step k+1's episodes are enqueued before step k's update, so they come from version v
    while the trainer is at v+1 (one-step off-policy), and the job still ends with one version per step."""
    worker = start_worker(private_redis.url, "rl-worker-pipe", retriever_url=small_retriever.url, batch_size=4)
    config = {
        "model": "smollm2", "steps": 3, "batch_size": 2, "group_size": 2, "micro_batch_size": 4, "max_staleness": 1,
        "prompts": {"dataset": "hotpotqa", "limit": 6},
        "episode": {"max_turns": 1, "max_total_tokens": 96, "obs_max_tokens": 32, "topk": 1,
                    "sampling": {"max_new_tokens": 16, "temperature": 1.0, "seed": 0},
                    "reward": {"kind": "hybrid", "metric": "f1", "format_weight": 0.2}},
        "algo": {"name": "grpo", "entropy_coef": 0.01}, "optim": {"lr": 1e-4}, "step_timeout_s": 600,
    }
    job_id = job_client.submit("rl", config)
    steps = [e for e in job_client.events(job_id) if e["type"] == "step"]
    status = job_client.wait(job_id, timeout_s=60)
    assert status.state == "succeeded", f"{status.error}\n--- worker\n{worker.log_tail()}"
    result = json.loads(job_client.artifact(job_id, "result.json"))
    assert result["final_version"] == result["start_version"] + 3
    assert [e["metrics"]["rollout_staleness"] for e in steps] == [0.0, 1.0, 1.0]
    assert all(e["metrics"]["episodes"] == 4 and e["metrics"]["trained_tokens"] > 0 for e in steps)
