"""searchlab's reward as a verl custom reward function (``reward.custom_reward_function``).

verl loads this file by path and calls ``compute_score(data_source, solution_str, ground_truth,
extra_info, **reward_kwargs)`` for every response. The score comes from the same
:mod:`shared.rewards` functions the local trainer uses, and when ``metric == "llm"`` the
answer part is the judge service's verdict, fetched through :class:`shared.client.JudgeClient`:
one path for the local trainer, the data pipelines and verl.

``reward_kwargs`` (from ``reward.custom_reward_function.reward_kwargs`` in the verl config):
``reward`` (registry name: hybrid | search_r1 | research), ``metric`` (em | cover_em | f1 |
recall | llm), ``format_weight``, ``template``, ``judge_url``, ``judge_api_key``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from shared.client import JudgeClient
from shared.protocol import extract_answer
from shared.rewards import RewardConfig, compute_reward


def gold_list(ground_truth: Any) -> list[str]:
    """verl datasets carry the gold as ``{"target": [...]}`` (Search-R1), a list, or a string."""
    if isinstance(ground_truth, Mapping):
        ground_truth = ground_truth.get("target", ground_truth.get("answers", []))
    if isinstance(ground_truth, str):
        return [ground_truth]
    if isinstance(ground_truth, Sequence) or hasattr(ground_truth, "tolist"):
        items = ground_truth.tolist() if hasattr(ground_truth, "tolist") else list(ground_truth)
        return [str(g) for g in items]
    return [str(ground_truth)]


@lru_cache(maxsize=8)
def _judge(url: str, api_key: str | None) -> JudgeClient:
    return JudgeClient(url, api_key, timeout_s=120.0)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    reward: str = "hybrid",
    metric: str = "f1",
    format_weight: float = 0.2,
    template: str = "search_r1",
    judge_url: str | None = None,
    judge_api_key: str | None = None,
    **_: Any,
) -> dict[str, float]:
    """The reward of one response, with its parts (verl logs every key beside ``score``)."""
    gold = gold_list(ground_truth)
    answer_score: float | None = None
    rule_metric = metric
    if metric == "llm":
        if not judge_url:
            raise ValueError("metric 'llm' needs judge_url (the judge service) in reward_kwargs")
        answer = extract_answer(solution_str, template)
        if answer is not None:
            question = str((extra_info or {}).get("question", ""))
            verdict = _judge(judge_url, judge_api_key).judge(
                [{"question": question, "gold": gold, "prediction": answer}], "llm")
            answer_score = float(verdict.scores[0])
        rule_metric = "em"  # only used for the guard's bookkeeping; the score is the judge's
    config = RewardConfig(template=template, metric=rule_metric, format_weight=format_weight)
    parts = compute_reward(reward, solution_str, gold, config=config, answer_score=answer_score)
    return {"score": parts.total, "format": parts.format, "answer": parts.answer, "penalty": parts.penalty,
            "format_ok": float(parts.format_ok)}
