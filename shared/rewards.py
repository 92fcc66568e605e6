"""Rewards for search-agent RL: format check, answer scores, hybrid / Search-R1 / ReSearch rewards, guards.

Every reward function has the same shape::

    reward_fn(response, gold, *, config=RewardConfig(), answer_score=None, response_length=None,
              format_check=None) -> RewardBreakdown(format, answer, penalty, total, ...)

- ``response`` is the policy's part of the trajectory (generated text plus appended observations),
  not the prompt. A response without an answer scores 0 for the answer part; nothing here raises on
  malformed text.
- The answer part is ``metrics.best_match(answer, gold, config.metric)`` (one definition of correct).
  An external scorer (the LLM judge via ``shared.client.JudgeClient``) plugs in by passing
  ``answer_score``: extract the answer with ``protocol.extract_answer(response, config.template)``,
  judge it, then call the same reward function with the judge's score. The guard and the format part
  apply identically on both paths. A response with no extractable answer scores 0 even if a score is
  passed.
- ``RewardBreakdown``: ``answer`` is the (weighted) answer score before the guard, ``penalty`` the sum
  of what the enumeration/length guard removed (as a negative number) and DAPO's overlong penalty,
  ``format`` the rest, so ``total == format + answer + penalty``. ``format`` may be negative when a
  format violation costs reward (Search-R1: a correct answer in a malformed response gets 0.8).

Enumeration / length-padding guard (``GuardConfig``): an answer is *flagged* when
 (a) it splits into more candidates than any gold answer does (separators: ``;`` ``|`` ``/`` newline,
     the words "or" and "and/or", and ", " unless the part after the comma has no letters, so
     "June 5, 1990" stays one candidate), plus ``max_extra_candidates``; or
 (b) it has more normalized tokens than ``max(ceil(max_length_ratio * L), L + length_slack)`` where L is
     the token count of the longest gold.
``action="scale"`` (default) multiplies the answer score by the smallest ``allowed / actual`` ratio of the
flagged rules, so listing k candidates earns at most 1/k: the expected score of naming one of them at random, never
more than committing to the right one. ``action="zero"`` sets a flagged answer's score to 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shared.metrics import MatchResult, best_match, get_metric, tokens
from shared.protocol import Template, extract_answer, extract_boxed, find_blocks, get_template

if TYPE_CHECKING:
    from shared.client import JudgeClient
    from shared.schemas import JudgeMethod

__all__ = [
    "REWARDS",
    "FormatCheck",
    "GuardConfig",
    "GuardResult",
    "OverlongConfig",
    "RewardBreakdown",
    "RewardConfig",
    "RewardFn",
    "answer_candidates",
    "answer_reward",
    "check_format",
    "check_trajectory_format",
    "compute_reward",
    "enumeration_guard",
    "get_reward_fn",
    "hybrid_reward",
    "ajudged_rewards",
    "judged_rewards",
    "overlong_penalty",
    "research_reward",
    "search_r1_reward",
]

Gold = Sequence[str] | str

# --------------------------------------------------------------------------- configs and results


@dataclass(frozen=True)
class GuardConfig:
    """Guard against answer enumeration and length padding (rules in the module docstring)."""

    enabled: bool = True
    max_length_ratio: float = 3.0  # answer tokens allowed per token of the longest gold
    length_slack: int = 2  # ... but always at least longest gold + this many tokens
    max_extra_candidates: int = 0  # separated candidates allowed beyond the gold's own count
    action: Literal["scale", "zero"] = "scale"  # scale by allowed/actual, or zero a flagged answer


@dataclass(frozen=True)
class OverlongConfig:
    """DAPO's soft overlong punishment over response length in tokens."""

    max_length: int  # hard limit of the response; at or beyond it the penalty is -penalty_factor
    cache_length: int  # soft window before max_length where the penalty grows linearly from 0
    penalty_factor: float = 1.0  # magnitude of the full penalty


@dataclass(frozen=True)
class RewardConfig:
    """Settings shared by every reward function; each uses the fields it needs."""

    template: str = "search_r1"  # protocol template name (tags, boxed answers)
    metric: str = "f1"  # metrics registry name: em | acc | cover_em | f1 | recall
    format_weight: float = 0.2  # hybrid: added when the format check passes
    answer_weight: float = 1.0  # hybrid: multiplies the answer score
    structure_format_score: float = 0.2  # search_r1: well-formed response without a correct answer
    final_format_score: float = 0.1  # search_r1: malformed response that still has an answer
    research_format_score: float = 0.1  # research: well-formed answer whose score is 0
    allow_unclosed_answer: bool = False  # count "<answer> Paris" cut off at the end of a generation
    allow_stray_text: bool = False  # format check: tolerate text outside tags
    guard: GuardConfig = field(default_factory=GuardConfig)
    overlong: OverlongConfig | None = None  # None: no length penalty


@dataclass(frozen=True)
class FormatCheck:
    """Outcome of the format state machine."""

    ok: bool
    reason: str
    n_search: int = 0  # complete search blocks
    n_answer: int = 0  # complete answer blocks


@dataclass(frozen=True)
class GuardResult:
    """Factor to apply to an answer score, and which guard rules fired."""

    factor: float
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RewardBreakdown:
    """Parts of one reward, for logging: ``total == format + answer + penalty``."""

    format: float
    answer: float
    penalty: float
    total: float
    format_ok: bool = False
    answer_text: str | None = None  # the extracted answer (None: no answer found)
    matched_gold: str | None = None  # gold that gave the best metric score (None on the judge path)
    flags: tuple[str, ...] = ()  # guard rules that fired: "enumeration", "length"
    reason: str = ""  # format check verdict


# --------------------------------------------------------------------------- format


def check_format(response: str, template: str | Template = "search_r1", allow_stray_text: bool = False) -> FormatCheck:
    """Search-R1's state machine: think -> (search -> observation -> think)* -> answer, then nothing.

    Tags must be well formed (no nesting, none left open), exactly one answer, every search followed by
    an observation and a new think. Text outside tags fails unless ``allow_stray_text``. For templates
    with boxed answers the answer block must contain a balanced ``\\boxed{...}``.
    """
    tpl = get_template(template)
    think, search, obs, answer = tpl.tags
    transitions = {
        ("start", f"<{think}>"): "in_think", ("observed", f"<{think}>"): "in_think",
        ("in_think", f"</{think}>"): "thought",
        ("thought", f"<{search}>"): "in_search", ("in_search", f"</{search}>"): "searched",
        ("searched", f"<{obs}>"): "in_obs", ("in_obs", f"</{obs}>"): "observed",
        ("thought", f"<{answer}>"): "in_answer", ("in_answer", f"</{answer}>"): "end",
    }
    inside = {"in_think", "in_search", "in_obs", "in_answer"}
    names = "|".join(re.escape(t) for t in tpl.tags)
    state = "start"
    for part in re.split(rf"(</?(?:{names})>)", response):
        if part in {f"<{t}>" for t in tpl.tags} | {f"</{t}>" for t in tpl.tags}:
            nxt = transitions.get((state, part))
            if nxt is None:
                return _fmt(False, f"unexpected {part} in state {state}", response, tpl)
            state = nxt
        elif part.strip() and state not in inside and not (allow_stray_text and state != "end"):
            return _fmt(False, f"text outside tags in state {state}", response, tpl)
    if state != "end":
        return _fmt(False, f"incomplete: ended in state {state}", response, tpl)
    if tpl.boxed_answer:
        blocks = find_blocks(response, answer)
        if not blocks or extract_boxed(blocks[-1].content) is None:
            return _fmt(False, "answer is missing \\boxed{}", response, tpl)
    return _fmt(True, "ok", response, tpl)


def _fmt(ok: bool, reason: str, response: str, tpl: Template) -> FormatCheck:
    return FormatCheck(ok, reason, len(find_blocks(response, tpl.search_tag)), len(find_blocks(response, tpl.answer_tag)))


def check_trajectory_format(segments: Sequence[tuple[bool, str]] | None, response: str,
                            template: str | Template = "search_r1", *, searches: int = 0, min_searches: int = 0,
                            allow_stray_text: bool = False) -> FormatCheck:
    """The format of a trajectory whose environment parts are known, not guessed from the text.

    ``segments``: the response as ``(written_by_environment, text)`` pieces in order (None: unknown, so
    every piece of ``response`` counts as the policy's). An observation tag in the policy's own text is a
    fabricated observation (no search returned it): the format fails, whatever the tags look like. Then
    :func:`check_format` over the whole text, and at least ``min_searches`` real ``searches`` (searches
    the environment ran, not search tags counted).
    """
    tpl = get_template(template)
    pieces = list(segments) if segments is not None else [(False, response)]
    text = "".join(t for _, t in pieces) if segments is not None else response
    observation = (f"<{tpl.observation_tag}>", f"</{tpl.observation_tag}>")
    if any(not env and any(tag in piece for tag in observation) for env, piece in pieces):
        return _fmt(False, f"<{tpl.observation_tag}> written by the policy: no search returned it", text, tpl)
    fmt = check_format(text, tpl, allow_stray_text)
    if fmt.ok and searches < min_searches:
        return _fmt(False, f"{searches} real search(es); the format asks for at least {min_searches}", text, tpl)
    return fmt


# --------------------------------------------------------------------------- guards


_SEPARATORS = re.compile(r"\s*(?:;|\||/|\n|\band/or\b|\bor\b)\s*", re.IGNORECASE)
_COMMA = re.compile(r",\s+")
_LETTER = re.compile(r"[^\W\d_]")


def answer_candidates(answer: str) -> list[str]:
    """Split an answer into separately listed candidates (separators in the module docstring)."""
    out: list[str] = []
    for piece in _SEPARATORS.split(answer):
        merged: list[str] = []
        for part in _COMMA.split(piece):
            if merged and not _LETTER.search(part) and _LETTER.search(merged[-1]):
                merged[-1] = f"{merged[-1]}, {part}"  # "June 5, 1990": a date, not two answers
            else:
                merged.append(part)
        out.extend(m.strip() for m in merged if tokens(m))
    return out


def enumeration_guard(answer: str, gold: Gold, config: GuardConfig | None = None) -> GuardResult:
    """How much of the answer score to keep, given the enumeration and length rules."""
    config = config or GuardConfig()
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not config.enabled or not golds:
        return GuardResult(1.0)
    factor, flags = 1.0, []
    allowed_candidates = max(len(answer_candidates(g)) for g in golds) + config.max_extra_candidates
    n_candidates = len(answer_candidates(answer))
    if n_candidates > max(allowed_candidates, 1):
        flags.append("enumeration")
        factor = min(factor, max(allowed_candidates, 1) / n_candidates)
    longest = max(max(len(tokens(g)) for g in golds), 1)
    allowed_tokens = max(math.ceil(config.max_length_ratio * longest), longest + config.length_slack)
    n_tokens = len(tokens(answer))
    if n_tokens > allowed_tokens:
        flags.append("length")
        factor = min(factor, allowed_tokens / n_tokens)
    if flags and config.action == "zero":
        factor = 0.0
    return GuardResult(factor, tuple(flags))


def overlong_penalty(length: int, max_length: int, cache_length: int, penalty_factor: float = 1.0) -> float:
    """DAPO soft overlong punishment: 0 up to ``max_length - cache_length``, then linear to
    ``-penalty_factor`` at ``max_length``, and ``-penalty_factor`` beyond it."""
    expected = max_length - cache_length
    if length <= expected:
        return 0.0
    if cache_length <= 0 or length >= max_length:
        return -penalty_factor
    return -penalty_factor * (length - expected) / cache_length


# --------------------------------------------------------------------------- answer part


def answer_reward(answer: str | None, gold: Gold, metric: str = "f1") -> MatchResult:
    """Best metric score of an extracted answer over the gold answers; a missing answer scores 0."""
    get_metric(metric)  # unknown names fail even when there is no answer to score
    if answer is None:
        return MatchResult(0.0, None)
    return best_match(answer, [gold] if isinstance(gold, str) else gold, metric)


@dataclass(frozen=True)
class _Scored:
    answer: str | None
    raw: float  # answer score before the guard
    guarded: float  # after the guard
    gold: str | None
    flags: tuple[str, ...]


def _score(response: str, gold: Gold, config: RewardConfig, answer_score: float | None) -> _Scored:
    answer = extract_answer(response, config.template, allow_unclosed=config.allow_unclosed_answer)
    match = answer_reward(answer, gold, config.metric)
    if answer is None:
        return _Scored(None, 0.0, 0.0, None, ())
    raw = match.score if answer_score is None else float(answer_score)
    matched = match.gold if answer_score is None else None
    guard = enumeration_guard(answer, gold, config.guard)
    return _Scored(answer, raw, raw * guard.factor, matched, guard.flags)


def _breakdown(format_part: float, weight: float, s: _Scored, fmt: FormatCheck, config: RewardConfig,
               response_length: int | None) -> RewardBreakdown:
    """Assemble parts so that format + answer + penalty == total (see module docstring).

    ``format_part`` is the reward minus the guarded, weighted answer score (before overlong penalty).
    """
    overlong = 0.0
    if config.overlong is not None and response_length is not None:
        o = config.overlong
        overlong = overlong_penalty(response_length, o.max_length, o.cache_length, o.penalty_factor)
    answer = weight * s.raw
    guard_loss = weight * (s.raw - s.guarded)
    penalty = overlong - guard_loss
    return RewardBreakdown(
        format=format_part, answer=answer, penalty=penalty, total=format_part + answer + penalty, format_ok=fmt.ok, answer_text=s.answer, matched_gold=s.gold,
        flags=s.flags, reason=fmt.reason,
    )


# --------------------------------------------------------------------------- reward functions


def hybrid_reward(response: str, gold: Gold, *, config: RewardConfig | None = None,
                  answer_score: float | None = None, response_length: int | None = None,
                  format_check: FormatCheck | None = None) -> RewardBreakdown:
    """MaskSearch's hybrid reward: ``format_weight * format_ok + answer_weight * answer_score``."""
    config = config or RewardConfig()
    fmt = format_check if format_check is not None else check_format(response, config.template, config.allow_stray_text)
    s = _score(response, gold, config, answer_score)
    return _breakdown(config.format_weight * fmt.ok, config.answer_weight, s, fmt, config, response_length)


def search_r1_reward(response: str, gold: Gold, *, config: RewardConfig | None = None,
                     answer_score: float | None = None, response_length: int | None = None,
                     format_check: FormatCheck | None = None) -> RewardBreakdown:
    """Search-R1's format-aware reward (``qa_em_format``), generalised to scores in [0, 1].

    Well-formed: ``max(score, structure_format_score)``; malformed with an answer:
    ``max(score - structure_format_score, final_format_score)``; malformed without an answer: 0.
    With EM and the defaults this is Search-R1's table: 1 / 0.2 / 0.8 / 0.1 / 0.
    """
    config = config or RewardConfig(metric="em")
    fmt = format_check if format_check is not None else check_format(response, config.template, config.allow_stray_text)
    s = _score(response, gold, config, answer_score)
    if fmt.ok:
        pre = max(s.guarded, config.structure_format_score)
    elif s.answer is not None:
        pre = max(s.guarded - config.structure_format_score, config.final_format_score)
    else:
        pre = 0.0
    return _breakdown(pre - s.guarded, 1.0, s, fmt, config, response_length)


def research_reward(response: str, gold: Gold, *, config: RewardConfig | None = None,
                    answer_score: float | None = None, response_length: int | None = None,
                    format_check: FormatCheck | None = None) -> RewardBreakdown:
    """ReSearch's reward: bad format -> 0; else the answer score if > 0, else ``research_format_score``.

    The answer of a malformed response is not scored (its answer part is 0), as in ReSearch.
    """
    config = config or RewardConfig(template="research", metric="f1")
    fmt = format_check if format_check is not None else check_format(response, config.template, config.allow_stray_text)
    if not fmt.ok:
        s = _Scored(extract_answer(response, config.template), 0.0, 0.0, None, ())
        return _breakdown(0.0, 1.0, s, fmt, config, response_length)
    s = _score(response, gold, config, answer_score)
    format_part = 0.0 if s.guarded > 0 else config.research_format_score
    return _breakdown(format_part, 1.0, s, fmt, config, response_length)


RewardFn = Callable[..., RewardBreakdown]

REWARDS: dict[str, RewardFn] = {
    "hybrid": hybrid_reward,
    "search_r1": search_r1_reward,
    "research": research_reward,
}
"""Registry of reward functions by name; all share the signature documented in the module docstring."""


def get_reward_fn(name: str) -> RewardFn:
    """The reward function registered as ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; valid: {', '.join(sorted(REWARDS))}") from None


def compute_reward(name: str, response: str, gold: Gold, config: RewardConfig | None = None,
                   answer_score: float | None = None, response_length: int | None = None,
                   format_check: FormatCheck | None = None) -> RewardBreakdown:
    """``get_reward_fn(name)(response, gold, ...)``: the entry point for config-driven trainers.

    ``format_check``: a verdict already reached with more than the text (:func:`check_trajectory_format`)."""
    return get_reward_fn(name)(response, gold, config=config, answer_score=answer_score,
                               response_length=response_length, format_check=format_check)


# --------------------------------------------------------------------------- judge path


def _judge_items(responses: Sequence[str], golds: Sequence[Gold], questions: Sequence[str] | None,
                 config: RewardConfig) -> tuple[list[int], list[dict[str, Any]]]:
    """Indices of the responses that have an answer, and the judge items for them."""
    if len(golds) != len(responses) or (questions is not None and len(questions) != len(responses)):
        raise ValueError("responses, golds (and questions) must have the same length")
    index: list[int] = []
    items: list[dict[str, Any]] = []
    for i, response in enumerate(responses):
        answer = extract_answer(response, config.template, allow_unclosed=config.allow_unclosed_answer)
        if answer is None:
            continue  # no answer scores 0 whatever a judge would say: it is not asked
        gold = golds[i]
        index.append(i)
        items.append({"question": questions[i] if questions is not None else "",
                      "gold": [gold] if isinstance(gold, str) else list(gold), "prediction": answer})
    return index, items


def _with_judge_scores(name: str, responses: Sequence[str], golds: Sequence[Gold], index: list[int],
                       scores: list[float], config: RewardConfig,
                       response_lengths: Sequence[int | None] | None) -> list[RewardBreakdown]:
    by_response = dict(zip(index, scores, strict=True))
    fn = get_reward_fn(name)
    return [fn(r, golds[i], config=config, answer_score=by_response.get(i),
               response_length=response_lengths[i] if response_lengths is not None else None)
            for i, r in enumerate(responses)]


def judged_rewards(name: str, responses: Sequence[str], golds: Sequence[Gold], judge: JudgeClient, *,
                   questions: Sequence[str] | None = None, method: JudgeMethod = "llm",
                   config: RewardConfig | None = None, response_lengths: Sequence[int | None] | None = None,
                   chunk_size: int = 256) -> list[RewardBreakdown]:
    """Rewards whose answer part is the judge service's score (``POST /judge``, ``chunk_size`` items per call).

    The one path for the trainer, the data pipelines and verl's reward function: answers are
    extracted here, judged in batches, and the same reward function applies format, guard and
    length penalty. Responses without an answer are not sent and score 0 for the answer part.
    """
    config = config or RewardConfig()
    index, items = _judge_items(responses, golds, questions, config)
    scores: list[float] = []
    for start in range(0, len(items), chunk_size):
        scores.extend(judge.judge(items[start:start + chunk_size], method=method).scores)
    return _with_judge_scores(name, responses, golds, index, scores, config, response_lengths)


async def ajudged_rewards(name: str, responses: Sequence[str], golds: Sequence[Gold], judge: JudgeClient, *,
                          questions: Sequence[str] | None = None, method: JudgeMethod = "llm",
                          config: RewardConfig | None = None,
                          response_lengths: Sequence[int | None] | None = None,
                          chunk_size: int = 256) -> list[RewardBreakdown]:
    """:func:`judged_rewards` for async callers (rollout workers); chunks are sent concurrently."""
    import asyncio

    config = config or RewardConfig()
    index, items = _judge_items(responses, golds, questions, config)
    chunks = [items[s:s + chunk_size] for s in range(0, len(items), chunk_size)]
    answers = await asyncio.gather(*(judge.ajudge(c, method=method) for c in chunks))
    scores = [s for a in answers for s in a.scores]
    return _with_judge_scores(name, responses, golds, index, scores, config, response_lengths)
