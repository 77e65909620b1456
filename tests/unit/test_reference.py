"""The float64 references themselves, against values worked by hand (so they can fail)."""

from __future__ import annotations

import math

import pytest

from tests.unit import reference as ref


def test_softmax_and_kl_by_hand():
    p = ref.softmax_row([math.log(1.0), math.log(3.0)], 1.0)
    assert p == pytest.approx([0.25, 0.75])
    lp, lq = ref.to_log([0.5, 0.5]), ref.to_log([0.25, 0.75])
    expect = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert ref.forward_kl(lp, lq) == pytest.approx(expect)
    assert ref.reverse_kl(lp, lq) == pytest.approx(
        0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    )
    assert ref.tvd(lp, lq) == pytest.approx(0.25)


def test_jsd_and_skew_by_hand():
    lp, lq = ref.to_log([1.0, 0.0]), ref.to_log([0.0, 1.0])
    # disjoint supports, beta 0.5: JSD = ln 2
    assert ref.jsd(lp, lq, 0.5) == pytest.approx(math.log(2))
    # skew KL with alpha: KL(P || a P + (1-a) Q) = -ln a on disjoint supports
    assert ref.skew_kl(lp, lq, 0.25) == pytest.approx(-math.log(0.25))


def test_cross_entropy_and_buckets_by_hand():
    assert ref.cross_entropy([0.0, 0.0, 0.0, 0.0], 2) == pytest.approx(math.log(4))
    assert ref.buckets([0.1, 0.2, 0.3, 0.4], [3, 1]) == pytest.approx([0.4, 0.2, 0.4])
