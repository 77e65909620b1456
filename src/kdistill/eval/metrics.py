"""Evaluation metrics as sums and counts (PURE: torch, math, stdlib only).

Every function takes aligned logits ``(N, V)`` and targets/mask ``(N,)`` and returns sums so
that batches can be added up and divided once at the end.
"""

from __future__ import annotations

import math

import torch


def _nll_of(logp: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> float:
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return float(-(picked * valid).sum())


def _kl_of(t_logp: torch.Tensor, t_p: torch.Tensor, s_logp: torch.Tensor, valid) -> float:
    return float(((t_p * (t_logp - s_logp)).sum(-1) * valid).sum())


def nll_sum(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100):
    """(sum of -log p(target), number of valid targets) at T = 1."""
    valid = targets != ignore_index
    lp = torch.log_softmax(logits.float(), dim=-1)
    return _nll_of(lp, targets, valid), int(valid.sum())


def kl_sum(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, valid: torch.Tensor
) -> float:
    """Sum over valid positions of KL(teacher || student) at T = 1."""
    t = torch.log_softmax(teacher_logits.float(), dim=-1)
    return _kl_of(t, t.exp(), torch.log_softmax(student_logits.float(), dim=-1), valid)


class TeacherSide:
    """The teacher's side of :func:`lm_sums`, computed once per batch for every model
    compared with it: log-probabilities, probabilities and top-1 at T = 1."""

    def __init__(self, teacher_logits: torch.Tensor):
        self.logp = torch.log_softmax(teacher_logits.float(), dim=-1)
        self.p = self.logp.exp()
        self.top1 = teacher_logits.argmax(-1)


def lm_sums(teacher: TeacherSide, logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """What :func:`nll_sum`, :func:`kl_sum` and :func:`agreement_count` give for one model's
    ``logits`` ``(N, V)`` (the same sums, bit for bit), with its log-softmax taken once and
    the teacher's side shared; plus its softmax confidence and correctness on the valid
    positions (for :func:`calibration_bins`)."""
    valid = targets != -100
    lp = torch.log_softmax(logits.float(), dim=-1)
    conf, pred = torch.softmax(logits[valid].float(), dim=-1).max(-1)
    return {
        "nll": _nll_of(lp, targets, valid),
        "count": int(valid.sum()),
        "kl": _kl_of(teacher.logp, teacher.p, lp, valid),
        "agree": int(((teacher.top1 == logits.argmax(-1)) & valid).sum()),
        "confidence": conf,
        "correct": pred == targets[valid],
    }


def agreement_count(teacher_logits, student_logits, valid: torch.Tensor) -> int:
    """Number of valid positions where the student's top-1 equals the teacher's top-1."""
    same = teacher_logits.argmax(-1) == student_logits.argmax(-1)
    return int((same & valid).sum())


def calibration_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15):
    """Per-bin (count, sum confidence, sum correct) lists for expected calibration error."""
    edges = torch.linspace(0, 1, n_bins + 1)
    idx = torch.bucketize(confidence.float().clamp(0, 1), edges[1:-1], right=True)
    counts = torch.bincount(idx, minlength=n_bins).tolist()
    conf = torch.zeros(n_bins).index_add_(0, idx, confidence.float()).tolist()
    corr = torch.zeros(n_bins).index_add_(0, idx, correct.float()).tolist()
    return counts, conf, corr


def expected_calibration_error(counts, conf_sums, correct_sums) -> float:
    """ECE = sum_b (n_b / N) * |acc_b - conf_b|."""
    total = sum(counts)
    if total == 0:
        return 0.0
    return sum(abs(a - c) for n, c, a in zip(counts, conf_sums, correct_sums) if n) / total


def perplexity(nll: float, count: int) -> float:
    return math.exp(nll / count) if count else float("nan")


def retention(student_value: float, teacher_value: float, *, lower_is_better: bool) -> float:
    """Share of the teacher's quality the student keeps (1.0 = as good as the teacher)."""
    if lower_is_better:
        return teacher_value / student_value if student_value else float("nan")
    return student_value / teacher_value if teacher_value else float("nan")


def tempered_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) in fp32 over the last dim."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dim (0 log 0 = 0)."""
    p = probs.float()
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon divergence in bits between two probability vectors (0..1)."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (torch.log2(a) - torch.log2(b)), torch.zeros_like(a)).sum()

    return float(0.5 * kl(p, m) + 0.5 * kl(q, m))


def normalised_sequence_probs(logprobs: list[float]) -> list[float]:
    """exp(lp_i) / sum_j exp(lp_j): how the teacher splits its belief among N sequences."""
    t = torch.tensor(logprobs, dtype=torch.float64)
    return torch.softmax(t, dim=0).tolist()


def distinct_n(rows: list[list[int]], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over ``rows`` of token ids
    (NaN when no row has n tokens). A sampler stuck in a loop scores near 0."""
    grams = [tuple(r[i : i + n]) for r in rows for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")
