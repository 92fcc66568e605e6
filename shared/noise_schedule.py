"""Training curricula that move with the step: ZeroSearch's noise schedule.

ZeroSearch raises the probability that the simulated search engine returns a *noisy* document
set as training goes on, exponentially in the fraction of training done:

    p_noise(step) = start + (base^(step/T) - 1) / (base - 1) * (end - start)

with base 4, start 0 and end 0.5 by default, held at ``end`` once ``step >= T``. A document set
is noisy when ``random() < p_noise(step)``.
"""

from __future__ import annotations

import math

__all__ = ["p_noise"]


def p_noise(step: int, total_steps: int, start: float = 0.0, end: float = 0.5, base: float = 4.0) -> float:
    """The probability of a noisy document set at ``step`` of ``total_steps``.

    ``base`` shapes the curve: > 1 rises slowly then fast (exponential), and the limit
    ``base -> 1`` is the straight line from ``start`` to ``end``. Steps before 0 count as 0,
    steps after ``total_steps`` as ``total_steps``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if base <= 0:
        raise ValueError(f"base must be positive, got {base}")
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"start and end are probabilities in [0, 1], got start={start}, end={end}")
    frac = min(max(step, 0), total_steps) / total_steps
    if math.isclose(base, 1.0):
        ramp = frac  # the limit of (b^x - 1) / (b - 1) as b -> 1
    else:
        ramp = (base**frac - 1.0) / (base - 1.0)
    return start + ramp * (end - start)
