"""What an RL step trains on and reports: the episodes the loss uses (:func:`trainable`), the tokens it
covers (:func:`response_mask`) and the per-step episode statistics (:func:`episode_metrics`), all pure
functions of the step's results.

Reward hacking, measured (MaskSearch saw token-recall rewards pad answers and list candidates): every
step also logs the extracted answers' length and how many candidates each names
(:func:`answer_candidate_count`), so a reward that pays for padding shows it in the curves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from shared.metrics import tokens
from shared.rewards import answer_candidates
from shared.schemas import EpisodeResult


def trainable(results: Sequence[EpisodeResult], exclude_failed_search: bool) -> tuple[list[EpisodeResult], int]:
    """The episodes the loss is computed on (some policy tokens), and how many were left out because a
    search failed: such an episode's reward reflects the outage, not the policy."""
    kept = [r for r in results if r.response_ids and any(r.loss_mask)]
    if not exclude_failed_search:
        return kept, 0
    clean = [r for r in kept if r.search_failures == 0]
    return clean, len(kept) - len(clean)


def response_mask(result: EpisodeResult, mask_observations: bool = True) -> list[int]:
    """Which response tokens the loss covers: the worker's loss mask (policy tokens), or every response
    token when observations are not masked."""
    return list(result.loss_mask) if mask_observations else [1] * len(result.response_ids)


def answer_candidate_count(answer: str | None) -> int:
    """How many separate candidate answers one answer names: the pieces of
    :func:`shared.rewards.answer_candidates`, the split the reward's enumeration guard uses (one definition).

    Separators: ``;`` ``|`` ``/`` a newline, the words "or" and "and/or", and ", " unless the part after the
    comma has no letters ("June 5, 1990" is one candidate). A bare "and" does not split: too many single
    answers contain one ("Simon and Garfunkel", "Harry Potter and the Goblet of Fire"). Pieces without a
    word are not counted; no answer (or an empty one) names 0 candidates.
    """
    return len(answer_candidates(answer)) if answer else 0


def answer_metrics(results: Sequence[EpisodeResult]) -> dict[str, float]:
    """Answer length and enumeration over the episodes that gave an answer (0 when none did):
    ``answer_tokens_mean`` (normalized tokens, :func:`shared.metrics.tokens`), ``answer_candidates_mean``
    (:func:`answer_candidate_count`) and ``multi_candidate_rate`` (share naming more than one)."""
    answers = [r.answer for r in results if r.answer]
    if not answers:
        return {"answer_tokens_mean": 0.0, "answer_candidates_mean": 0.0, "multi_candidate_rate": 0.0}
    counts = [answer_candidate_count(a) for a in answers]
    return {"answer_tokens_mean": sum(len(tokens(a)) for a in answers) / len(answers),
            "answer_candidates_mean": sum(counts) / len(answers),
            "multi_candidate_rate": sum(c > 1 for c in counts) / len(answers)}


def episode_metrics(results: Sequence[EpisodeResult], reward_of: Callable[[EpisodeResult], float]) -> dict[str, float]:
    """Per-step episode statistics: reward (mean and by part), accuracy, lengths, turns, searches, and the
    answers' length and candidates (:func:`answer_metrics`)."""
    n = max(len(results), 1)

    def mean(values: Sequence[float]) -> float:
        return sum(values) / n

    parts: dict[str, float] = defaultdict(float)
    for r in results:
        for key, value in r.reward_parts.items():
            parts[f"reward_{key}"] += float(value) / n
    out = {
        "reward_mean": mean([reward_of(r) for r in results]),
        "reward_std": _std([reward_of(r) for r in results]),
        "overlong_mean": mean([reward_of(r) - r.reward for r in results]),
        "accuracy": mean([float(r.scores.get("cover_em", 0.0)) for r in results]),
        "f1": mean([float(r.scores.get("f1", 0.0)) for r in results]),
        "response_length_mean": mean([float(len(r.response_ids)) for r in results]),
        "policy_tokens_mean": mean([float(sum(r.loss_mask)) for r in results]),
        "turns_mean": mean([float(r.turns) for r in results]),
        "searches_mean": mean([float(r.searches) for r in results]),
        "search_failures": float(sum(r.search_failures for r in results)),
        "answered": mean([float(r.finish_reason == "answer") for r in results]),
        "episodes": float(len(results)),
        **answer_metrics(results),
        **parts,
    }
    return out


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mu = sum(values) / len(values)
    return float((sum((v - mu) ** 2 for v in values) / (len(values) - 1)) ** 0.5)
