"""The held-out rule: record ``i`` is held out by a hash of ``(seed, i)``, the same every run
and the same whether a set is listed or streamed."""

from __future__ import annotations

import hashlib

from kdistill.errors import InputError


def is_held_out(index: int, fraction: float, seed: int = 0) -> bool:
    """Whether record ``index`` is held out: a hash of (seed, index), the same every run."""
    return int(hashlib.sha1(f"{seed}:{index}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise InputError(f"data.held_out_fraction must be in (0, 1), got {fraction}")
