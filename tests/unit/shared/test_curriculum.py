"""p_noise against values computed by hand from ZeroSearch's formula."""

from __future__ import annotations

import pytest

from shared.noise_schedule import p_noise


@pytest.mark.parametrize(
    ("step", "total", "kwargs", "expected"),
    [
        (0, 100, {}, 0.0),  # start of training: start
        (100, 100, {}, 0.5),  # end of training: end
        (50, 100, {}, 1.0 / 6.0),  # (4^0.5 - 1)/(4 - 1) * 0.5 = (2 - 1)/3 * 0.5
        (25, 100, {}, (2**0.5 - 1) / 3 * 0.5),  # 4^0.25 = sqrt(2): 0.069036...
        (75, 100, {}, (8**0.5 - 1) / 3 * 0.5),  # 4^0.75 = 2*sqrt(2): 0.304738...
        (50, 100, {"start": 0.1, "end": 0.9}, 0.1 + 0.8 / 3),  # ramp 1/3 scaled to [0.1, 0.9]
        (1, 2, {"base": 9.0}, 0.5 * (3 - 1) / 8),  # 9^0.5 = 3: ramp 2/8 = 0.25 -> 0.125
        (5, 10, {"base": 1.0}, 0.25),  # base 1 is the straight line: 0.5 * 0.5
    ],
)
def test_hand_computed_values(step: int, total: int, kwargs: dict[str, float], expected: float) -> None:
    assert p_noise(step, total, **kwargs) == pytest.approx(expected, abs=1e-12)


def test_known_decimal_values() -> None:
    assert p_noise(25, 100) == pytest.approx(0.0690356, abs=1e-7)
    assert p_noise(75, 100) == pytest.approx(0.3047379, abs=1e-7)


def test_held_at_end_after_total_steps_and_at_start_before_zero() -> None:
    assert p_noise(150, 100) == pytest.approx(0.5)
    assert p_noise(10_000, 100, end=0.7) == pytest.approx(0.7)
    assert p_noise(-5, 100) == 0.0


def test_monotone_and_convex_for_base_above_one() -> None:
    values = [p_noise(s, 20) for s in range(21)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(d2 > d1 for d1, d2 in zip(steps, steps[1:], strict=False))  # noise rises faster late


def test_decreasing_schedule_is_allowed() -> None:
    assert p_noise(50, 100, start=0.5, end=0.0) == pytest.approx(0.5 - 1.0 / 6.0)


@pytest.mark.parametrize("kwargs", [{"total_steps": 0}, {"base": 0.0}, {"end": 1.5}, {"start": -0.1}])
def test_bad_arguments_raise(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"step": 1, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError):
        p_noise(**args)  # type: ignore[arg-type]
