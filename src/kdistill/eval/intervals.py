"""Confidence intervals for sweeps: a Student-t interval on a mean over seeds, and on the
mean of *paired* per-seed differences (same seed, same data order, two settings).

Pairing removes what the seeds share (initialisation, data order) from the comparison: two
arms whose seed-to-seed spread is wide can still differ by a steady amount, which only the
paired interval shows. With one value an interval is undefined (``low``/``high`` are None).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from scipy.stats import t as student_t


@dataclass(frozen=True)
class Interval:
    """``mean`` with a two-sided ``confidence`` interval [``low``, ``high``] over ``n``
    values (sample standard deviation ``sd``, ``n - 1`` degrees of freedom)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    sd: float | None
    confidence: float

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else self.high - self.mean

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "half_width": self.half_width}


def t_interval(values: list[float], confidence: float = 0.95) -> Interval:
    """The Student-t interval of the mean of ``values``: mean +- t(1 - a/2, n - 1) sd/sqrt(n)."""
    if not values:
        raise ValueError("an interval needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(values)
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, None, None, 1, None, confidence)
    sd = statistics.stdev(values)
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, confidence)


def paired_difference(
    a: dict[int, float], b: dict[int, float], confidence: float = 0.95
) -> tuple[Interval, list[int]]:
    """The interval of mean(a[s] - b[s]) over the seeds ``s`` both have, and those seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed in common: a paired difference needs the same seeds")
    return t_interval([a[s] - b[s] for s in seeds], confidence), seeds


def gap_recovered(student: float, alone: float, teacher: float) -> float | None:
    """The share of the teacher - student-alone gap that distillation closes:
    (student - alone) / (teacher - alone); None when there is no gap."""
    gap = teacher - alone
    return None if gap == 0 else (student - alone) / gap
