"""The knowledge-distillation objective (Hinton et al. 2015), as sums and counts.

PURE module. ``loss = soft_weight * T^2 * mean D(teacher_T || student_T)
                    + hard_weight * mean CE(student_1, labels)``

Internally every term is a *sum over valid positions* plus the *count* of valid positions
(:class:`KDSums`); :func:`combine` is the one place that divides. A trainer that accumulates
gradients or runs data-parallel adds sums and counts across micro-batches / ranks and divides
once by the global count, so the gradient equals that of one big batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdistill.losses.cross_vocab import SortedSignal, uld
from kdistill.losses.divergences import get_divergence
from kdistill.losses.sparse import student_buckets_from_logits, teacher_buckets
from kdistill.signals import DenseSignal, SparseSignal, TeacherSignal, fp32_or_wider


@dataclass
class KDSums:
    """Un-normalised KD terms over one batch.

    Attributes:
        soft_sum: scalar, sum over valid positions of D(teacher_T || student_T) (no T^2).
        hard_sum: scalar, sum over valid positions of CE(student at T=1, label); 0 if no labels.
        count: scalar int64, number of valid positions.
    """

    soft_sum: torch.Tensor
    hard_sum: torch.Tensor
    count: torch.Tensor

    def __add__(self, other: KDSums) -> KDSums:
        return KDSums(
            self.soft_sum + other.soft_sum,
            self.hard_sum + other.hard_sum,
            self.count + other.count,
        )


def check_temperature(kd_temperature: float) -> None:
    if not (isinstance(kd_temperature, (int, float)) and math.isfinite(kd_temperature)):
        raise ValueError(f"kd_temperature must be a finite number > 0, got {kd_temperature!r}")
    if kd_temperature <= 0:
        raise ValueError(
            f"kd_temperature must be > 0, got {kd_temperature}; use 1.0 for the plain softmax"
        )


def check_weights(soft_weight: float, hard_weight: float) -> None:
    for name, w in (("soft_weight", soft_weight), ("hard_weight", hard_weight)):
        if not (isinstance(w, (int, float)) and math.isfinite(w)) or w < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    if soft_weight == 0 and hard_weight == 0:
        raise ValueError(
            "soft_weight and hard_weight are both 0, so the loss is empty; "
            "set e.g. soft_weight=0.7, hard_weight=0.3"
        )


def _teacher_logp(teacher, kd_temperature: float) -> torch.Tensor | SparseSignal:
    if isinstance(teacher, DenseSignal):
        return teacher.at_temperature(kd_temperature)
    if isinstance(teacher, (SparseSignal, SortedSignal)):
        return teacher.at_temperature(kd_temperature)
    if isinstance(teacher, torch.Tensor):
        t = fp32_or_wider(teacher)
        return torch.log_softmax(t if kd_temperature == 1.0 else t / kd_temperature, dim=-1)
    raise ValueError(
        f"teacher must be logits (torch.Tensor), DenseSignal or SparseSignal, got {type(teacher)}"
    )


def _check_shapes(student_logits: torch.Tensor, teacher, labels) -> None:
    if isinstance(teacher, SortedSignal):  # another vocabulary: only the positions must agree
        t_lead, s_lead = tuple(teacher.probs.shape[:-1]), tuple(student_logits.shape[:-1])
        if t_lead != s_lead:
            raise ValueError(f"shape mismatch: student positions {s_lead} vs teacher {t_lead}")
        return
    if not isinstance(teacher, (torch.Tensor, DenseSignal, SparseSignal)):
        raise ValueError(
            f"teacher must be logits (torch.Tensor), DenseSignal or SparseSignal, got "
            f"{type(teacher).__name__}"
        )
    if isinstance(teacher, torch.Tensor):
        t_shape, t_vocab = tuple(teacher.shape[:-1]), teacher.shape[-1]
    elif isinstance(teacher, DenseSignal):
        t_shape, t_vocab = tuple(teacher.logprobs.shape[:-1]), teacher.vocab_size
    else:
        t_shape, t_vocab = tuple(teacher.ids.shape[:-1]), teacher.vocab_size
    s_shape, s_vocab = tuple(student_logits.shape[:-1]), student_logits.shape[-1]
    if s_vocab != t_vocab:
        raise ValueError(
            f"vocab mismatch: student logits have V={s_vocab}, teacher has V={t_vocab}; slice "
            "both to the real (shared) vocabulary before the loss"
        )
    if s_shape != t_shape:
        raise ValueError(
            f"shape mismatch: student positions {s_shape} vs teacher positions {t_shape}; "
            "student and teacher must see the same tokens"
        )
    if labels is not None and tuple(labels.shape) != s_shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal the logits' leading shape {s_shape} "
            "(shift labels for causal LMs before calling)"
        )


def kd_sums(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    labels: torch.Tensor | None = None,
    *,
    kd_temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    ignore_index: int = -100,
    compute_hard: bool = True,
    soft_mask: torch.Tensor | None = None,
) -> KDSums:
    """Sums of the soft and hard terms over valid positions.

    Args:
        student_logits: ``(..., V)`` raw student logits (any float dtype; math runs in fp32).
        teacher: raw teacher logits ``(..., V)``, a :class:`DenseSignal` or a
            :class:`SparseSignal` over the same positions, or a
            :class:`~kdistill.losses.cross_vocab.SortedSignal` (a teacher over another
            vocabulary): then the soft term is ULD and ``divergence`` is not used.
        labels: ``(...)`` int targets aligned with the logits, ``ignore_index`` = masked.
            ``None``: every position counts and the hard term is 0.
        compute_hard: skip the cross-entropy (e.g. when its weight is 0).
        soft_mask: ``(...)`` bool, the positions that have a soft target (None: all); the
            others add 0 to the soft sum but keep their hard term and their count.
    """
    check_temperature(kd_temperature)
    div = get_divergence(divergence, beta=beta, skew_alpha=skew_alpha)
    _check_shapes(student_logits, teacher, labels)

    s_logits = fp32_or_wider(student_logits)
    if labels is None:
        valid = torch.ones(s_logits.shape[:-1], dtype=torch.bool, device=s_logits.device)
    else:
        valid = labels != ignore_index
    count = valid.sum()

    t = _teacher_logp(teacher, kd_temperature)
    s_scaled = s_logits if kd_temperature == 1.0 else s_logits / kd_temperature
    if isinstance(t, SortedSignal):
        s_logp = torch.log_softmax(s_scaled, dim=-1)
        per_pos = uld(t, s_logp)
    elif isinstance(t, SparseSignal):
        t_buckets = teacher_buckets(t)
        # forward KL never looks at the student's tail when the teacher's tail is empty
        need_tail = divergence != "forward_kl" or not bool(torch.isneginf(t_buckets[..., -1]).all())
        lse = torch.logsumexp(s_scaled, dim=-1, keepdim=True)
        s_buckets = student_buckets_from_logits(s_scaled, t.ids, need_tail=need_tail, lse=lse)
        per_pos = div(t_buckets, s_buckets)
        s_logp = None
    else:
        s_logp = torch.log_softmax(s_scaled, dim=-1)
        per_pos = div(t, s_logp)
    zero = torch.zeros((), dtype=per_pos.dtype, device=per_pos.device)
    soft_valid = valid if soft_mask is None else valid & soft_mask.to(valid.device)
    soft_sum = torch.where(soft_valid, per_pos, zero).sum()

    if labels is not None and compute_hard and kd_temperature == 1.0:
        # T = 1: the student log-probs are already at hand (dense) or one gather away (sparse)
        # masked positions may hold any id (even >= V): gather at 0 there, then mask
        index = torch.where(valid, labels, torch.zeros_like(labels)).long().unsqueeze(-1)
        if s_logp is not None:
            picked = s_logp.gather(-1, index).squeeze(-1)
        else:
            picked = (s_scaled.gather(-1, index) - lse).squeeze(-1)
        hard_sum = -torch.where(valid, picked, zero).sum()
    elif labels is not None and compute_hard:
        hard_sum = F.cross_entropy(
            s_logits.reshape(-1, s_logits.shape[-1]),
            labels.reshape(-1).long(),
            ignore_index=ignore_index,
            reduction="sum",
        )
    else:
        hard_sum = 0.0 * s_logits.sum()
    return KDSums(soft_sum, hard_sum, count)


def combine(
    sums: KDSums,
    *,
    soft_weight: float,
    hard_weight: float,
    kd_temperature: float,
    scale_by_t2: bool = True,
    num_items: torch.Tensor | int | None = None,
    extra: tuple | list = (),
) -> torch.Tensor:
    """The one place that divides: weighted terms over ``num_items`` (default: own count).

    ``extra``: ``(weight, sum)`` pairs of further terms (sums over the same valid positions),
    added to the numerator before the division.

    ``num_items`` is the *global* number of valid positions (all micro-batches, all ranks)
    when training with gradient accumulation or data parallelism. A count of 0 gives 0.
    """
    check_weights(soft_weight, hard_weight)
    t2 = kd_temperature**2 if scale_by_t2 else 1.0
    numerator = soft_weight * t2 * sums.soft_sum + hard_weight * sums.hard_sum
    for weight, term_sum in extra:
        numerator = numerator + weight * term_sum
    return divide(numerator, sums.count if num_items is None else num_items)


def denominator(
    count: torch.Tensor | int | float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | float:
    """``max(count, 1)`` in the numerator's device and dtype: the one rule for what every
    term's sum is divided by (an empty batch divides by 1 and gives 0, not NaN)."""
    if isinstance(count, torch.Tensor):
        return count.to(device, dtype).clamp_min(1.0)
    return max(float(count), 1.0)


def divide(numerator: torch.Tensor, count: torch.Tensor | int | float) -> torch.Tensor:
    """``numerator / max(count, 1)``: the division every term's sum goes through."""
    return numerator / denominator(count, numerator.device, numerator.dtype)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TeacherSignal,
    labels: torch.Tensor | None = None,
    *,
    kd_temperature: float = 1.0,
    soft_weight: float = 0.5,
    hard_weight: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    scale_by_t2: bool = True,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean KD loss over valid positions (Hinton 2015).

    ``soft_weight * T^2 * mean D(teacher_T || student_T) + hard_weight * mean CE(student, y)``

    Args:
        student_logits: ``(..., V)``.
        teacher_logits: ``(..., V)`` raw logits, or a Dense/Sparse teacher signal.
        labels: ``(...)``, aligned with the logits (``logits[..., i, :]`` predicts
            ``labels[..., i]``; shift for causal LMs first). Positions equal to
            ``ignore_index`` are excluded from both terms. ``None``: all positions count and
            the hard term is skipped.
        divergence: one of forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, tvd.

    Returns:
        A scalar fp32 tensor. An all-masked batch returns 0 with a zero gradient.
    """
    check_weights(soft_weight, hard_weight)
    sums = kd_sums(
        student_logits,
        teacher_logits,
        labels,
        kd_temperature=kd_temperature,
        divergence=divergence,
        beta=beta,
        skew_alpha=skew_alpha,
        ignore_index=ignore_index,
        compute_hard=labels is not None and hard_weight != 0,
    )
    effective_hard = hard_weight if labels is not None else 0.0
    if labels is None and soft_weight == 0:
        raise ValueError("labels=None with soft_weight=0 leaves nothing to learn; pass labels")
    return combine(
        sums,
        soft_weight=soft_weight,
        hard_weight=effective_hard,
        kd_temperature=kd_temperature,
        scale_by_t2=scale_by_t2,
    )
