"""What an RL step trains on and reports: the episodes the loss uses (:func:`trainable`) and the
per-step episode statistics (:func:`episode_metrics`), both pure functions of the step's results."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from shared.schemas import EpisodeResult


def trainable(results: Sequence[EpisodeResult], exclude_failed_search: bool) -> tuple[list[EpisodeResult], int]:
    """The episodes the loss is computed on (some policy tokens), and how many were left out because a
    search failed: such an episode's reward reflects the outage, not the policy."""
    kept = [r for r in results if r.response_ids and any(r.loss_mask)]
    if not exclude_failed_search:
        return kept, 0
    clean = [r for r in kept if r.search_failures == 0]
    return clean, len(kept) - len(clean)


def episode_metrics(results: Sequence[EpisodeResult], reward_of: Callable[[EpisodeResult], float]) -> dict[str, float]:
    """Per-step episode statistics: reward (mean and by part), accuracy, lengths, turns, searches."""
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
        **parts,
    }
    return out


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mu = sum(values) / len(values)
    return float((sum((v - mu) ** 2 for v in values) / (len(values) - 1)) ** 0.5)
