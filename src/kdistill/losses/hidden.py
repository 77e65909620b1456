"""Intermediate-layer (hidden-state) distillation terms. PURE module.

DistilBERT (Sanh et al. 2019) adds a cosine loss between student and teacher hidden states;
TinyBERT (Jiao et al. 2020) an MSE through a learned linear projection when the widths
differ. Both as *sums over valid positions*, like every other term: one place divides.

Which tensors: ``hidden_states[k]`` of a transformers causal LM is the residual stream
*entering* layer ``k`` (``hidden_states[0]`` = embeddings), so the *output* of layer ``j`` is
``hidden_states[j + 1]`` -- except that transformers 5.x replaces ``hidden_states[-1]`` with
the output after the final norm. A layer map ``{student_layer: teacher_layer}`` pairs layer
outputs; the default map for a student cut from the teacher leaves the last layer out (the
logit terms cover it, and its tensor is the normed one on both sides).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HIDDEN_LOSSES = ("cosine", "mse")


def default_layer_map(kept: list[int], n_teacher_layers: int) -> dict[int, int]:
    """TinyBERT's uniform mapping for a student made of teacher layers ``kept`` (sorted).

    Student layer ``j`` (a copy of teacher layer ``kept[j]``) replaces the block of teacher
    layers ``kept[j] .. kept[j+1] - 1``; its output is paired with the teacher's output at
    the end of that block, layer ``kept[j+1] - 1``. The last student layer is left out.

    >>> default_layer_map([0, 3, 6, 9, 11], 12)
    {0: 2, 1: 5, 2: 8, 3: 10}
    """
    if not kept or sorted(set(kept)) != list(kept) or kept[-1] >= n_teacher_layers:
        raise ValueError(f"kept layers must be sorted, distinct and < {n_teacher_layers}: {kept}")
    return {j: kept[j + 1] - 1 for j in range(len(kept) - 1)}


def pair_loss_sum(
    student: torch.Tensor,
    teacher: torch.Tensor,
    valid: torch.Tensor,
    loss: str = "cosine",
) -> torch.Tensor:
    """Sum over valid positions of the per-position loss between two hidden states.

    Args:
        student: ``(..., H)`` (already projected to the teacher's width if needed).
        teacher: ``(..., H)``, no gradient needed.
        valid: ``(...)`` bool; False positions contribute exactly 0.
        loss: ``cosine`` (1 - cos) or ``mse`` (mean over H of the squared difference).
    Returns:
        A scalar fp32 (or wider) tensor.
    """
    s = student.float() if student.dtype in (torch.float16, torch.bfloat16) else student
    t = teacher.to(s.dtype)
    if loss == "cosine":
        per = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    elif loss == "mse":
        per = (s - t).pow(2).mean(-1)
    else:
        raise ValueError(f"hidden loss must be one of {', '.join(HIDDEN_LOSSES)}, got {loss!r}")
    return torch.where(valid, per, torch.zeros((), dtype=per.dtype, device=per.device)).sum()


class HiddenStateTerm(torch.nn.Module):
    """The ``hidden`` term: mean over mapped layer pairs of :func:`pair_loss_sum`, summed
    over valid positions. Owns one linear projection per pair when widths differ (learned
    with the student, saved in checkpoints, never part of the student's model folder).
    """

    def __init__(
        self,
        layer_map: dict[int, int],
        student_width: int,
        teacher_width: int,
        loss: str = "cosine",
    ):
        super().__init__()
        if not layer_map:
            raise ValueError("the hidden term needs at least one {student_layer: teacher_layer}")
        if loss not in HIDDEN_LOSSES:
            raise ValueError(f"hidden loss must be one of {', '.join(HIDDEN_LOSSES)}, got {loss!r}")
        self.layer_map = {int(s): int(t) for s, t in sorted(layer_map.items())}
        self.loss = loss
        self.proj = torch.nn.ModuleDict()
        if student_width != teacher_width:
            for s in self.layer_map:
                self.proj[str(s)] = torch.nn.Linear(student_width, teacher_width, bias=False)

    @property
    def teacher_states(self) -> tuple[int, ...]:
        """Indices into the teacher's ``hidden_states`` this term reads."""
        return tuple(sorted({t + 1 for t in self.layer_map.values()}))

    def forward(
        self,
        student_states: tuple[torch.Tensor, ...] | list[torch.Tensor],
        teacher_states: dict[int, torch.Tensor],
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """Sum over valid positions of the pair-averaged loss.

        Args:
            student_states: the student's ``hidden_states`` (``(B, L, H_s)`` each).
            teacher_states: ``{index into the teacher's hidden_states: (B, L, H_t)}``.
            valid: ``(B, L)`` bool, the positions whose targets count.
        """
        total = None
        for s, t in self.layer_map.items():
            h = student_states[s + 1]
            if str(s) in self.proj:
                h = self.proj[str(s)](h.to(self.proj[str(s)].weight.dtype))
            part = pair_loss_sum(h, teacher_states[t + 1], valid, self.loss)
            total = part if total is None else total + part
        return total / len(self.layer_map)
