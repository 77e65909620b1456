"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.eval import metrics


def test_nll_and_perplexity_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]))
    targets = torch.tensor([0, 1, -100])
    nll, n = metrics.nll_sum(logits, targets)
    assert n == 2
    assert nll == pytest.approx(-math.log(0.5) - math.log(0.8), rel=1e-6)
    assert metrics.perplexity(nll, n) == pytest.approx(math.exp(nll / 2))


def test_kl_and_agreement_by_hand():
    t = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    s = torch.log(torch.tensor([[0.25, 0.75], [0.6, 0.4]]))
    valid = torch.tensor([True, True])
    expect = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    expect += 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    assert metrics.kl_sum(t, s, valid) == pytest.approx(expect, rel=1e-5)
    # teacher top-1: [0 (tie -> first), 0]; student: [1, 0]
    assert metrics.agreement_count(t, s, valid) == 1
    assert metrics.agreement_count(t, s, torch.tensor([False, True])) == 1


def test_ece_by_hand():
    conf = torch.tensor([0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([True, False, True, True])
    counts, cs, ks = metrics.calibration_bins(conf, correct, n_bins=10)
    assert sum(counts) == 4 and counts[9] == 2 and counts[5] == 2
    # bin 0.9-1.0: acc 0.5, conf 0.95 ; bin 0.5-0.6: acc 1.0, conf 0.55
    expect = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55)
    assert metrics.expected_calibration_error(counts, cs, ks) == pytest.approx(expect)


def test_ece_perfect_calibration_is_zero():
    conf = torch.tensor([1.0, 1.0])
    assert metrics.expected_calibration_error(
        *metrics.calibration_bins(conf, torch.tensor([True, True]))
    ) == pytest.approx(0.0)


def test_retention():
    assert metrics.retention(20.0, 10.0, lower_is_better=True) == 0.5
    assert metrics.retention(0.8, 0.9, lower_is_better=False) == pytest.approx(0.8 / 0.9)


def test_tempered_probs_entropy_and_jsd_by_hand():
    logits = torch.tensor([2.0, 1.0, 0.0])
    for t in (0.2, 1.0, 5.0):
        p = metrics.tempered_probs(logits, t)
        z = [math.exp(x / t) for x in (2.0, 1.0, 0.0)]
        assert p.tolist() == pytest.approx([x / sum(z) for x in z], rel=1e-5)
    assert float(metrics.entropy(torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(math.log(2))
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert metrics.js_divergence(p, q) == pytest.approx(1.0)  # disjoint: 1 bit
    assert metrics.js_divergence(p, p) == pytest.approx(0.0)
    shares = metrics.normalised_sequence_probs([math.log(0.6), math.log(0.25), math.log(0.1)])
    assert shares == pytest.approx([0.6 / 0.95, 0.25 / 0.95, 0.1 / 0.95])
    with pytest.raises(ValueError, match="temperature"):
        metrics.tempered_probs(logits, 0.0)


def test_derived_fields_by_hand():
    from kdistill.eval.derived import derive

    lm = {
        "teacher": {"perplexity": 10.0, "params": 100, "forward_tokens_per_s": 50.0},
        "student": {
            "perplexity": 20.0,
            "params": 25,
            "forward_tokens_per_s": 150.0,
            "peak_memory_bytes": 30,
        },
        "baseline": {"perplexity": 25.0, "params": 25},
    }
    lm["teacher"]["peak_memory_bytes"] = 120
    d = derive(lm, lm=True)
    assert d["student_ppl_retention"] == 0.5 and d["baseline_ppl_retention"] == 0.4
    assert d["student_size_fraction"] == 0.25 and d["student_speedup"] == 3.0
    assert d["student_peak_memory_fraction"] == 0.25 and d["baseline_speedup"] is None
    assert d["student_vs_baseline_ppl_ratio"] == 0.8 and d["teacher_helped"] is True
    cls = {
        "teacher": {"accuracy": 0.9, "params": 10},
        "student": {"accuracy": 0.72, "params": 5},
        "baseline": {"accuracy": 0.75, "params": 5},
    }
    d = derive(cls, lm=False)
    assert d["student_acc_retention"] == pytest.approx(0.8)
    assert d["student_minus_baseline_accuracy"] == pytest.approx(-0.03)
    assert d["teacher_helped"] is False
    assert derive({"student": {"accuracy": 0.5}}, lm=False) == {}


@pytest.mark.parametrize("seed", [0, 1])
def test_lm_sums_equal_the_separate_sums_bit_for_bit(seed):
    g = torch.Generator().manual_seed(seed)
    t, s = torch.randn(40, 17, generator=g) * 3, torch.randn(40, 17, generator=g) * 3
    targets = torch.randint(0, 17, (40,), generator=g)
    targets[::5] = -100
    valid = targets != -100
    got = metrics.lm_sums(metrics.TeacherSide(t), s, targets)
    assert (got["nll"], got["count"]) == metrics.nll_sum(s, targets)
    assert got["kl"] == metrics.kl_sum(t, s, valid)
    assert got["agree"] == metrics.agreement_count(t, s, valid)
    probs = torch.softmax(s[valid], dim=-1)
    assert torch.equal(got["confidence"], probs.max(-1).values)
    assert torch.equal(got["correct"], probs.argmax(-1) == targets[valid])
    same = metrics.lm_sums(metrics.TeacherSide(t), t, targets)  # the teacher against itself
    assert abs(same["kl"]) < 1e-5 and same["agree"] == same["count"] == 32
