"""What the trajectory browser and the eval predictions show (services/trainer/learn/trajectories.py,
eval/harness.py ``predictions``): the policy's text and the environment's apart exactly where the loss
mask changes, the searches the policy made, a bounded sample that covers every group first, and an
errored episode scored 0 as the report scores it. The embedded SmolLM2 tokenizer is the real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.trainer.eval.harness import predictions
from services.trainer.learn.trajectories import Decode, episode_view, pick, step_samples
from shared.protocol import get_template
from shared.schemas import EpisodeRequest, EpisodeResult

OBSERVATION = get_template("search_r1").format_observation("Doc 1(Title: Paris) Paris is the capital of France.")
TURNS = [
    ("policy", "<think> I should look it up. </think>\n<search> capital of France </search>"),
    ("observation", OBSERVATION),
    ("policy", "<think> Doc 1 says Paris. </think>\n<answer> Paris </answer>"),
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path))


@pytest.fixture(scope="module")
def decode(tokenizer: Any) -> Decode:
    return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))


def episode(tokenizer: Any, episode_id: str = "j:0:g0:0", group: str | None = "j:0:g0", **fields: Any) -> EpisodeResult:
    """An episode as a worker writes it: each turn tokenized on its own, mask 1 on the policy's tokens."""
    ids: list[int] = []
    mask: list[int] = []
    for role, text in TURNS:
        seg = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += seg
        mask += [1 if role == "policy" else 0] * len(seg)
    defaults: dict[str, Any] = {
        "job_id": "j", "episode_id": episode_id, "group_id": group, "response_ids": ids, "loss_mask": mask,
        "prompt_ids": list(tokenizer("Question: capital of France?")["input_ids"]), "answer": "Paris",
        "reward": 1.2, "reward_parts": {"format": 1.0, "answer": 1.0}, "turns": 2, "searches": 1,
        "finish_reason": "answer", "scores": {"em": 1.0, "cover_em": 1.0, "f1": 1.0, "recall": 1.0}}
    return EpisodeResult(**{**defaults, **fields})


def test_view_shows_policy_turns_observations_and_searches_apart(tokenizer: Any, decode: Decode) -> None:
    view = episode_view(episode(tokenizer), decode)
    assert [(t["role"], t["text"]) for t in view["turns"]] == TURNS
    assert view["searches"] == ["capital of France"]
    assert view["answer"] == "Paris" and view["reward_parts"] == {"format": 1.0, "answer": 1.0}
    assert view["scores"]["em"] == 1.0 and view["finish_reason"] == "answer"


def test_sample_is_bounded_and_covers_every_group_first(tokenizer: Any, decode: Decode) -> None:
    results = [episode(tokenizer, f"j:0:g{g}:{i}", f"j:0:g{g}") for g in range(3) for i in range(4)]
    kept = pick(results, 4)
    assert [r.episode_id for r in kept] == ["j:0:g0:0", "j:0:g1:0", "j:0:g2:0", "j:0:g0:1"]
    assert len(pick(results, 64)) == 12 and pick(results, 0) == []

    requests = {r.episode_id: EpisodeRequest(job_id="j", episode_id=r.episode_id, question="Capital of France?",
                                              ground_truth=["Paris"], meta={"prompt_id": "q7"}) for r in results}
    rows = step_samples(3, results, requests, 2, decode)
    assert len(rows) == 2
    assert rows[0]["step"] == 3 and rows[0]["question"] == "Capital of France?" and rows[0]["prompt_id"] == "q7"
    assert rows[0]["ground_truth"] == ["Paris"] and "capital of France" in rows[0]["prompt"]
    assert rows[0]["turns"][1]["role"] == "observation"


def test_predictions_list_every_question_in_order_with_the_reports_scores(tokenizer: Any, decode: Decode) -> None:
    rows = {"hotpotqa": [{"id": "a", "question": "Q a?", "answers": ["Paris"]},
                         {"id": "b", "question": "Q b?", "answers": ["Rome"]}]}
    results = {
        "rag": [episode(tokenizer, "hotpotqa:b", None, scores={"em": 0.0, "acc": 1.0, "cover_em": 0.0, "f1": 0.4,
                                                                      "recall": 0.5}),
                episode(tokenizer, "hotpotqa:a", None)],
        "agent": [episode(tokenizer, "hotpotqa:a", None, finish_reason="error", error="worker died"),
                  episode(tokenizer, "hotpotqa:b", None)],
    }
    out = list(predictions(results, rows, "search_r1", lambda method: decode))
    assert [(p["method"], p["id"]) for p in out] == [("rag", "a"), ("rag", "b"), ("agent", "a"), ("agent", "b")]
    rag_b = out[1]
    assert rag_b["question"] == "Q b?" and rag_b["gold"] == ["Rome"] and rag_b["prediction"] == "Paris"
    assert rag_b["scores"] == {"em": 0.0, "acc": 1.0, "cover_em": 0.0, "f1": 0.4, "recall": 0.5}
    assert rag_b["searches"] == ["capital of France"] and rag_b["turns"][1]["role"] == "observation"
    assert out[2]["scores"] == dict.fromkeys(("em", "acc", "cover_em", "f1", "recall"), 0.0)  # errored: 0, as summarize
    assert out[2]["error"] == "worker died"
