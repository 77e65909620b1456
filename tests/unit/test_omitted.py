"""The omitted-class bias: chosen on validation to maximise accuracy, applied to the test."""

from __future__ import annotations

import torch

from kdistill.eval.omitted import best_bias, class_figures, omitted_class_report


def _logits(n: int, seed: int):
    """3 classes; class 2's images score 2 below the best other class on class 2's logit."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    logits = torch.randn(n, 3, generator=g)
    logits[torch.arange(n), labels] += 4.0
    mine = labels == 2
    logits[mine, 2] = logits[mine, :2].max(-1).values - 2.0  # never predicted as it is
    return logits, labels


def test_bias_recovers_the_omitted_class_and_is_chosen_on_validation():
    val, test = _logits(300, 0), _logits(300, 1)
    assert class_figures(*test, 2, 0.0)["class_accuracy"] == 0.0
    b = best_bias(*val, 2)
    assert 2.0 < b < 6.0  # above the 2-logit deficit, below what breaks the other classes
    rep = omitted_class_report(val, test, 2)
    assert rep["bias"] == b and rep["test_class_accuracy"] == 0.0
    assert rep["test_class_accuracy_after_bias"] > 0.9
    assert rep["test_accuracy_after_bias"] > class_figures(*test, 2, 0.0)["accuracy"]


def test_no_bias_when_nothing_is_missing():
    logits = torch.eye(3).repeat(10, 1) * 5
    labels = torch.arange(3).repeat(10)
    assert best_bias(logits, labels, 1) == 0.0  # ties: the smallest bias
