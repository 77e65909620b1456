"""Sweep statistics against hand-worked values: the Student-t interval of a mean, the paired
per-seed difference, and the share of the teacher gap recovered."""

from __future__ import annotations

import math

import pytest

from kdistill.eval.intervals import gap_recovered, paired_difference, t_interval


def test_t_interval_of_one_to_five():
    # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764451: half width 2.7764451 * 1.5811388 / sqrt 5
    iv = t_interval([1, 2, 3, 4, 5])
    assert iv.mean == 3 and iv.n == 5 and iv.sd == pytest.approx(math.sqrt(2.5))
    assert iv.half_width == pytest.approx(1.963243, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    assert iv.excludes_zero()
    # a 90% interval is narrower: t(0.95, 4) = 2.1318468
    assert t_interval([1, 2, 3, 4, 5], 0.9).half_width == pytest.approx(1.507443, abs=1e-6)


def test_one_value_has_no_interval_and_none_is_an_error():
    iv = t_interval([0.7])
    assert iv.mean == 0.7 and iv.low is None and iv.high is None and not iv.excludes_zero()
    with pytest.raises(ValueError):
        t_interval([])


def test_paired_difference_uses_common_seeds_only():
    a = {0: 0.90, 1: 0.92, 2: 0.91, 7: 0.5}
    b = {0: 0.88, 1: 0.89, 2: 0.90, 3: 0.1}
    # differences 0.02, 0.03, 0.01: mean 0.02, sd 0.01, t(0.975, 2) = 4.3026527
    iv, seeds = paired_difference(a, b)
    assert seeds == [0, 1, 2]
    assert iv.mean == pytest.approx(0.02) and iv.sd == pytest.approx(0.01)
    assert iv.half_width == pytest.approx(0.0248414, abs=1e-6)
    assert not iv.excludes_zero()  # [-0.0048, 0.0448]
    # the unpaired intervals of a and b overlap far more than the paired one suggests
    assert t_interval([0.90, 0.92, 0.91]).low < t_interval([0.88, 0.89, 0.90]).high
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_gap_recovered():
    assert gap_recovered(0.89, 0.88, 0.92) == pytest.approx(0.25)
    assert gap_recovered(2.0, 3.0, 1.0) == pytest.approx(0.5)  # lower is better: same formula
    assert gap_recovered(0.9, 0.9, 0.9) is None
