"""Uncertainty for the arena's verdicts: spreads over repeats and the comparisons that decide claims.

Two kinds of repeats carry the uncertainty:

* **seeds** for quality (a model trained with seeds 0, 1, 2): the spread is the range min–max over seeds.
  "A below B beyond the uncertainty" means every seed of A is below every seed of B, i.e. the ranges do not
  overlap. Under the null hypothesis that A and B are the same, all 2n seeds are exchangeable and this
  happens with probability 1 / C(2n, n): 0.05 for 3 seeds each (one-sided exact permutation test), 0.17 for 2.
* **rounds** for speed (every entrant timed once per round, rounds interleaved across the whole section):
  the spread is the range min–max over rounds, and a figure is flagged when max/min − 1 > 30 %. Ratios of
  two entrants are taken round by round (the two timings of a round ran minutes apart at most).
* Accuracies on a test set carry a 95 % Wilson interval over the test queries (the evaluation-window
  uncertainty; training seeds are not repeated for recall).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

NOISY = 0.30  # a speed figure whose max/min − 1 exceeds this is flagged


@dataclass(frozen=True)
class Spread:
    """One quantity over repeats: its values, their median (the centre every table shows) and range (min, max)."""

    values: tuple[float, ...]

    def __post_init__(self):
        if not self.values:
            raise ValueError("Spread needs at least one value")

    @classmethod
    def of(cls, values) -> "Spread":
        return cls(tuple(float(v) for v in values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def relative_range(self) -> float:
        """max/min − 1 (for positive quantities such as times)."""
        return self.high / self.low - 1 if self.low > 0 else math.inf

    @property
    def noisy(self) -> bool:
        return self.n > 1 and self.relative_range > NOISY

    def scaled(self, factor: float) -> "Spread":
        return Spread(tuple(v * factor for v in self.values))

    def fmt(self, digits: int = 3) -> str:
        """'3.142 [3.120–3.160]': the median and the range, or just the value when there is one."""
        if self.n == 1:
            return _num(self.median, digits)
        return f"{_num(self.median, digits)} [{_num(self.low, digits)}–{_num(self.high, digits)}]"


def _num(x: float, digits: int) -> str:
    if x != 0 and (abs(x) >= 10 ** 4 or abs(x) < 10 ** -digits):
        return f"{x:.{max(1, digits - 1)}g}" if abs(x) < 10 ** 4 else f"{x:,.0f}"
    return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.0f}" if abs(x) >= 1000 else f"{x:.1f}"


def order(a: Spread, b: Spread) -> int:
    """-1 if a lies entirely below b, +1 if entirely above, 0 if the ranges overlap (inside the uncertainty)."""
    if a.high < b.low:
        return -1
    if a.low > b.high:
        return 1
    return 0


def paired_ratio(a: Spread, b: Spread) -> Spread:
    """a / b repeat by repeat (timing rounds are paired by their index)."""
    if a.n != b.n:
        raise ValueError(f"paired_ratio: {a.n} and {b.n} repeats")
    return Spread(tuple(x / y for x, y in zip(a.values, b.values)))


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_spread(accuracy: float, n: int) -> Spread:
    """An accuracy as a Spread whose range is its Wilson interval (so `order` compares intervals)."""
    low, high = wilson(accuracy * n, n)
    return Spread((low, accuracy, high))
