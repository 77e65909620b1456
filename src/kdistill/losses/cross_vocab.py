"""Targets for a teacher whose vocabulary is not the student's (cross-tokenizer KD).

PURE module. Two objectives, at positions already aligned (see ``kdistill.data.alignment``):

* **mapped-vocabulary KD** (:func:`mapped_signal`): each teacher id that has a student id
  with the same bytes sends its probability there (several teacher ids onto one student id
  are summed); the mass of every unmapped teacher id goes to the tail bucket, which stands
  for the student ids no teacher id maps to. The result is an ordinary
  :class:`~kdistill.signals.SparseSignal` over the student vocabulary, so every divergence
  works unchanged; with identical vocabularies it is the teacher's own distribution and the
  loss is exactly today's.
* **ULD** (Boizard et al. 2024; :func:`uld`): the L1 distance between the two next-token
  probability vectors each sorted in decreasing order, the shorter padded with zeros (the
  Wasserstein-1 distance between them as distributions over ranks). It needs no mapping and
  no shared strings; it does not reduce to KL.

Both are made at the training ``kd_temperature`` straight from the teacher's logits (a
mapped or sorted distribution cannot be re-tempered exactly afterwards).
:class:`CrossVocabTeacher` holds the teacher's final hidden states and head, so the chunked
loss projects ``(C, V_t)`` teacher logits a chunk at a time: the teacher's side then costs
``O(chunk * V_t)`` whatever the number of positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from kdistill.losses.heads import project_logits
from kdistill.signals import SparseSignal, fp32_or_wider


@dataclass(frozen=True)
class VocabMap:
    """Where each teacher id's mass goes in the student's vocabulary.

    Attributes:
        slots: ``(V_t,)`` int64 in ``[0, K]``: the column of each teacher id; ``K`` = tail.
        student_ids: ``(K,)`` int64, the distinct student ids of columns ``0 .. K-1``, sorted.
        student_vocab: ``V_s``.
    """

    slots: torch.Tensor
    student_ids: torch.Tensor
    student_vocab: int

    @classmethod
    def from_pairs(cls, teacher_to_student, student_vocab: int) -> VocabMap:
        """From ``(V_t,)`` student ids per teacher id (``-1`` or out of range: unmapped)."""
        t2s = torch.as_tensor(teacher_to_student, dtype=torch.long)
        mapped = (t2s >= 0) & (t2s < student_vocab)
        ids = torch.unique(t2s[mapped])
        slots = torch.full_like(t2s, ids.numel())
        slots[mapped] = torch.searchsorted(ids, t2s[mapped])
        return cls(slots, ids, int(student_vocab))

    @property
    def k(self) -> int:
        return self.student_ids.numel()

    @property
    def teacher_vocab(self) -> int:
        return self.slots.numel()

    def to(self, device) -> VocabMap:
        if self.slots.device == torch.device(device):
            return self
        return VocabMap(self.slots.to(device), self.student_ids.to(device), self.student_vocab)


def mapped_signal(teacher_logp: torch.Tensor, vmap: VocabMap, made_at: float) -> SparseSignal:
    """Teacher log-probs ``(..., V_t)`` (already at temperature ``made_at``) mapped onto the
    student vocabulary: a :class:`SparseSignal` ``(..., K)`` with tail.

    Masses are summed per student id with one index-add over probabilities shifted by each
    row's maximum (so the largest is 1 and nothing that matters underflows)."""
    lp = fp32_or_wider(teacher_logp)
    if lp.shape[-1] != vmap.teacher_vocab:
        raise ValueError(
            f"teacher log-probs have V={lp.shape[-1]}, the vocabulary map {vmap.teacher_vocab}"
        )
    lead = lp.shape[:-1]
    flat = lp.reshape(-1, lp.shape[-1])
    top = flat.max(dim=-1, keepdim=True).values.clamp_min(-1e30)
    mass = torch.zeros(flat.shape[0], vmap.k + 1, dtype=flat.dtype, device=flat.device)
    mass.index_add_(1, vmap.slots.to(flat.device), (flat - top).exp())
    out = (mass.log() + top).reshape(*lead, vmap.k + 1)
    ids = vmap.student_ids.to(flat.device).expand(*lead, vmap.k)
    return SparseSignal(ids, out[..., : vmap.k], out[..., vmap.k], vmap.student_vocab, made_at)


def mapped_share(signal: SparseSignal) -> torch.Tensor:
    """``(...)`` the share of the teacher's mass that landed on student ids (1 - tail)."""
    return -torch.expm1(fp32_or_wider(signal.log_tail))


@dataclass(frozen=True)
class SortedSignal:
    """A teacher distribution over its own vocabulary, kept for ULD: its probabilities
    sorted in decreasing order, ``probs`` ``(..., R)``, and ``rest`` ``(...)``, the mass
    beyond rank ``R``; made at ``made_at_temperature``."""

    probs: torch.Tensor
    rest: torch.Tensor
    made_at_temperature: float

    def at_temperature(self, temperature: float) -> SortedSignal:
        if temperature != self.made_at_temperature:
            raise ValueError(
                f"a sorted (ULD) target made at T={self.made_at_temperature} cannot be "
                f"re-tempered to {temperature}; make it at the training kd_temperature"
            )
        return self


def sorted_signal(teacher_logp: torch.Tensor, ranks: int, made_at: float) -> SortedSignal:
    """Keep the ``ranks`` largest probabilities of ``(..., V_t)`` log-probs, sorted, and the
    mass of the rest. With ``ranks = min(V_s, V_t)`` ULD against it is exact."""
    p = fp32_or_wider(teacher_logp).exp()
    r = min(ranks, p.shape[-1])
    top = torch.topk(p, r, dim=-1, sorted=True).values
    rest = (
        (p.sum(-1) - top.sum(-1)).clamp_min(0.0) if r < p.shape[-1] else p.new_zeros(p.shape[:-1])
    )
    return SortedSignal(top, rest, made_at)


def uld(teacher: SortedSignal, student_logp: torch.Tensor) -> torch.Tensor:
    """ULD per position ``(...)``: ``sum_r |p_s(r) - p_t(r)|`` over the ranks, both sorted
    decreasingly and the shorter padded with zeros.

    ``student_logp`` ``(..., V_s)``; the teacher keeps ``R = min(V_s, V_t)`` ranks plus the
    mass beyond them, which is exact: past rank ``R`` one side is all zeros."""
    p_s = fp32_or_wider(student_logp).exp()
    t = fp32_or_wider(teacher.probs)
    r = t.shape[-1]
    if r > p_s.shape[-1]:
        raise ValueError(
            f"the teacher keeps {r} ranks, more than the student's {p_s.shape[-1]} ids; "
            "keep min(V_s, V_t) ranks"
        )
    s_sorted = torch.sort(p_s, dim=-1, descending=True).values
    head = (s_sorted[..., :r] - t).abs().sum(-1)
    s_rest = s_sorted[..., r:].sum(-1)
    return head + s_rest + fp32_or_wider(teacher.rest)


Objective = Literal["mapped", "uld"]


def cross_targets(
    teacher_logits: torch.Tensor,
    *,
    objective: Objective,
    kd_temperature: float,
    vmap: VocabMap | None = None,
    student_vocab: int | None = None,
) -> SparseSignal | SortedSignal:
    """The target of ``objective`` from teacher logits ``(..., V_t)`` at ``kd_temperature``."""
    lp = torch.log_softmax(fp32_or_wider(teacher_logits) / kd_temperature, dim=-1)
    if objective == "mapped":
        if vmap is None:
            raise ValueError("the mapped objective needs a VocabMap")
        return mapped_signal(lp, vmap, float(kd_temperature))
    if objective == "uld":
        if student_vocab is None:
            raise ValueError("the uld objective needs student_vocab")
        return sorted_signal(lp, student_vocab, float(kd_temperature))
    raise ValueError(f"unknown cross-vocabulary objective {objective!r}; use mapped or uld")


@dataclass(frozen=True)
class CrossVocabTeacher:
    """A foreign-vocabulary teacher as final hidden states ``(N, H_t)`` (one row per student
    position; rows at unaligned positions are masked by the loss) and its head ``(V_t, H_t)``
    (+ bias ``(V_t,)``), turned into targets a chunk of rows at a time."""

    hidden: torch.Tensor
    head_weight: torch.Tensor
    objective: Objective
    student_vocab: int
    vmap: VocabMap | None = None
    head_bias: torch.Tensor | None = None
    logit_scale: float | None = None
    softcap: float | None = None

    @property
    def rows(self) -> int:
        return self.hidden.shape[0]

    def logits(self, sl: slice, dtype: torch.dtype) -> torch.Tensor:
        """Teacher logits ``(C, V_t)`` of rows ``sl``."""
        bias = None if self.head_bias is None else self.head_bias.to(dtype)
        return project_logits(
            self.hidden[sl].to(dtype),
            self.head_weight.to(dtype),
            bias,
            self.logit_scale,
            self.softcap,
        )

    def target(self, sl: slice, kd_temperature: float, dtype: torch.dtype = torch.float32):
        """The target of rows ``sl`` at ``kd_temperature``."""
        return cross_targets(
            self.logits(sl, dtype),
            objective=self.objective,
            kd_temperature=kd_temperature,
            vmap=self.vmap,
            student_vocab=self.student_vocab,
        )
