"""Distillation's filter and record building: a trajectory becomes an SFT record only when it ended
with a closed answer that scores high enough, and the record splits it into the teacher's text and the
environment's exactly where the worker's loss mask does, so the sft job's loader trains on the same
tokens. The embedded SmolLM2 tokenizer is the real one the workers use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.trainer.data.records import SFTRecord, write_records
from services.trainer.learn.distill import DistillConfig, build_requests, keeps, trajectory_record
from services.trainer.learn.prompts import Prompt
from services.trainer.learn.sft import load_records, sft_tokenizer
from shared.protocol import get_template
from shared.schemas import EpisodeResult

TEMPLATE = "search_r1"
OBSERVATION = get_template(TEMPLATE).format_observation("Doc 1(Title: Paris) Paris is the capital of France.")
SEGMENTS = [
    ("policy", "<think> I should look it up. </think>\n<search> capital of France </search>"),
    ("observation", OBSERVATION),
    ("policy", "<think> Doc 1 says Paris. </think>\n<answer> Paris </answer>"),
]
PROMPT = Prompt(id="q1", question="What is the capital of France?", ground_truth=["Paris"])


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path))


def _result(tokenizer: Any, segments: list[tuple[str, str]], **fields: Any) -> EpisodeResult:
    """An episode as a worker writes it: each turn / observation tokenized on its own, mask 1 on policy."""
    ids: list[int] = []
    mask: list[int] = []
    for role, text in segments:
        seg = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += seg
        mask += [1 if role == "policy" else 0] * len(seg)
    defaults: dict[str, Any] = {"job_id": "j", "episode_id": "j:0:0", "response_ids": ids, "loss_mask": mask,
                                "text": "".join(t for _, t in segments), "answer": "Paris", "finish_reason": "answer",
                                "scores": {"em": 1.0, "cover_em": 1.0, "f1": 1.0, "recall": 1.0}}
    return EpisodeResult(**{**defaults, **fields})


def _decode(tokenizer: Any) -> Any:
    return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))


def test_record_splits_the_trajectory_where_the_loss_mask_does(tokenizer: Any, tmp_path: Path) -> None:
    result = _result(tokenizer, SEGMENTS)
    record = trajectory_record(PROMPT, result, TEMPLATE, _decode(tokenizer), "hotpotqa", "smollm2", sample=0)
    assert record is not None
    assert [(s.role, s.text) for s in record.segments] == SEGMENTS
    assert record.messages == get_template(TEMPLATE).build_messages(PROMPT.question)
    assert record.ground_truth == ["Paris"] and record.id == "distill:q1#0"

    # the sft job's own loader and tokenizer: the loss mask is 1 on the teacher's tokens only
    path = tmp_path / "distill.jsonl"
    write_records(path, [record])
    [loaded] = load_records([str(path)])
    ids, mask = sft_tokenizer()(loaded, tokenizer)
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert "capital of France </search>" in trained and "<answer> Paris </answer>" in trained
    assert "Paris is the capital" not in trained  # the observation is masked
    assert SFTRecord.from_dict(loaded).policy_text == SEGMENTS[0][1] + SEGMENTS[2][1]


def test_a_forced_answer_keeps_its_opening_tag_as_environment_text(tokenizer: Any) -> None:
    # at the turn limit the worker opens the answer block itself (mask 0) and the teacher completes it
    nudge = get_template(TEMPLATE).format_observation("The search budget is used up.")
    segments = [SEGMENTS[0], ("observation", OBSERVATION + nudge + "<answer>"), ("policy", " Paris </answer>")]
    result = _result(tokenizer, segments, finish_reason="turn_limit")
    assert keeps(result, "cover_em", 1.0, TEMPLATE)
    record = trajectory_record(PROMPT, result, TEMPLATE, _decode(tokenizer), "hotpotqa", "smollm2")
    assert record is not None and [(s.role, s.text) for s in record.segments] == segments


@pytest.mark.parametrize("fields,rule,min_score,kept", [
    ({}, "cover_em", 1.0, True),
    ({"scores": {"cover_em": 0.0, "f1": 0.4}}, "cover_em", 1.0, False),  # wrong answer
    ({"scores": {"cover_em": 0.0, "f1": 0.4}}, "f1", 0.0, True),  # the permissive filter keeps it
    ({"scores": {"cover_em": 0.0, "f1": 0.4}}, "f1", 0.5, False),
    ({"answer": None, "scores": {}}, "f1", 0.0, False),  # no answer
    ({"finish_reason": "error"}, "f1", 0.0, False),
    ({"reward_parts": {"answer": 1.0, "judge_failed": 0.0}}, "judge", 0.5, True),
    ({"reward_parts": {"answer": 0.0, "judge_failed": 0.0}}, "judge", 0.5, False),
    ({"reward_parts": {"answer": 0.6, "judge_failed": 1.0}}, "judge", 0.5, False),  # the judge did not answer
    ({}, "judge", 0.5, False),  # not judged at all
    ({"reward_parts": {"answer": 1.0}}, "judge", 0.5, False),  # a rule-metric reward is not a judge score
])
def test_filter(tokenizer: Any, fields: dict[str, Any], rule: Any, min_score: float, kept: bool) -> None:
    assert keeps(_result(tokenizer, SEGMENTS, **fields), rule, min_score, TEMPLATE) is kept


def test_an_answer_cut_off_or_followed_by_a_search_is_not_kept(tokenizer: Any) -> None:
    unclosed = [SEGMENTS[0], SEGMENTS[1], ("policy", "<answer> Paris and some more words")]
    assert not keeps(_result(tokenizer, unclosed, finish_reason="token_limit"), "f1", 0.0, TEMPLATE)
    searched_last = [("policy", "<answer> Paris </answer> <search> more </search>"), ("observation", OBSERVATION)]
    assert not keeps(_result(tokenizer, searched_last, finish_reason="token_limit"), "f1", 0.0, TEMPLATE)


def test_an_empty_teacher_turn_gives_no_record(tokenizer: Any) -> None:
    result = _result(tokenizer, [("observation", OBSERVATION), ("policy", "<answer> Paris </answer>")])
    assert trajectory_record(PROMPT, result, TEMPLATE, _decode(tokenizer), "hotpotqa", "smollm2") is None


def test_config_defaults_and_requests() -> None:
    assert DistillConfig().threshold == 1.0 and DistillConfig(keep="judge").threshold == 0.5
    assert DistillConfig(keep="f1", min_score=0.0).threshold == 0.0
    config = DistillConfig.model_validate({"keep": "judge", "samples_per_prompt": 2,
                                           "episode": {"max_turns": 1, "sampling": {"max_new_tokens": 16}}})
    prompts = [PROMPT, PROMPT]  # a user's file may repeat ids: episode ids stay unique
    requests = build_requests(prompts, config, "job", "/models/teacher")
    assert len({r.episode_id for r in requests}) == 4
    assert {r.policy.path for r in requests if r.policy} == {"/models/teacher"} and all(r.policy for r in requests) and {r.method for r in requests} == {"agent"}
    assert {r.reward.metric for r in requests} == {"llm"} and {r.max_turns for r in requests} == {1}
    assert {(r.sampling.temperature, r.sampling.max_new_tokens) for r in requests} == {(0.7, 16)}


def test_config_survives_the_job_store_round_trip() -> None:
    # the engine stores model_dump_json() at submission and validates it again when the job starts
    config = DistillConfig.model_validate({"temperature": 0.2, "keep": "f1", "episode": {"max_turns": 1}})
    again = DistillConfig.model_validate_json(config.model_dump_json())
    assert again == config and again.episode.sampling.temperature == 0.2
    assert DistillConfig.model_validate({"temperature": 0.3, "episode": {"sampling": {"temperature": 0.3}}})


@pytest.mark.parametrize("config,field", [
    ({"keep": "bleu"}, "keep"),
    ({"prompts": {"dataset": "nosuchqa"}}, "dataset"),
    ({"prompts": {"part": "eval"}}, "part"),
    ({"prompts": {"kind": "ramp"}}, "prompts.path"),
    ({"prompts": {"path": "/no/such.jsonl"}}, "prompts.path"),
    ({"teacher": "/no/such/model"}, "teacher"),
    ({"n": 0}, "n"),
    ({"episode": {"sampling": {"temperature": 1.0}}}, "temperature"),  # one place for it: config.temperature
    ({"temperatur": 0.5}, "temperatur"),  # misspelt: refused, not ignored
])
def test_bad_config_names_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        DistillConfig.model_validate(config)
    assert field in str(err.value)
