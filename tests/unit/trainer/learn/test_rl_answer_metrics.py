"""Issue 20 item 5, reward hacking measured: each RL step logs the answers' length and how many candidates
an answer lists, and the unmasked-observation ablation's loss covers the whole response."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.trainer.learn.rl import RLConfig
from services.trainer.learn.rl_metrics import (
    answer_candidate_count,
    answer_metrics,
    episode_metrics,
    response_mask,
)
from shared.schemas import EpisodeResult


def episode(answer: str | None, loss_mask: tuple[int, ...] = (1, 1, 0, 0, 1)) -> EpisodeResult:
    return EpisodeResult(job_id="rl", episode_id="e", answer=answer, response_ids=[7] * len(loss_mask),
                         loss_mask=list(loss_mask), logprobs=[-1.0] * len(loss_mask), finish_reason="answer")


@pytest.mark.parametrize(("answer", "count"), [
    ("Paris", 1),
    ("Paris, London; Rome", 3),
    ("Paris or London", 2),
    ("Paris / London\nRome", 3),
    ("cats and/or dogs", 2),
    ("June 5, 1990", 1),  # a date's comma does not split
    ("Simon and Garfunkel", 1),  # nor does a bare "and"
    ("Paris, ;", 1),  # pieces without a word are not candidates
    ("", 0),
    (None, 0),
])
def test_candidates_per_answer(answer: str | None, count: int) -> None:
    assert answer_candidate_count(answer) == count


def test_answer_metrics_cover_the_answered_episodes_only() -> None:
    results = [episode("the city of Paris"), episode("Paris, London, Rome"), episode(None)]
    m = answer_metrics(results)
    assert m["answer_tokens_mean"] == pytest.approx((3 + 3) / 2)  # "the" is dropped by normalization
    assert m["answer_candidates_mean"] == pytest.approx((1 + 3) / 2)
    assert m["multi_candidate_rate"] == pytest.approx(0.5)
    assert answer_metrics([episode(None)]) == {"answer_tokens_mean": 0.0, "answer_candidates_mean": 0.0,
                                               "multi_candidate_rate": 0.0}
    assert set(m) <= set(episode_metrics(results, lambda r: r.reward))  # logged with every step


def test_unmasked_observations_put_every_response_token_in_the_loss() -> None:
    r = episode("x")
    assert response_mask(r) == [1, 1, 0, 0, 1]
    assert response_mask(r, mask_observations=False) == [1, 1, 1, 1, 1]
    assert RLConfig().mask_observations is True
    assert RLConfig(mask_observations=False).mask_observations is False
    # the workers record no log-prob for observation tokens: the rollout denominator cannot cover them
    with pytest.raises(ValidationError, match="mask_observations"):
        RLConfig(mask_observations=False, old_logprobs="rollout")
    with pytest.raises(ValidationError, match="mask_observations"):
        RLConfig(mask_observations=False, max_staleness=1, keep_versions=3)
