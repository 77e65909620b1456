"""The sampled-token estimator of the reverse KL for on-policy distillation (PURE).

On the student's own sample ``y_t ~ p_s``, ``log p_s(y_t) - log p_t(y_t)`` is an unbiased
one-sample estimate of ``KL(p_s || p_t)`` at that position, and

    grad KL(p_s || p_t) = E_{y ~ p_s}[ (log p_s(y) - log p_t(y) - b) * grad log p_s(y) ]

for any ``b`` that does not depend on ``y`` (because ``E[grad log p_s(y)] = 0``). It needs
only the teacher's log-prob of the sampled token, so it works with a teacher that returns
top-k log-probs (a server). The baseline ``b_t`` is a control variate that lowers the
variance: the reverse KL of the student against the teacher's top-k + tail at that position,
computed from the same forward and detached.
"""

from __future__ import annotations

import torch


def sampled_reverse_kl(
    student_token_logp: torch.Tensor,
    teacher_token_logp: torch.Tensor,
    baseline: torch.Tensor | None,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Per position ``(...)``: the value is the one-sample estimate ``log p_s(y) - log
    p_t(y)`` (what the log shows); the gradient is the surrogate's,
    ``sg(log p_s(y) - log p_t(y) - b) * grad log p_s(y)``. Invalid positions give exactly 0
    (value and gradient), also where the teacher's log-prob is not finite there.

    Args:
        student_token_logp: ``(...)`` log p_s(y_t), with gradient.
        teacher_token_logp: ``(...)`` log p_t(y_t) (no gradient needed).
        baseline: ``(...)`` b_t or None (0); detached here.
        valid: ``(...)`` bool.
    """
    t = teacher_token_logp.detach().to(student_token_logp.dtype)
    ok = valid & torch.isfinite(t)
    t = torch.where(ok, t, torch.zeros_like(t))
    s = torch.where(ok, student_token_logp, torch.zeros_like(student_token_logp))
    estimate = (s - t).detach()
    b = 0.0 if baseline is None else torch.where(ok, baseline.detach().to(s.dtype), 0.0)
    per = estimate + (estimate - b) * (s - s.detach())
    return torch.where(ok, per, torch.zeros_like(per))
