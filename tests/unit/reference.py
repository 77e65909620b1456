"""Slow, obviously-correct float64 references: explicit loops over positions and vocab."""

from __future__ import annotations

import math

import torch


def softmax_row(logits: list[float], t: float) -> list[float]:
    m = max(x / t for x in logits)
    e = [math.exp(x / t - m) for x in logits]
    z = sum(e)
    return [x / z for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def divergence(name: str, p: list[float], q: list[float], beta=0.5, alpha=0.1) -> float:
    """D(teacher p || student q) by the definitions in the issue."""
    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd":
        if beta == 0:
            return kl(p, q)
        if beta == 1:
            return kl(q, p)
        m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "skew_kl":
        return kl(p, [alpha * a + (1 - alpha) * b for a, b in zip(p, q)])
    if name == "skew_reverse_kl":
        return kl(q, [alpha * b + (1 - alpha) * a for a, b in zip(p, q)])
    if name == "tvd":
        return 0.5 * sum(abs(a - b) for a, b in zip(p, q))
    raise KeyError(name)


def kd_loss_ref(
    student,
    teacher,
    labels,
    *,
    t,
    soft_weight,
    hard_weight,
    div,
    beta=0.5,
    alpha=0.1,
    scale_by_t2=True,
    ignore_index=-100,
) -> float:
    """Mean over valid positions of soft_weight*T^2*D + hard_weight*CE, in float64 loops."""
    s = student.detach().double().reshape(-1, student.shape[-1]).tolist()
    te = teacher.detach().double().reshape(-1, teacher.shape[-1]).tolist()
    ys = [None] * len(s) if labels is None else labels.reshape(-1).tolist()
    soft = hard = 0.0
    n = 0
    for srow, trow, y in zip(s, te, ys):
        if y is not None and y == ignore_index:
            continue
        n += 1
        soft += divergence(div, softmax_row(trow, t), softmax_row(srow, t), beta, alpha)
        if y is not None:
            hard -= math.log(softmax_row(srow, 1.0)[y])
    if n == 0:
        return 0.0
    scale = t * t if scale_by_t2 else 1.0
    hw = hard_weight if labels is not None else 0.0
    return (soft_weight * scale * soft + hw * hard) / n


def random_logits(shape, vocab, seed, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, vocab, generator=g, dtype=torch.float64) * scale).to(dtype)
