"""A real ``distill`` job through the trainer's API: real Redis, a real retriever, a real rollout worker
running the embedded SmolLM2 as the teacher on HotpotQA train-part questions. The 135M teacher is
rarely right, so a permissive filter (F1 >= 0) exercises the record writing (read back by the sft
job's own loader) and the default strict one (cover-EM = 1) must drop the wrong answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.client import TrainerClient
from shared.processes import Proc

pytestmark = pytest.mark.slow

N = 4


def _run(client: TrainerClient, worker: Proc, **config: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    base = {"teacher": "smollm2", "prompts": {"dataset": "hotpotqa"}, "n": N, "temperature": 0.0,
            "episode": {"max_turns": 1, "max_total_tokens": 160, "obs_max_tokens": 48, "topk": 1,
                        "sampling": {"max_new_tokens": 24, "seed": 0}}, "timeout_s": 300}
    job_id = client.submit("distill", {**base, **config})
    status = client.wait(job_id, timeout_s=180)
    assert status.state == "succeeded", f"{status.error}\n--- worker\n{worker.log_tail()}"
    assert {"distill/distill.jsonl", "distill/episodes.jsonl", "result.json"} <= set(status.artifacts)
    result = json.loads(client.artifact(job_id, "result.json"))
    assert status.metrics["kept"] == result["kept"] and status.metrics["keep_rate"] == result["keep_rate"]
    episodes = [json.loads(x) for x in client.artifact(job_id, "distill/episodes.jsonl").decode().splitlines()]
    assert result["episodes"] == len(episodes) == N and 0 <= result["kept"] <= result["episodes"]
    assert result["kept"] == sum(e["kept"] for e in episodes) == len(Path(result["records"]).read_text().splitlines())
    assert result["keep_rate"] == pytest.approx(result["kept"] / N, abs=1e-4)
    return result, episodes


def test_distill_job_turns_answered_trajectories_into_sft_records(
        job_client: TrainerClient, private_redis: Proc, small_retriever: Proc, smollm2_path: Path,
        start_worker: Callable[..., Proc]) -> None:
    worker = start_worker(private_redis.url, "distill-w", retriever_url=small_retriever.url, batch_size=4)

    # permissive: every trajectory that ended with an answer is kept
    result, episodes = _run(job_client, worker, keep="f1", min_score=0.0)
    job_id = episodes[0]["episode_id"].rsplit(":", 2)[0]  # episode ids are <job>:<prompt>:<sample>
    assert f"of {job_id}:teacher@v0 in" in worker.log_tail(400)  # the teacher, named by every episode
    assert result["kept"] == result["answered"] > 0
    assert all(e["answer"] is not None for e in episodes if e["kept"])

    from transformers import AutoTokenizer

    from services.trainer.learn.sft import load_records, sft_tokenizer

    records = load_records([result["records"]])  # what an sft job with {"data": [records]} reads
    assert len(records) == result["kept"]
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path))
    for record in records:
        assert record["segments"][-1]["role"] == "policy" and "</answer>" in record["segments"][-1]["text"]
        ids, mask = sft_tokenizer()(record, tokenizer)
        assert sum(mask) > 0 and len(mask) == len(ids)
        assert record["meta"]["prompt_id"] in {e["prompt_id"] for e in episodes}

    # strict (the default: cover-EM = 1): a wrong answer is never kept
    strict, strict_episodes = _run(job_client, worker)
    assert strict["keep"] == "cover_em" and strict["min_score"] == 1.0
    wrong = [e for e in strict_episodes if e["answer"] is not None and e["scores"]["cover_em"] < 1.0]
    assert wrong and not any(e["kept"] for e in wrong)
    assert all(e["scores"]["cover_em"] >= 1.0 for e in strict_episodes if e["kept"])
