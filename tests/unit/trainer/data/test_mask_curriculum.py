"""Curriculum buckets by mask count: staged 1 -> 4 sampler and the mixed baseline."""

from __future__ import annotations

import pytest

from services.trainer.data.mask_curriculum import (
    CurriculumSampler,
    MixedSampler,
    bucket_by_masks,
    get_sampler,
)

ITEMS = [{"id": f"{k}-{i}", "n_masks": k} for k in (3, 1, 4, 2) for i in range(5)]


def test_buckets_are_keyed_by_mask_count_in_order() -> None:
    buckets = bucket_by_masks(ITEMS)
    assert list(buckets) == [1, 2, 3, 4]
    assert all(len(v) == 5 and all(x["n_masks"] == k for x in v) for k, v in buckets.items())


def test_curriculum_presents_one_to_four_masks_in_stages() -> None:
    sampler = CurriculumSampler(ITEMS, stage_sizes={1: 3, 2: 7, 3: 2, 4: 4}, seed=1)
    drawn = [x["n_masks"] for x in sampler]
    assert drawn == [1] * 3 + [2] * 7 + [3] * 2 + [4] * 4
    assert len(sampler) == 16
    stage2 = [x["id"] for x in list(sampler)[3:10]]
    assert len(set(stage2[:5])) == 5  # a full pass over the bucket before any repeat
    assert [sampler.stage_at(step, 4) for step in range(4)] == [1, 2, 2, 4]
    assert [x["id"] for x in CurriculumSampler(ITEMS, {1: 3, 2: 7, 3: 2, 4: 4}, seed=1)] == \
        [x["id"] for x in sampler]  # seeded


def test_default_stages_are_one_pass_per_bucket() -> None:
    sampler = CurriculumSampler(ITEMS)
    assert [s.size for s in sampler.stages] == [5, 5, 5, 5]
    batches = list(sampler.batches(6))
    assert [len(b) for b in batches] == [6, 6, 6, 2]


def test_missing_bucket_is_an_error() -> None:
    with pytest.raises(ValueError, match="mask count"):
        CurriculumSampler([x for x in ITEMS if x["n_masks"] != 4], {1: 1, 4: 1})


def test_mixed_sampler_draws_all_mask_counts() -> None:
    sampler = MixedSampler(ITEMS, size=40, seed=0)
    drawn = [x["n_masks"] for x in sampler]
    assert len(drawn) == 40 and set(drawn) == {1, 2, 3, 4}
    assert drawn[:20] != sorted(drawn[:20])  # mixed, not staged
    assert isinstance(get_sampler("mixed", ITEMS), MixedSampler)
    with pytest.raises(ValueError, match="curriculum, mixed"):
        get_sampler("staged", ITEMS)
