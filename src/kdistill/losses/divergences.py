"""Per-position divergences between a teacher and a student categorical distribution.

PURE module. Every function takes fp32 log-probabilities ``teacher_logp`` and ``student_logp``
of shape ``(..., C)`` (C categories: the vocabulary, or kept ids plus a tail bucket) and
returns ``(...)``: one divergence per position. Categories where *both* distributions have
probability exactly zero (log-prob ``-inf``) contribute exactly 0 with a zero gradient.

Conventions (P_t = teacher, P_s = student):

* ``forward_kl``       KL(P_t || P_s)
* ``reverse_kl``       KL(P_s || P_t)
* ``jsd``              beta * KL(P_t || M) + (1 - beta) * KL(P_s || M), M = beta P_t + (1-beta) P_s;
                       beta = 0 is *defined* as forward KL and beta = 1 as reverse KL (the
                       generalized-JSD convention of Agarwal et al. 2024 / TRL GKD).
* ``skew_kl``          KL(P_t || alpha P_t + (1 - alpha) P_s)
* ``skew_reverse_kl``  KL(P_s || alpha P_s + (1 - alpha) P_t)
* ``tvd``              1/2 * sum |P_t - P_s|
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")


def _sanitize(p_logp: torch.Tensor, q_logp: torch.Tensor):
    """Replace categories where both sides are -inf by 0 so no NaN enters autograd.

    Returns ``(p, q, skip)``; ``skip`` is None on the fast path (no -inf anywhere).
    """
    if not (bool(torch.isneginf(p_logp).any()) or bool(torch.isneginf(q_logp).any())):
        return p_logp, q_logp, None
    both_zero = torch.isneginf(p_logp) & torch.isneginf(q_logp)
    if not bool(both_zero.any()):
        return p_logp, q_logp, None
    zero = torch.zeros((), dtype=p_logp.dtype, device=p_logp.device)
    return torch.where(both_zero, zero, p_logp), torch.where(both_zero, zero, q_logp), both_zero


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """sum_c p_c (log p_c - log q_c), with 0 log 0 = 0 and `skip` categories left out."""
    p = p_logp.exp()
    if skip is None and not bool(torch.isneginf(p_logp).any()):
        # fast path: every log p is finite, so p * (log p - log q) is never 0 * inf
        return (p * (p_logp - q_logp)).sum(-1)
    keep = p > 0
    if skip is not None:
        keep = keep & ~skip
    diff = torch.where(keep, p_logp - q_logp, torch.zeros((), dtype=p.dtype, device=p.device))
    return (p * diff).sum(-1)


def _mixture_logp(a_logp: torch.Tensor, b_logp: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w * exp(a) + (1 - w) * exp(b)) for 0 < w < 1, elementwise."""
    return torch.logaddexp(a_logp + math.log(weight_a), b_logp + math.log1p(-weight_a))


def forward_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    t, s, skip = _sanitize(teacher_logp, student_logp)
    return _kl(t, s, skip)


def reverse_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    t, s, skip = _sanitize(teacher_logp, student_logp)
    return _kl(s, t, skip)


def _skewed(p_logp, q_logp, alpha: float) -> torch.Tensor:
    """KL(P || alpha P + (1 - alpha) Q)."""
    p, q, skip = _sanitize(p_logp, q_logp)
    if alpha == 1.0:
        return _kl(p, p, skip)  # KL(P || P) = 0, with a zero (never NaN) gradient
    if alpha == 0.0:
        return _kl(p, q, skip)
    return _kl(p, _mixture_logp(p, q, alpha), skip)


def skew_kl(teacher_logp, student_logp, alpha: float = 0.1) -> torch.Tensor:
    return _skewed(teacher_logp, student_logp, alpha)


def skew_reverse_kl(teacher_logp, student_logp, alpha: float = 0.1) -> torch.Tensor:
    return _skewed(student_logp, teacher_logp, alpha)


def jsd(teacher_logp, student_logp, beta: float = 0.5) -> torch.Tensor:
    if beta == 0.0:
        return forward_kl(teacher_logp, student_logp)
    if beta == 1.0:
        return reverse_kl(teacher_logp, student_logp)
    t, s, skip = _sanitize(teacher_logp, student_logp)
    m = _mixture_logp(t, s, beta)
    return beta * _kl(t, m, skip) + (1.0 - beta) * _kl(s, m, skip)


def tvd(teacher_logp, student_logp) -> torch.Tensor:
    t, s, skip = _sanitize(teacher_logp, student_logp)
    diff = (t.exp() - s.exp()).abs()
    if skip is not None:
        diff = torch.where(skip, torch.zeros((), dtype=diff.dtype, device=diff.device), diff)
    return 0.5 * diff.sum(-1)


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}; e.g. {name}=0.5")


def get_divergence(
    name: str, *, beta: float = 0.5, skew_alpha: float = 0.1
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return ``f(teacher_logp, student_logp) -> (...)`` for a divergence name."""
    _check_unit("beta", beta)
    _check_unit("skew_alpha", skew_alpha)
    if name == "forward_kl":
        return forward_kl
    if name == "reverse_kl":
        return reverse_kl
    if name == "tvd":
        return tvd
    if name == "jsd":
        return lambda t, s: jsd(t, s, beta)
    if name == "skew_kl":
        return lambda t, s: skew_kl(t, s, skew_alpha)
    if name == "skew_reverse_kl":
        return lambda t, s: skew_reverse_kl(t, s, skew_alpha)
    raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}")
