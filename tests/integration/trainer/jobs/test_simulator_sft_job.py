"""A real ``simulator_sft`` job through the trainer's API: HotpotQA train-part questions searched on a
real retriever over the small corpus, labelled by shared.metrics (this trainer has no judge), a CPU
SFT run of the embedded SmolLM2, and a model folder transformers loads."""

from __future__ import annotations

import json

import pytest

from shared.client import TrainerClient

pytestmark = pytest.mark.slow


def test_simulator_sft_job_trains_a_loadable_simulator_model(job_client: TrainerClient) -> None:
    config = {"dataset": "hotpotqa", "limit": 4, "k": 3, "sets_per_query": 1, "words": 12, "epochs": 1,
              "batch_size": 4, "max_len": 192, "lr": 1e-4}
    job_id = job_client.submit("simulator_sft", config)
    events = list(job_client.events(job_id))
    status = job_client.wait(job_id, timeout_s=60)
    assert status.state == "succeeded", status.error

    result = json.loads(job_client.artifact(job_id, "result.json"))
    assert result["examples"] == 4 and result["useful"] + result["noisy"] == 4  # one set of 3 per question
    assert result["label"] == "metric" and result["steps"] == 1
    assert result["first_loss"] > 0 and result["last_loss"] > 0
    assert {"examples", "first_loss", "last_loss"} <= set(status.metrics) and status.metrics["examples"] == 4
    assert {"model/train_examples.jsonl", "model/simulator_sft.json", "model/model.safetensors",
            "result.json"} <= set(status.artifacts)
    examples = job_client.artifact(job_id, "model/train_examples.jsonl").decode().splitlines()
    assert len(examples) == 4 and all(len(json.loads(e)["documents"]) == 3 for e in examples)

    # progress: the start, the examples, one event per optimizer step with its loss
    steps = [e for e in events if e["type"] == "step"]
    assert steps[0]["progress"] == 0.0 and steps[1]["metrics"]["examples"] == 4
    assert [e["step"] for e in steps[2:]] == [1] and steps[-1]["progress"] == 1.0
    assert all(e["metrics"]["loss"] > 0 for e in steps[2:])

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(result["model"])
    tokenizer = AutoTokenizer.from_pretrained(result["model"])
    assert model.config.model_type == "llama" and tokenizer.eos_token
