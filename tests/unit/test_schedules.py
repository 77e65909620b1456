"""Schedules as pure functions of (step, total_steps)."""

from __future__ import annotations

import math

import pytest

from kdistill.schedules import Schedule, as_schedule


def test_constant():
    s = as_schedule(2.5)
    assert [s(i, 10) for i in (0, 5, 10)] == [2.5, 2.5, 2.5]


def test_linear_by_hand():
    s = Schedule("linear", start=4.0, end=1.0)
    assert s(0, 10) == 4.0 and s(5, 10) == pytest.approx(2.5) and s(10, 10) == 1.0
    assert s(20, 10) == 1.0  # clamps past the end


def test_cosine_by_hand():
    s = Schedule("cosine", start=4.0, end=1.0)
    assert s(0, 100) == pytest.approx(4.0)
    assert s(50, 100) == pytest.approx(2.5)
    assert s(25, 100) == pytest.approx(1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s(100, 100) == pytest.approx(1.0)


def test_step_by_hand():
    s = as_schedule({"kind": "step", "start": 0.9, "milestones": [0.5, 0.8], "values": [0.5, 0.1]})
    assert [s(i, 10) for i in (0, 4, 5, 7, 8, 10)] == [0.9, 0.9, 0.5, 0.5, 0.1, 0.1]


def test_warmup_ramps_then_runs_main_schedule():
    s = Schedule("linear", start=4.0, end=2.0, warmup_steps=4, warmup_start=1.0)
    assert [s(i, 14) for i in range(5)] == pytest.approx([1.0, 1.75, 2.5, 3.25, 4.0])
    assert s(9, 14) == pytest.approx(3.0) and s(14, 14) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"kind": "exp"}, "unknown schedule kind"),
        ({"kind": "linear", "start": 1.0}, "needs `end`"),
        ({"kind": "step", "start": 1.0, "milestones": (0.5,), "values": ()}, "same, non-zero"),
        (
            {"kind": "step", "start": 1.0, "milestones": (0.6, 0.4), "values": (1.0, 2.0)},
            "strictly increasing",
        ),
        ({"kind": "step", "start": 1.0, "milestones": (1.5,), "values": (1.0,)}, "in \\(0, 1\\)"),
        ({"start": 1.0, "warmup_steps": -1}, "warmup_steps"),
        ({"start": float("nan")}, "finite"),
    ],
)
def test_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Schedule(**kwargs)


def test_total_steps_must_be_positive():
    with pytest.raises(ValueError, match="total_steps"):
        as_schedule(1.0)(0, 0)
