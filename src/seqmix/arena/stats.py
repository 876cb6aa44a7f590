"""Uncertainty for the arena's verdicts: spreads over repeats and the comparisons that decide claims.

Two kinds of repeats carry the uncertainty:

* **seeds** for quality (a model trained with seeds 0, 1, 2): the spread is the range min–max over seeds.
  "A below B beyond the uncertainty" means every seed of A is below every seed of B, i.e. the ranges do not
  overlap. Under the null hypothesis that A and B are the same, all 2n seeds are exchangeable and this
  happens with probability 1 / C(2n, n): 0.05 for 3 seeds each (one-sided exact permutation test), 0.17 for 2.
* **rounds** for speed (every entrant timed once per round, rounds interleaved across the whole section):
  the spread is the range min–max over rounds, and a figure is flagged when max/min − 1 > 30 %. Ratios of
  two entrants are taken round by round (the two timings of a round ran minutes apart at most).
  Absolute times also carry the machine's own drift, which no number of rounds inside one section sees:
  every round's process first measures the machine (fp32 matmul GFLOP/s and copy GB/s), and the interval
  a table states for an absolute figure widens its range over rounds by how far those references strayed
  from their medians during the section (``MachineDrift``). Ratios taken within a round need no widening.
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


@dataclass(frozen=True)
class MachineDrift:
    """How far the machine's speed strayed during a speed section, as factors on a time measured at the
    median machine speed: a time could have come out up to `slower` × (≥ 1) or `faster` × (≤ 1) as large."""

    faster: float = 1.0
    slower: float = 1.0

    @classmethod
    def of(cls, references: dict[str, list[float]]) -> "MachineDrift":
        """From {reference: [speed measured by each process]} (higher is faster), the widest over references."""
        faster = slower = 1.0
        for values in references.values():
            if values and min(values) > 0:
                mid = statistics.median(values)
                faster, slower = min(faster, mid / max(values)), max(slower, mid / min(values))
        return cls(faster, slower)

    def interval(self, s: Spread, rate: bool = False) -> tuple[float, float]:
        """The stated interval of a time (or, with `rate`, of a per-second rate): the range over rounds,
        widened by the drift."""
        if rate:
            return s.low / self.slower, s.high / self.faster
        return s.low * self.faster, s.high * self.slower

    def covers(self, s: Spread, value: float, rate: bool = False) -> bool:
        low, high = self.interval(s, rate)
        return low <= value <= high

    def fmt(self, s: Spread, digits: int = 3, rate: bool = False) -> str:
        if self.faster == self.slower == 1:
            return s.fmt(digits)
        low, high = self.interval(s, rate)
        return f"{_num(s.median, digits)} [{_num(low, digits)}–{_num(high, digits)}]"


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
