"""The RL curricula by step: RAMP mask stages 1 -> 4 and ZeroSearch's p_noise, and the
prompt sampler drawing RAMP prompts of the current stage."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from services.trainer.learn.prompts import Prompt, PromptSampler, PromptSource
from services.trainer.learn.rl_curriculum import Curriculum, CurriculumSpec


def test_mask_stages_split_the_run_evenly() -> None:
    c = Curriculum(CurriculumSpec(), total_steps=8)
    assert [c.at(s).max_masks for s in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [c.at(s).mask_stage for s in (0, 7)] == [0, 3]


def test_explicit_stage_steps() -> None:
    c = Curriculum(CurriculumSpec(mask_stages=[1, 2], stage_steps=[3, 1]), total_steps=10)
    assert [c.at(s).max_masks for s in range(6)] == [1, 1, 1, 2, 2, 2]
    with pytest.raises(ValidationError):
        CurriculumSpec(mask_stages=[1, 2], stage_steps=[3])


def test_p_noise_follows_zerosearch() -> None:
    c = Curriculum(CurriculumSpec(), total_steps=10)
    assert c.at(0).p_noise == 0.0
    assert c.at(10).p_noise == pytest.approx(0.5)
    # (4^0.5 - 1) / 3 * 0.5 = 1/6
    assert c.at(5).p_noise == pytest.approx(1 / 6)
    assert set(c.at(3).metrics()) == {"mask_stage", "max_masks", "p_noise"}


def test_search_backend_mix() -> None:
    rng = random.Random(0)
    mix = Curriculum(CurriculumSpec(search_backend="mix", real_fraction=0.25), 4)
    picks = [mix.backend(rng) for _ in range(2000)]
    assert 0.2 < picks.count("retriever") / len(picks) < 0.3
    assert Curriculum(CurriculumSpec(search_backend="simulator"), 4).backend(rng) == "simulator"


def test_sampler_draws_the_current_stage() -> None:
    prompts = [Prompt(id=f"{k}-{i}", question="q", ground_truth=["a"], masks=k) for k in (1, 2, 4) for i in range(3)]
    sampler = PromptSampler(prompts, seed=0)
    c = Curriculum(CurriculumSpec(), total_steps=4)
    assert {p.masks for p in sampler.take(5, c.at(0))} == {1}
    assert {p.masks for p in sampler.take(5, c.at(1))} == {2}
    assert {p.masks for p in sampler.take(5, c.at(2))} == {2}  # no 3-mask prompts: the closest easier stage
    assert {p.masks for p in sampler.take(5, c.at(3))} == {4}


def test_rl_prompts_never_come_from_the_eval_part() -> None:
    with pytest.raises(ValidationError, match="train"):
        PromptSource(part="eval")  # type: ignore[arg-type]


def test_mixed_order_draws_every_mask_count_at_every_stage() -> None:
    prompts = [Prompt(id=f"{k}-{i}", question="q", ground_truth=["a"], masks=k) for k in (1, 2, 4) for i in range(3)]
    sampler = PromptSampler(prompts, seed=0, mixed=True)
    c = Curriculum(CurriculumSpec(mask_order="mixed"), total_steps=4)
    assert {p.masks for p in sampler.take(9, c.at(0))} == {1, 2, 4}  # the first stage too: no curriculum
    with pytest.raises(ValidationError):
        CurriculumSpec(mask_order="random")  # type: ignore[arg-type]
