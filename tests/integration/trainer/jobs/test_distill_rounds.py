"""Self-distillation rounds for real: a ``distill`` job with ``rounds: 2`` through the trainer's API, a real
rollout worker running the teacher (round 1: the embedded SmolLM2; round 2: round 1's SFT checkpoint) on fresh
HotpotQA train-part questions each round, a CPU SFT step per round and a tiny eval of each checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.client import TrainerClient
from shared.processes import Proc

pytestmark = pytest.mark.slow

N = 2  # prompts per round


def test_two_rounds_each_teacher_is_the_last_checkpoint(
        job_client: TrainerClient, private_redis: Proc, small_retriever: Proc,
        start_worker: Callable[..., Proc]) -> None:
    worker = start_worker(private_redis.url, "rounds-w", retriever_url=small_retriever.url, batch_size=4)
    config = {
        "teacher": "smollm2", "prompts": {"dataset": "hotpotqa"}, "n": N, "temperature": 0.0,
        "keep": "f1", "min_score": 0.0,  # every answered trajectory is kept: the 135M teacher is rarely right
        "episode": {"max_turns": 1, "max_total_tokens": 160, "obs_max_tokens": 48, "topk": 1,
                    "sampling": {"max_new_tokens": 24, "seed": 0}},
        "rounds": 2,
        "sft": {"max_steps": 1, "micro_batch_size": 2, "grad_accum": 1, "max_length": 512},
        "eval": {"n": 2, "config": {"max_new_tokens": 16, "max_turns": 1, "max_total_tokens": 160,
                                    "obs_max_tokens": 48, "topk": 1}},
    }
    job_id = job_client.submit("distill", config)
    status = job_client.wait(job_id, timeout_s=300)
    assert status.state == "succeeded", f"{status.error}\n--- worker\n{worker.log_tail()}"

    result = json.loads(job_client.artifact(job_id, "result.json"))
    first, second = result["rounds"]
    assert [first["round"], second["round"]] == [1, 2]
    assert first["teacher"] == "smollm2" and first["trained"] and Path(first["checkpoint"]).is_dir()
    assert second["teacher"] == first["checkpoint"]  # round 2's teacher is round 1's SFT checkpoint
    assert result["checkpoint"] == second["checkpoint"] != first["checkpoint"]
    assert f"of {job_id}-r2:teacher@v0 in" in worker.log_tail(800)  # the workers ran round 2 with it
    for row in (first, second):
        assert row["attempts"] == N and 0 <= row["accepted"] <= N
        assert row["accept_rate"] == pytest.approx(row["accepted"] / N, abs=1e-4)
        assert set(row["eval"]) == {"cover_em", "acc", "em", "f1", "answered"}
    assert second["records"] >= first["records"]  # round 2 trains on both rounds' records

    # fresh prompts each round, and round 2's records name their teacher
    episodes = [[json.loads(x) for x in job_client.artifact(job_id, f"round{k}/distill/episodes.jsonl")
                 .decode().splitlines()] for k in (1, 2)]
    assert not {e["prompt_id"] for e in episodes[0]} & {e["prompt_id"] for e in episodes[1]}
    records = [json.loads(x) for x in Path(second["records_file"]).read_text().splitlines()]
    assert all(r["meta"]["teacher"] == first["checkpoint"] for r in records)

    # one metrics row per round, and the job's final metrics per round
    rows = [json.loads(x) for x in job_client.artifact(job_id, "metrics.jsonl").decode().splitlines()]
    assert [r["round"] for r in rows if "round" in r] == [1, 2]
    assert status.metrics["rounds"] == 2
    assert {"r1/accept_rate", "r2/accept_rate", "r1/eval_cover_em", "r2/eval_f1", "r2/records"} <= set(status.metrics)


def test_rounds_settings_are_checked_at_submission(job_client: TrainerClient) -> None:
    for config in ({"rounds": 0}, {"rounds": 1000}, {"sft": {"max_steps": 1}},
                   {"rounds": 2, "eval": {"n": 0}}, {"rounds": 2, "student": "/etc"}):
        response = httpx.post(f"{job_client.base_url}/jobs", json={"kind": "distill", "config": config},
                              headers=job_client.headers)
        assert response.status_code == 422, (config, response.text)
