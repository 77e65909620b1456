"""Speed figures that survive a noisy machine. PURE module (stdlib only).

Every contestant is called once untimed (warm-up), then all are timed in turn, A B C A B C
..., for at least ``min_repeats`` rounds and until ``budget_s`` is spent (at most
``max_repeats``): a neighbour's burst of load lands on every contestant alike instead of on
whichever ran while it lasted. The raw per-round seconds are kept; figures are the median
and the relative spread ``(max - min) / median``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    calls: dict[str, Callable[[], object]],
    *,
    min_repeats: int = 3,
    max_repeats: int = 10,
    budget_s: float | None = None,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """``{name: [seconds of round 1, round 2, ...]}`` for each call, measured interleaved."""
    if not 1 <= min_repeats <= max_repeats:
        raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {min_repeats}, {max_repeats}")
    for call in calls.values():
        for _ in range(warmup):
            call()
    raw: dict[str, list[float]] = {name: [] for name in calls}
    started = clock()
    for round_ in range(max_repeats):
        for name, call in calls.items():
            t0 = clock()
            call()
            raw[name].append(clock() - t0)
        if round_ + 1 >= min_repeats and budget_s is not None and clock() - started >= budget_s:
            break
    return raw


def summary(seconds: list[float], work: float = 1.0) -> dict:
    """``work / seconds`` per round summarised: median rate, its relative spread, and the
    median seconds (``work``: tokens per call, 1 for a plain latency)."""
    if not seconds:
        return {"median_s": None, "rate": None, "spread": None, "repeats": 0}
    med = statistics.median(seconds)
    rates = [work / s for s in seconds if s > 0]
    return {
        "median_s": med,
        "rate": statistics.median(rates) if rates else None,
        "spread": (max(seconds) - min(seconds)) / med if med > 0 else None,
        "repeats": len(seconds),
    }
