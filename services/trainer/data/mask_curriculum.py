"""Curriculum by mask count (MaskSearch: 1 -> 4 masks).

- :func:`bucket_by_masks` splits a dataset into buckets keyed by mask count.
- :class:`CurriculumSampler` presents the buckets in stages (1 mask, then 2, ...); the number of
  samples per stage is configurable, and each stage draws without replacement from its bucket
  (reshuffled when exhausted).
- :class:`MixedSampler` draws from the whole dataset at random: the baseline to compare against.

Both yield batches (``batches(batch_size)``) and report the stage of a training step
(``stage_at(step, batch_size)``), so an RL loop can switch buckets per step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def n_masks_of(item: Any) -> int:
    return int(item["n_masks"] if isinstance(item, Mapping) else item.n_masks)


def bucket_by_masks(items: Sequence[T]) -> dict[int, list[T]]:
    """``{mask count: items}`` with keys in increasing order."""
    buckets: dict[int, list[T]] = {}
    for item in items:
        buckets.setdefault(n_masks_of(item), []).append(item)
    return dict(sorted(buckets.items()))


@dataclass(frozen=True)
class Stage:
    n_masks: int  # bucket this stage draws from
    size: int  # samples presented in this stage


def _cycle(items: Sequence[T], rng: random.Random) -> Iterator[T]:
    """Items in random order, reshuffled after each full pass (never empty-handed)."""
    if not items:
        return
    order = list(items)
    while True:
        rng.shuffle(order)
        yield from order


class CurriculumSampler(Generic[T]):
    """Stages of increasing mask count; ``stage_sizes`` maps mask count -> samples in that stage.

    Default stage sizes are the bucket sizes (one pass over each bucket, 1 then 2, 3, 4).
    """

    def __init__(self, items: Sequence[T], stage_sizes: Mapping[int, int] | None = None, seed: int = 0):
        self.buckets = bucket_by_masks(items)
        sizes = dict(stage_sizes) if stage_sizes is not None else {k: len(v) for k, v in self.buckets.items()}
        missing = [k for k, n in sizes.items() if n > 0 and not self.buckets.get(k)]
        if missing:
            raise ValueError(f"no samples with mask count(s) {missing}; have {sorted(self.buckets)}")
        self.stages = [Stage(k, n) for k, n in sorted(sizes.items()) if n > 0]
        self.seed = seed

    def __len__(self) -> int:
        return sum(s.size for s in self.stages)

    def __iter__(self) -> Iterator[T]:
        rng = random.Random(self.seed)
        for stage in self.stages:
            source = _cycle(self.buckets[stage.n_masks], rng)
            for _ in range(stage.size):
                yield next(source)

    def batches(self, batch_size: int) -> Iterator[list[T]]:
        yield from _batched(iter(self), batch_size)

    def stage_at(self, step: int, batch_size: int) -> int:
        """Mask count of the stage that the first sample of batch ``step`` (0-based) comes from."""
        index = step * batch_size
        for stage in self.stages:
            if index < stage.size:
                return stage.n_masks
            index -= stage.size
        return self.stages[-1].n_masks


class MixedSampler(Generic[T]):
    """All mask counts mixed: ``size`` samples drawn by reshuffled passes over the whole dataset."""

    def __init__(self, items: Sequence[T], size: int | None = None, seed: int = 0):
        if not items:
            raise ValueError("MixedSampler needs at least one sample")
        self.items = list(items)
        self.size = len(self.items) if size is None else size
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[T]:
        source = _cycle(self.items, random.Random(self.seed))
        for _ in range(self.size):
            yield next(source)

    def batches(self, batch_size: int) -> Iterator[list[T]]:
        yield from _batched(iter(self), batch_size)


def _batched(it: Iterator[T], size: int) -> Iterator[list[T]]:
    if size < 1:
        raise ValueError("batch_size must be >= 1")
    batch: list[T] = []
    for item in it:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


SAMPLERS = ("curriculum", "mixed")


def get_sampler(name: str, items: Sequence[T], stage_sizes: Mapping[int, int] | None = None,
                size: int | None = None, seed: int = 0) -> CurriculumSampler[T] | MixedSampler[T]:
    if name == "curriculum":
        return CurriculumSampler(items, stage_sizes, seed)
    if name == "mixed":
        return MixedSampler(items, size, seed)
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
