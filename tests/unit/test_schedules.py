"""Schedules as pure functions of (step, total_steps), checked against values worked by hand."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill import Schedule as PublicSchedule
from kdistill.schedules import SCHEDULE_KINDS, Schedule, as_schedule, constant

FAST = settings(max_examples=40, deadline=None)


def test_kinds_and_public_export():
    assert SCHEDULE_KINDS == ("constant", "linear", "cosine", "step")
    assert PublicSchedule is Schedule


# ---------------------------------------------------------------------------------- values


def test_constant():
    s = as_schedule(2.5)
    assert s == Schedule("constant", start=2.5) == constant(2.5)
    assert [s(i, 10) for i in (0, 5, 10, 11)] == [2.5, 2.5, 2.5, 2.5]
    assert isinstance(s(3, 10), float)
    assert as_schedule(3)(0, 1) == 3.0  # an int is a number too


def test_linear_by_hand():
    s = Schedule("linear", start=4.0, end=1.0)
    # 4 - 3 * step / 10
    assert [s(i, 10) for i in (0, 1, 5, 9, 10)] == pytest.approx([4.0, 3.7, 2.5, 1.3, 1.0])
    assert s(20, 10) == 1.0  # clamps past the end
    assert s(-3, 10) == 4.0  # and before the start
    up = Schedule("linear", start=0.0, end=1.0)
    assert up(1, 4) == 0.25 and up(3, 4) == 0.75


def test_cosine_by_hand():
    s = Schedule("cosine", start=4.0, end=1.0)
    # 1 + 3 * (1 + cos(pi * step / 100)) / 2
    assert s(0, 100) == pytest.approx(4.0)
    assert s(25, 100) == pytest.approx(1.0 + 1.5 * (1 + math.sqrt(0.5)))  # cos(pi/4) = 1/sqrt 2
    assert s(50, 100) == pytest.approx(2.5)
    assert s(75, 100) == pytest.approx(1.0 + 1.5 * (1 - math.sqrt(0.5)))
    assert s(100, 100) == pytest.approx(1.0)
    assert s(150, 100) == pytest.approx(1.0)
    # the half cosine is flat at both ends and steepest in the middle, unlike linear
    assert s(1, 100) > Schedule("linear", start=4.0, end=1.0)(1, 100)


def test_step_by_hand():
    s = as_schedule({"kind": "step", "start": 0.9, "milestones": [0.5, 0.8], "values": [0.5, 0.1]})
    assert s.milestones == (0.5, 0.8) and s.values == (0.5, 0.1)  # lists become tuples
    assert [s(i, 10) for i in (0, 4, 5, 7, 8, 10, 12)] == [0.9, 0.9, 0.5, 0.5, 0.1, 0.1, 0.1]


def test_warmup_ramps_then_runs_main_schedule():
    s = Schedule("linear", start=4.0, end=2.0, warmup_steps=4, warmup_start=1.0)
    # warm-up: 1 -> 4 over 4 steps; then 4 -> 2 over the remaining 10 steps
    assert [s(i, 14) for i in range(5)] == pytest.approx([1.0, 1.75, 2.5, 3.25, 4.0])
    assert s(9, 14) == pytest.approx(3.0) and s(14, 14) == pytest.approx(2.0)


def test_warmup_with_constant_cosine_and_step():
    const = Schedule("constant", start=2.0, warmup_steps=2)  # warmup_start defaults to 0
    assert [const(i, 10) for i in range(4)] == [0.0, 1.0, 2.0, 2.0]
    cos = Schedule("cosine", start=1.0, end=0.0, warmup_steps=10, warmup_start=0.5)
    assert cos(5, 110) == pytest.approx(0.75)
    assert cos(10, 110) == pytest.approx(1.0)
    assert cos(60, 110) == pytest.approx(0.5)  # half-way through the 100 main steps
    assert cos(110, 110) == pytest.approx(0.0)
    # step milestones are fractions of the steps *after* warm-up
    step = Schedule(
        "step", start=3.0, milestones=(0.5,), values=(1.0,), warmup_steps=4, warmup_start=3.0
    )
    assert [step(i, 14) for i in (0, 4, 8, 9, 14)] == [3.0, 3.0, 3.0, 1.0, 1.0]


@FAST
@given(
    start=st.floats(-10, 10),
    end=st.floats(-10, 10),
    total=st.integers(1, 500),
    kind=st.sampled_from(["linear", "cosine"]),
)
def test_linear_and_cosine_are_monotone_and_bounded(start, end, total, kind):
    s = Schedule(kind, start=start, end=end)
    values = [s(i, total) for i in range(total + 1)]
    assert values[0] == pytest.approx(start, abs=1e-9)
    assert values[-1] == pytest.approx(end, abs=1e-9)
    lo, hi = min(start, end), max(start, end)
    assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in values)
    sign = 1 if end >= start else -1
    assert all(sign * (b - a) >= -1e-9 for a, b in itertools.pairwise(values))


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"kind": "exp"}, "unknown schedule kind"),
        ({"kind": "Linear", "end": 1.0}, "unknown schedule kind"),
        ({"kind": "linear", "start": 1.0}, "needs `end`"),
        ({"kind": "cosine", "start": 1.0}, "needs `end`"),
        ({"kind": "linear", "end": math.inf}, "end must be finite"),
        ({"kind": "step", "start": 1.0}, "same, non-zero"),
        ({"kind": "step", "start": 1.0, "milestones": (0.5,), "values": ()}, "same, non-zero"),
        ({"kind": "step", "milestones": (0.2, 0.5), "values": (1.0,)}, "same, non-zero"),
        (
            {"kind": "step", "start": 1.0, "milestones": (0.6, 0.4), "values": (1.0, 2.0)},
            "strictly increasing",
        ),
        (
            {"kind": "step", "start": 1.0, "milestones": (0.4, 0.4), "values": (1.0, 2.0)},
            "strictly increasing",
        ),
        ({"kind": "step", "start": 1.0, "milestones": (1.5,), "values": (1.0,)}, r"in \(0, 1\)"),
        ({"kind": "step", "start": 1.0, "milestones": (0.0,), "values": (1.0,)}, r"in \(0, 1\)"),
        ({"kind": "step", "start": 1.0, "milestones": (1.0,), "values": (1.0,)}, r"in \(0, 1\)"),
        ({"start": 1.0, "warmup_steps": -1}, "warmup_steps"),
        ({"start": 1.0, "warmup_steps": 2.5}, "warmup_steps"),
        ({"start": math.nan}, "start must be finite"),
        ({"warmup_start": math.inf}, "warmup_start must be finite"),
        (
            {"kind": "step", "start": 1.0, "milestones": (0.5,), "values": (math.nan,)},
            "values must be finite",
        ),
    ],
)
def test_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Schedule(**kwargs)


@pytest.mark.parametrize("total", [0, -1, -100])
def test_total_steps_must_be_positive(total):
    for s in (as_schedule(1.0), Schedule("linear", start=1.0, end=0.0, warmup_steps=2)):
        with pytest.raises(ValueError, match="total_steps"):
            s(0, total)


def test_as_schedule_inputs():
    s = Schedule("cosine", start=2.0, end=1.0)
    assert as_schedule(s) is s
    assert as_schedule({"kind": "linear", "start": 1.0, "end": 3.0})(1, 2) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown schedule kind"):
        as_schedule({"kind": "nope"})
    with pytest.raises(ValueError, match=r"unknown schedule key.*'strat'.*valid keys: kind, start"):
        as_schedule({"kind": "linear", "strat": 1.0, "end": 2.0})
    with pytest.raises(ValueError, match="number or a mapping"):
        as_schedule("1.0")
    with pytest.raises(ValueError, match="number or a mapping"):
        as_schedule([1.0, 2.0])


def test_schedules_are_immutable_values():
    s = Schedule("linear", start=1.0, end=0.0)
    with pytest.raises(AttributeError):
        s.start = 2.0  # type: ignore[misc]
    assert s == Schedule("linear", start=1.0, end=0.0)
    assert s(3, 10) == s.value(3, 10)
