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
from kdistill.losses.cross_vocab import SortedSignal
from kdistill.losses.divergences import reverse_kl
from kdistill.losses.objective import KDSums, kd_sums
from kdistill.losses.policy_gradient import sampled_reverse_kl
from kdistill.losses.sparse import student_buckets, teacher_buckets
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
    if vocab_size is None or isinstance(x, (SparseSignal, SortedSignal)):
        return x
    if isinstance(x, DenseSignal):
        if x.vocab_size == vocab_size:
            return x
        lp = torch.log_softmax(x.logprobs[..., :vocab_size], dim=-1)
        return DenseSignal(lp, x.made_at_temperature)
    return x[..., :vocab_size]


def check_teacher_finite(teacher, step: int) -> None:
    if isinstance(teacher, SortedSignal):
        teacher = teacher.probs
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
    soft_mask: torch.Tensor | None = None,
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
        soft_mask=soft_mask,
    )


def sampled_token_sums(
    student_logits: torch.Tensor,
    teacher,
    labels: torch.Tensor,
    *,
    vocab_size: int | None = None,
    ignore_index: int = -100,
) -> KDSums:
    """The sampled-token reverse-KL estimator (:mod:`kdistill.losses.policy_gradient`) on
    the student's own tokens ``labels`` ``(...)``; hard term 0.

    ``teacher``: dense logits ``(..., V)`` (exact token log-probs; baseline = the exact
    reverse KL) or a :class:`SparseSignal` (the token's log-prob where the teacher returned
    it, else the position has no target; baseline = the reverse KL over top-k + tail).
    """
    s = _slice_vocab(student_logits, vocab_size).float()
    valid = labels != ignore_index
    y = torch.where(valid, labels, torch.zeros_like(labels)).long().unsqueeze(-1)
    s_logp = torch.log_softmax(s, dim=-1)
    s_tok = s_logp.gather(-1, y).squeeze(-1)
    with torch.no_grad():
        if isinstance(teacher, SparseSignal):
            hit = teacher.ids == y
            lp = torch.where(hit, teacher.logprobs.float(), float("-inf"))
            t_tok = lp.max(dim=-1).values
            baseline = reverse_kl(teacher_buckets(teacher), student_buckets(s_logp, teacher.ids))
        else:
            t_logp = torch.log_softmax(_slice_vocab(teacher, vocab_size).float(), dim=-1)
            t_tok = t_logp.gather(-1, y).squeeze(-1)
            baseline = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    per = sampled_reverse_kl(s_tok, t_tok, torch.nan_to_num(baseline, posinf=0.0), valid)
    return KDSums(per.sum(), 0.0 * s.sum(), valid.sum())


def check_loss_finite(loss: torch.Tensor, step: int) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteError(
            f"loss became {value} at step {step} (teacher outputs were finite); lower "
            "training.learning_rate or check the data for empty/garbage records"
        )
