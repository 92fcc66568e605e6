"""Which episodes an RL step trains on: issue 18 — episodes whose search failed during an outage were
trained on like any other; now they are left out of the loss by default, and counted."""

from __future__ import annotations

from services.trainer.learn.rl import RLConfig
from services.trainer.learn.rl_metrics import trainable
from shared.schemas import EpisodeResult


def episode(i: int, search_failures: int = 0, tokens: int = 3) -> EpisodeResult:
    return EpisodeResult(job_id="rl", episode_id=f"ep{i}", worker="w", finish_reason="answer", searches=1,
                         search_failures=search_failures, prompt_ids=[1, 2], response_ids=[5] * tokens,
                         loss_mask=[1] * tokens, logprobs=[-1.0] * tokens)


def test_failed_search_episodes_are_left_out_of_the_loss_by_default() -> None:
    results = [episode(0), episode(1, search_failures=1), episode(2), episode(3, search_failures=2)]
    assert RLConfig().exclude_failed_search is True
    kept, excluded = trainable(results, RLConfig().exclude_failed_search)
    assert [r.episode_id for r in kept] == ["ep0", "ep2"]
    assert excluded == 2


def test_they_can_be_kept_and_episodes_without_policy_tokens_never_train() -> None:
    results = [episode(0, search_failures=1), episode(1, tokens=0)]
    kept, excluded = trainable(results, exclude_failed_search=False)
    assert [r.episode_id for r in kept] == ["ep0"] and excluded == 0
    kept, excluded = trainable(results, exclude_failed_search=True)
    assert kept == [] and excluded == 1
