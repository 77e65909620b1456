"""The one step function every training loop calls.

``KDKnobs`` holds the per-step values of the scheduled knobs; :func:`knobs_at` evaluates the
schedules; :func:`kd_step_sums` turns student logits (+ teacher logits or signal) and aligned
labels into :class:`~kdistill.losses.objective.KDSums`. Division happens once, in
:func:`kdistill.losses.objective.combine`, by the global valid-position count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdistill.errors import KdistillError
from kdistill.losses.objective import KDSums, kd_sums
from kdistill.schedules import Schedule, as_schedule
from kdistill.signals import DenseSignal, SparseSignal


class NonFiniteError(KdistillError, RuntimeError):
    """Training produced NaN/inf: names the cause (teacher outputs or the loss)."""


@dataclass(frozen=True)
class KDKnobs:
    kd_temperature: float
    soft_weight: float
    hard_weight: float
    beta: float


@dataclass(frozen=True)
class KDSchedules:
    kd_temperature: Schedule
    soft_weight: Schedule
    hard_weight: Schedule
    beta: Schedule

    @classmethod
    def build(cls, kd_temperature=1.0, soft_weight=0.5, hard_weight=0.5, beta=0.5):
        return cls(*(as_schedule(v) for v in (kd_temperature, soft_weight, hard_weight, beta)))

    def at(self, step: int, total_steps: int) -> KDKnobs:
        return KDKnobs(
            self.kd_temperature(step, total_steps),
            self.soft_weight(step, total_steps),
            self.hard_weight(step, total_steps),
            self.beta(step, total_steps),
        )


def _slice_vocab(x, vocab_size: int | None):
    if vocab_size is None or isinstance(x, SparseSignal):
        return x
    if isinstance(x, DenseSignal):
        if x.vocab_size == vocab_size:
            return x
        lp = torch.log_softmax(x.logprobs[..., :vocab_size], dim=-1)
        return DenseSignal(lp, x.made_at_temperature)
    return x[..., :vocab_size]


def check_teacher_finite(teacher, step: int) -> None:
    values = teacher.logprobs if isinstance(teacher, (DenseSignal, SparseSignal)) else teacher
    if isinstance(teacher, SparseSignal):
        values = torch.where(teacher.ids >= 0, teacher.logprobs, 0.0)
    if isinstance(teacher, torch.Tensor) and not bool(torch.isfinite(values).all()):
        raise NonFiniteError(
            f"teacher outputs are non-finite (NaN/inf logits) at step {step}; check the teacher "
            "checkpoint and its dtype (fp16 overflow?)"
        )
    if not isinstance(teacher, torch.Tensor) and bool(torch.isnan(values).any()):
        raise NonFiniteError(f"teacher signal has NaN log-probs at step {step}")


def kd_step_sums(
    student_logits: torch.Tensor,
    teacher,
    labels: torch.Tensor,
    knobs: KDKnobs,
    *,
    divergence: str = "forward_kl",
    skew_alpha: float = 0.1,
    vocab_size: int | None = None,
    ignore_index: int = -100,
) -> KDSums:
    """Sums for one micro-batch. ``teacher=None`` (baseline) gives the hard term only.

    Args:
        student_logits: ``(..., V_s)``; sliced to ``vocab_size`` (the real shared vocabulary).
        teacher: ``(..., V_t)`` logits, a Dense/Sparse signal, or None.
        labels: ``(...)`` aligned with the logits (already shifted for causal LMs).
    """
    s = _slice_vocab(student_logits, vocab_size)
    if teacher is None or knobs.soft_weight == 0:
        s32 = s.float()
        hard = F.cross_entropy(
            s32.reshape(-1, s32.shape[-1]),
            labels.reshape(-1),
            ignore_index=ignore_index,
            reduction="sum",
        )
        zero = 0.0 * s32.sum()
        return KDSums(zero, hard, (labels != ignore_index).sum())
    t = _slice_vocab(teacher, vocab_size)
    return kd_sums(
        s,
        t,
        labels,
        kd_temperature=knobs.kd_temperature,
        divergence=divergence,
        beta=knobs.beta,
        skew_alpha=skew_alpha,
        ignore_index=ignore_index,
        compute_hard=knobs.hard_weight != 0,
    )


def check_loss_finite(loss: torch.Tensor, step: int) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteError(
            f"loss became {value} at step {step} (teacher outputs were finite); lower "
            "training.learning_rate or check the data for empty/garbage records"
        )
