"""Standard errors of the experiment reports: binomial for 0/1 scores, a seeded bootstrap for F1, and
paired differences over the same questions."""

from __future__ import annotations

import math

import pytest

from shared.stats import binomial_se, bootstrap_se, estimate, paired_difference, sample_se


def test_binomial_se() -> None:
    assert binomial_se([1, 0, 1, 1]) == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert binomial_se([1, 1, 1]) == 0.0 and binomial_se([]) == 0.0
    e = estimate([1, 0, 0, 0], binary=True)
    assert (e.mean, e.n) == (0.25, 4) and e.se == pytest.approx(math.sqrt(0.25 * 0.75 / 4))


def test_bootstrap_is_deterministic_with_a_seed_and_near_the_analytic_se() -> None:
    values = [i / 49 for i in range(50)]  # uniform-ish scores in [0, 1]
    assert bootstrap_se(values, seed=3) == bootstrap_se(values, seed=3)
    assert bootstrap_se(values, seed=3) != bootstrap_se(values, seed=4)
    # the bootstrap SE of a mean approaches sd * sqrt((n - 1) / n) / sqrt(n)
    analytic = sample_se(values) * math.sqrt(49 / 50)
    assert bootstrap_se(values, seed=0, n_boot=4000) == pytest.approx(analytic, rel=0.06)
    assert bootstrap_se([0.5]) == 0.0 and bootstrap_se([0.3, 0.3, 0.3]) == pytest.approx(0.0, abs=1e-12)


def test_paired_difference_removes_the_questions_own_difficulty() -> None:
    base = [0, 0, 1, 1, 0, 1, 0, 1]
    arm = [1, 0, 1, 1, 1, 1, 0, 1]  # the same questions, two more right
    d = paired_difference(arm, base, binary=True)
    assert d.mean == pytest.approx(2 / 8) and d.n == 8
    assert d.se == pytest.approx(sample_se([1, 0, 0, 0, 1, 0, 0, 0]))
    assert d.se < math.hypot(binomial_se(arm), binomial_se(base))  # paired beats unpaired here
    f1 = paired_difference([0.5, 0.7, 0.2], [0.5, 0.5, 0.1], binary=False, seed=1)
    assert f1.mean == pytest.approx(0.1) and f1.se > 0
    assert paired_difference([0.5, 0.7, 0.2], [0.5, 0.5, 0.1], binary=False, seed=1) == f1
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1, 0], [1], binary=True)
