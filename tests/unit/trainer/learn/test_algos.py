"""Our use of verl's GRPO advantages and PPO/DAPO policy loss, against values computed by hand.

Tiny batch: two groups of two episodes, response length 5. Episode 0 has an observation span
(tokens 1-2, an ``<information>`` block) that is masked out of the loss; episode 3 is padded.
"""

from __future__ import annotations

import math

import pytest
import torch

from services.trainer.learn.algos import (
    AlgoSpec,
    informative_groups,
    outcome_advantages,
    overlong,
    policy_loss,
)

MASK = torch.tensor([
    [1, 0, 0, 1, 1],  # policy, observation x2, policy x2
    [1, 1, 1, 1, 1],
    [1, 1, 1, 0, 0],  # right padding
    [1, 1, 0, 0, 0],
], dtype=torch.float32)
GROUPS = ["a", "a", "b", "b"]
REWARDS = [1.0, 0.0, 0.5, 0.5]


def test_grpo_advantages_are_group_normalized_on_policy_tokens() -> None:
    adv = outcome_advantages(REWARDS, MASK, GROUPS, AlgoSpec(name="grpo"))
    # group a: mean 0.5, sample std sqrt(0.5) -> (1 - 0.5) / 0.7071 = +0.7071, -0.7071
    a = 0.5 / math.sqrt(0.5)
    expected = torch.tensor([[a, 0, 0, a, a], [-a] * 5, [0.0] * 5, [0.0] * 5])
    assert torch.allclose(adv, expected, atol=1e-4)
    # observation tokens carry no advantage
    assert adv[0, 1] == 0 and adv[0, 2] == 0


def test_dr_grpo_does_not_divide_by_std() -> None:
    adv = outcome_advantages(REWARDS, MASK, GROUPS, AlgoSpec(name="grpo", norm_adv_by_std=False))
    assert torch.allclose(adv[0], torch.tensor([0.5, 0, 0, 0.5, 0.5]))
    assert torch.allclose(adv[1], torch.full((5,), -0.5))


def _hand_loss(old: torch.Tensor, new: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, lo: float,
               hi: float) -> tuple[float, float]:
    """PPO clipped loss with token-mean aggregation over masked tokens, written out per token."""
    total, clipped, count = 0.0, 0, 0
    for i in range(old.shape[0]):
        for j in range(old.shape[1]):
            if mask[i, j] == 0:
                continue
            r = math.exp(float(new[i, j] - old[i, j]))
            a = float(adv[i, j])
            l1, l2 = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
            loss = max(l1, l2)
            if a < 0:
                loss = min(loss, -a * 3.0)
            total += loss
            clipped += int(l2 > l1)
            count += 1
    return total / count, clipped / count


@pytest.mark.parametrize("name,hi", [("grpo", 0.2), ("dapo", 0.28)])
def test_policy_loss_matches_hand_computed_token_mean(name: str, hi: float) -> None:
    spec = AlgoSpec(name=name)
    assert spec.clip_ratio_high == hi
    adv = outcome_advantages(REWARDS, MASK, GROUPS, spec)
    old = torch.log(torch.full((4, 5), 0.5))
    # ratios: 1.25 on row 0 (clipped for grpo at 1.2, not for dapo at 1.28), 0.7 on row 1 (clipped at 0.8)
    ratio = torch.tensor([[1.25] * 5, [0.7] * 5, [1.0] * 5, [1.0] * 5])
    # garbage on the observation span: must not matter
    ratio[0, 1:3] = 50.0
    new = old + torch.log(ratio)
    loss, metrics = policy_loss(old, new, adv, MASK, spec)
    want, want_clip = _hand_loss(old, new, adv, MASK, 0.2, hi)
    assert float(loss) == pytest.approx(want, abs=1e-5)
    assert metrics["clipfrac"] == pytest.approx(want_clip, abs=1e-6)
    # grpo clips row 0 (3 policy tokens) and row 1 (5) out of 13 policy tokens; dapo only row 1
    assert metrics["clipfrac"] == pytest.approx((8 if name == "grpo" else 5) / 13, abs=1e-6)


def test_loss_gradient_skips_observation_tokens() -> None:
    spec = AlgoSpec(name="dapo")
    adv = outcome_advantages(REWARDS, MASK, GROUPS, spec)
    old = torch.log(torch.full((4, 5), 0.5))
    new = old.clone().requires_grad_(True)
    loss, _ = policy_loss(old, new, adv, MASK, spec)
    loss.backward()
    assert new.grad is not None
    assert torch.all(new.grad[MASK == 0] == 0)
    # at ratio 1 the gradient of -A * r / N is -A / N on each policy token (13 of them)
    assert float(new.grad[0, 0]) == pytest.approx(-float(adv[0, 0]) / 13, abs=1e-6)


def test_micro_batches_sum_to_the_full_batch_loss() -> None:
    spec = AlgoSpec(name="dapo")
    adv = outcome_advantages(REWARDS, MASK, GROUPS, spec)
    old = torch.log(torch.full((4, 5), 0.5))
    new = old + torch.log(torch.tensor([[1.1] * 5, [0.9] * 5, [1.0] * 5, [1.3] * 5]))
    full, _ = policy_loss(old, new, adv, MASK, spec)
    n_tok = int(MASK.sum())
    parts = [policy_loss(old[s], new[s], adv[s], MASK[s], spec, batch_num_tokens=n_tok)[0]
             for s in (slice(0, 2), slice(2, 4))]
    assert float(sum(parts)) == pytest.approx(float(full), abs=1e-6)


def test_low_var_kl_against_reference() -> None:
    spec = AlgoSpec(name="grpo", kl_coef=0.1)
    adv = torch.zeros(4, 5)
    old = torch.log(torch.full((4, 5), 0.5))
    ref = old + math.log(0.8)  # ref/policy ratio 0.8 everywhere
    _, metrics = policy_loss(old, old.clone(), adv, MASK, spec, ref_logprobs=ref)
    # k3 = exp(ref - logp) - (ref - logp) - 1 = 0.8 - ln 0.8 - 1
    assert metrics["kl"] == pytest.approx(0.8 - math.log(0.8) - 1, abs=1e-6)


def test_dynamic_sampling_and_overlong() -> None:
    assert informative_groups(REWARDS, GROUPS) == {"a"}
    spec = AlgoSpec(name="dapo", overlong={"max_length": 100, "cache_length": 20})
    assert overlong(80, spec) == 0.0
    assert overlong(90, spec) == pytest.approx(-0.5)
    assert overlong(120, spec) == -1.0
    assert overlong(120, AlgoSpec(name="grpo")) == 0.0
    assert AlgoSpec(name="dapo").dynamic_sampling is True
    assert AlgoSpec(name="grpo").dynamic_sampling is False
