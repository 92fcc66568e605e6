"""searchlab's reward as verl's custom reward function, scoring the trajectory the agent loop produced.

verl 0.7.1 computes rewards in its reward loop (``RewardLoopWorker`` -> the ``naive`` reward manager),
which loads this file by path (``reward.custom_reward_function``) and awaits, for every sample::

    compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)

``solution_str`` is the decoded response; ``extra_info`` is the parquet row's ``extra_info`` with the
agent loop's ``extra_fields`` merged in, so ``extra_info["searchlab"]`` is the trajectory's structure
(:func:`services.trainer.verl.agent_loop.trajectory_trace`): its pieces, each marked as written by the
policy or by the environment, and the searches the environment really ran. The score:

- **format**: Search-R1's state machine over the real tags (:func:`shared.rewards.check_trajectory_format`):
  an ``<information>`` block the policy wrote itself is a fabrication and fails the format, and so does a
  trajectory with fewer than ``min_searches`` real searches. Without the structure (another agent loop)
  every piece counts as the policy's: a made-up observation is never mistaken for a search.
- **answer**: EM / F1 / acc / cover-EM / recall from :mod:`shared.metrics`, or the judge service
  (``metric="llm"``): answers of concurrent samples are batched into one ``POST /judge`` and cached.
- **reward**: the :mod:`shared.rewards` registry (``hybrid``, ``search_r1``, ``research`` = F1 else 0.1),
  with the enumeration / length guard and, for DAPO, the soft overlong penalty (here rather than in
  verl's ``dapo`` manager, which does not pass the agent loop's fields to the reward).

``reward_kwargs`` (``reward.custom_reward_function.reward_kwargs``): ``reward``, ``metric``,
``format_weight``, ``template``, ``min_searches``, ``judge_url``, ``overlong_max`` / ``overlong_buffer``
/ ``overlong_penalty``. The judge's bearer token comes from ``SEARCHLAB_JUDGE_API_KEY`` (else ``SEARCHLAB_API_KEY``), never from
the config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from services.trainer.verl.judging import judge_for
from services.trainer.verl.loop_config import TRACE_KEY
from shared.client import ServiceCallError
from shared.protocol import extract_answer
from shared.rewards import OverlongConfig, RewardConfig, check_trajectory_format, compute_reward

log = logging.getLogger(__name__)




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


# --------------------------------------------------------------------------- compute_score


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    reward: str = "hybrid",
    metric: str = "f1",
    format_weight: float = 0.2,
    template: str = "search_r1",
    min_searches: int = 1,
    judge_url: str | None = None,
    overlong_max: int | None = None,
    overlong_buffer: int | None = None,
    overlong_penalty: float = 1.0,
    **_: Any,
) -> dict[str, float]:
    """The reward of one trajectory, with its parts (verl logs every key beside ``score``)."""
    info = dict(extra_info or {})
    trace = info.get(TRACE_KEY) if isinstance(info.get(TRACE_KEY), Mapping) else None
    segments = [(bool(env), str(text)) for env, text in trace["segments"]] if trace else None
    response = "".join(text for _, text in segments) if segments is not None else solution_str
    searches = int(trace["searches"]) if trace else 0
    fmt = check_trajectory_format(segments, response, template, searches=searches, min_searches=min_searches)
    gold = gold_list(ground_truth)
    overlong = (OverlongConfig(overlong_max, overlong_buffer, overlong_penalty)
                if overlong_max and overlong_buffer else None)
    config = RewardConfig(template=template, metric="f1" if metric == "llm" else metric,
                          format_weight=format_weight, overlong=overlong,
                          allow_unclosed_answer=bool(trace and trace.get("forced_answer")))
    answer_score, judge_failed = None, 0.0
    if metric == "llm":
        if not judge_url:
            raise ValueError("metric 'llm' needs judge_url (the judge service) in reward_kwargs")
        answer = extract_answer(response, template, allow_unclosed=config.allow_unclosed_answer)
        if answer is not None:
            try:
                answer_score = await judge_for(judge_url).score(str(info.get("question", "")), gold, answer)
            except ServiceCallError as exc:
                log.warning("judge failed (%s); rule metric f1 used for this sample", exc)
                judge_failed = 1.0
    length = int(trace["response_tokens"]) if trace else None
    parts = compute_reward(reward, response, gold, config=config, answer_score=answer_score,
                           response_length=length, format_check=fmt)
    return {"score": parts.total, "format": parts.format, "answer": parts.answer, "penalty": parts.penalty,
            "format_ok": float(parts.format_ok), "searches": float(searches),
            "search_failures": float(trace["search_failures"]) if trace else 0.0, "judge_failed": judge_failed}
