"""Uncertainty of per-question scores: a mean with its standard error, and a paired difference.

    estimate([1, 0, 1, 1], binary=True)           -> Estimate(mean=0.75, se=0.2165, n=4)   binomial SE
    estimate([0.5, 0.0, 1.0], binary=False)       -> bootstrap SE (seeded: the same numbers, the same SE)
    paired_difference(arm, base, binary=True)     -> mean(arm - base) and its SE over the same questions

- 0/1 scores (EM, cover-EM, acc, answered): ``se = sqrt(p (1 - p) / n)``, the binomial standard error.
- Continuous scores (F1, recall): the standard deviation of ``n_boot`` bootstrap means (resampling the
  questions with replacement, ``random.Random(seed)``), so no normality is assumed for a score piled up at 0
  and 1.
- A difference between two runs on the same questions is paired: the per-question differences ``a_i - b_i``
  are what varies, so ``se = sd(d) / sqrt(n)`` (0/1 scores) or the bootstrap SE of their mean (continuous).
  Pairing removes the questions' own difficulty from the noise, which an unpaired ``sqrt(se_a^2 + se_b^2)``
  would keep.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_BOOTSTRAP = 2000  # resamples: the SE's own Monte-Carlo error is about se / sqrt(2 * 2000), ~1.6 %


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` questions and its standard error."""

    mean: float
    se: float
    n: int


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def binomial_se(values: Sequence[float]) -> float:
    """``sqrt(p (1 - p) / n)`` of 0/1 values (0 for fewer than one value)."""
    if not values:
        return 0.0
    p = mean(values)
    return math.sqrt(max(p * (1.0 - p), 0.0) / len(values))


def sample_se(values: Sequence[float]) -> float:
    """``sd / sqrt(n)`` with the n - 1 standard deviation (0 for fewer than two values)."""
    n = len(values)
    if n < 2:
        return 0.0
    mu = mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def bootstrap_se(values: Sequence[float], seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP) -> float:
    """The standard deviation of ``n_boot`` means of ``len(values)`` values drawn with replacement."""
    n = len(values)
    if n < 2:
        return 0.0
    rng = random.Random(seed)
    means = [sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot)]
    return sample_se(means) * math.sqrt(n_boot)  # sample_se divides by sqrt(n_boot): undo it for the sd


def estimate(values: Sequence[float], binary: bool, seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP) -> Estimate:
    """The mean of ``values`` and its SE: binomial when the scores are 0/1, bootstrap otherwise."""
    se = binomial_se(values) if binary else bootstrap_se(values, seed, n_boot)
    return Estimate(mean(values), se, len(values))


def paired_difference(a: Sequence[float], b: Sequence[float], binary: bool, seed: int = 0,
                      n_boot: int = DEFAULT_BOOTSTRAP) -> Estimate:
    """``mean(a - b)`` over the same questions (same order) and its paired SE."""
    if len(a) != len(b):
        raise ValueError(f"a paired difference needs the same questions: {len(a)} vs {len(b)} scores")
    d = [x - y for x, y in zip(a, b, strict=True)]
    se = sample_se(d) if binary else bootstrap_se(d, seed, n_boot)
    return Estimate(mean(d), se, len(d))
