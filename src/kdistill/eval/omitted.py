"""Hinton et al. (2015)'s omitted-class test: a student trained on a transfer set without one
class, from the teacher's soft targets, can still recognise that class once its logit gets a
bias; the bias is chosen on validation images (which include the class), never on the test.
PURE: torch only."""

from __future__ import annotations

import torch


def best_bias(
    logits: torch.Tensor, labels: torch.Tensor, cls: int, grid: torch.Tensor | None = None
) -> float:
    """The bias added to class ``cls``'s logit that maximises accuracy on (``logits``,
    ``labels``) (ties: the smallest bias in absolute value)."""
    grid = torch.arange(-50, 201) / 10 if grid is None else grid  # -5 .. 20, 0 exactly
    best, best_acc = 0.0, -1.0
    for b in sorted(grid.tolist(), key=abs):
        shifted = logits.clone()
        shifted[:, cls] += b
        acc = float((shifted.argmax(-1) == labels).float().mean())
        if acc > best_acc + 1e-12:
            best, best_acc = b, acc
    return best


def class_figures(logits: torch.Tensor, labels: torch.Tensor, cls: int, bias: float) -> dict:
    """Accuracy on class ``cls`` and overall, with ``bias`` added to its logit."""
    shifted = logits.clone()
    shifted[:, cls] += bias
    correct = shifted.argmax(-1) == labels
    mine = labels == cls
    return {
        "class_accuracy": float(correct[mine].float().mean()) if bool(mine.any()) else None,
        "accuracy": float(correct.float().mean()),
    }


def omitted_class_report(
    val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], cls: int
) -> dict:
    """(logits, labels) on validation and test: figures before and after the bias chosen on
    validation."""
    bias = best_bias(*val, cls)
    before, after = class_figures(*test, cls, 0.0), class_figures(*test, cls, bias)
    return {
        "omitted_class": cls,
        "bias": bias,
        "test_class_accuracy": before["class_accuracy"],
        "test_class_accuracy_after_bias": after["class_accuracy"],
        "test_accuracy_after_bias": after["accuracy"],
    }
