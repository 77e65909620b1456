"""The held-out rule: record ``i`` is held out by a hash of ``(seed, i)``, the same every run
and the same whether a set is listed or streamed. Of the rest, a validation share (for
choosing settings without the held-out test records) is set aside by a second hash."""

from __future__ import annotations

import hashlib

from kdistill.errors import InputError


def is_held_out(index: int, fraction: float, seed: int = 0) -> bool:
    """Whether record ``index`` is held out: a hash of (seed, index), the same every run."""
    return int(hashlib.sha1(f"{seed}:{index}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise InputError(f"data.held_out_fraction must be in (0, 1), got {fraction}")


PARTS = ("test", "validation")


def is_validation(index: int, fraction: float, seed: int = 0) -> bool:
    """Whether record ``index`` (not held out) is in the validation share: another hash."""
    if fraction <= 0:
        return False
    digest = hashlib.sha1(f"validation:{seed}:{index}".encode()).hexdigest()[:8]
    return int(digest, 16) / 0xFFFFFFFF < fraction


def part_of(index: int, held_out: float, seed: int = 0, validation: float = 0.0) -> str:
    """``test`` (held out), ``validation`` or ``train`` for record ``index``."""
    if is_held_out(index, held_out, seed):
        return "test"
    return "validation" if is_validation(index, validation, seed) else "train"


def split_held_out(
    records: list, fraction: float, seed: int = 0, validation: float = 0.0, part: str = "test"
) -> tuple[list, list]:
    """(training records, ``part`` records): held out by a hash of (seed, index), the same
    records every run; ``validation`` > 0 sets that share of the rest aside (never trained
    on) as the ``validation`` part."""
    check_fraction(fraction)
    train, chosen = [], []
    for i, rec in enumerate(records):
        where = part_of(i, fraction, seed, validation)
        if where == "train":
            train.append(rec)
        elif where == part:
            chosen.append(rec)
    if not train or not chosen:
        raise InputError(
            f"the {part} split of {len(records)} records (held-out fraction {fraction}, "
            f"validation fraction {validation}) left one side empty; add data or change "
            "data.held_out_fraction / data.validation_fraction"
        )
    return train, chosen
