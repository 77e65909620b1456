"""Slow, obviously-correct float64 references for the pure KD core.

Everything here is plain Python on ``float`` (IEEE float64) with explicit loops over
positions and vocabulary entries; torch is only used to turn tensors into lists. Nothing is
vectorised, fused, chunked or clever, so each function can be checked against its textbook
definition by reading it.

Conventions (P_t = teacher ``p``, P_s = student ``q``):

* forward KL        KL(P_t || P_s)
* reverse KL        KL(P_s || P_t)
* generalized JSD   beta KL(P_t || M) + (1 - beta) KL(P_s || M), M = beta P_t + (1 - beta) P_s;
                    beta = 0 is *defined* as forward KL and beta = 1 as reverse KL
* skew KL           KL(P_t || a P_t + (1 - a) P_s)
* skew reverse KL   KL(P_s || a P_s + (1 - a) P_t)
* TVD               1/2 sum |P_t - P_s|

(the divergences are evaluated from log-probabilities, so 0 log 0 = 0 and p log(p / 0) = inf)
* KD objective      soft_weight * T^2 * mean_valid D(teacher_T || student_T)
                    + hard_weight * mean_valid CE(student at T = 1, label)
"""

from __future__ import annotations

import math

import torch

DIVERGENCE_NAMES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")


# ---------------------------------------------------------------------------- distributions


def softmax_row(logits: list[float], t: float) -> list[float]:
    """softmax(logits / t) for one position; ``-inf`` logits get probability exactly 0."""
    scaled = [x / t for x in logits]
    m = max(scaled)
    e = [0.0 if x == -math.inf else math.exp(x - m) for x in scaled]
    z = 0.0
    for v in e:
        z += v
    return [v / z for v in e]


def log_softmax_row(logits: list[float], t: float) -> list[float]:
    """log softmax(logits / t) for one position, by the log-sum-exp definition."""
    scaled = [x / t for x in logits]
    m = max(scaled)
    z = 0.0
    for x in scaled:
        if x != -math.inf:
            z += math.exp(x - m)
    log_z = m + math.log(z)
    return [x - log_z for x in scaled]


def rows(x: torch.Tensor) -> list[list[float]]:
    """A ``(..., V)`` tensor as a list of float64 rows (one per position)."""
    return x.detach().double().reshape(-1, x.shape[-1]).tolist()


# ------------------------------------------------------------------------------ divergences
#
# Divergences work on log-probabilities (lists of floats, -inf meaning probability 0) so that
# distributions far sharper than float64 probabilities can hold (logits of 1e4) stay exact.


def to_log(p: list[float]) -> list[float]:
    return [math.log(x) if x > 0 else -math.inf for x in p]


def kl(lp: list[float], lq: list[float]) -> float:
    """KL(p || q) = sum_i p_i (log p_i - log q_i), with 0 log 0 = 0 and p_i log(p_i / 0) = inf."""
    total = 0.0
    for a, b in zip(lp, lq, strict=True):
        if a == -math.inf:
            continue
        if b == -math.inf:
            return math.inf
        total += math.exp(a) * (a - b)
    return total


def log_mix(la: list[float], lb: list[float], w: float) -> list[float]:
    """log(w * a + (1 - w) * b) elementwise, from log a and log b."""
    out = []
    for a, b in zip(la, lb, strict=True):
        terms = []
        if w > 0 and a != -math.inf:
            terms.append(math.log(w) + a)
        if w < 1 and b != -math.inf:
            terms.append(math.log1p(-w) + b)
        if not terms:
            out.append(-math.inf)
            continue
        m = max(terms)
        out.append(m + math.log(sum(math.exp(x - m) for x in terms)))
    return out


def forward_kl(lp: list[float], lq: list[float]) -> float:
    return kl(lp, lq)


def reverse_kl(lp: list[float], lq: list[float]) -> float:
    return kl(lq, lp)


def jsd(lp: list[float], lq: list[float], beta: float = 0.5) -> float:
    if beta == 0.0:
        return kl(lp, lq)
    if beta == 1.0:
        return kl(lq, lp)
    lm = log_mix(lp, lq, beta)
    return beta * kl(lp, lm) + (1.0 - beta) * kl(lq, lm)


def skew_kl(lp: list[float], lq: list[float], alpha: float = 0.1) -> float:
    return kl(lp, log_mix(lp, lq, alpha))


def skew_reverse_kl(lp: list[float], lq: list[float], alpha: float = 0.1) -> float:
    return kl(lq, log_mix(lq, lp, alpha))


def tvd(lp: list[float], lq: list[float]) -> float:
    total = 0.0
    for a, b in zip(lp, lq, strict=True):
        total += abs(math.exp(a) - math.exp(b))
    return 0.5 * total


def divergence_log(name: str, lp: list[float], lq: list[float], beta=0.5, alpha=0.1) -> float:
    """D(teacher || student) from teacher log-probs lp and student log-probs lq."""
    if name == "forward_kl":
        return forward_kl(lp, lq)
    if name == "reverse_kl":
        return reverse_kl(lp, lq)
    if name == "jsd":
        return jsd(lp, lq, beta)
    if name == "skew_kl":
        return skew_kl(lp, lq, alpha)
    if name == "skew_reverse_kl":
        return skew_reverse_kl(lp, lq, alpha)
    if name == "tvd":
        return tvd(lp, lq)
    raise KeyError(name)


def divergence(name: str, p: list[float], q: list[float], beta=0.5, alpha=0.1) -> float:
    """D(teacher p || student q) from probabilities."""
    return divergence_log(name, to_log(p), to_log(q), beta, alpha)


def divergence_per_position(
    name: str, teacher_logits, student_logits, t: float, beta=0.5, alpha=0.1
) -> list[float]:
    """D(softmax(teacher / t) || softmax(student / t)) for every position, flattened."""
    out = []
    for trow, srow in zip(rows(teacher_logits), rows(student_logits), strict=True):
        lp, lq = log_softmax_row(trow, t), log_softmax_row(srow, t)
        out.append(divergence_log(name, lp, lq, beta, alpha))
    return out


# ------------------------------------------------------------------------ sparse (K + 1 buckets)


def topk_ids(p: list[float], k: int) -> list[int]:
    """The ids of the k largest probabilities, largest first."""
    return sorted(range(len(p)), key=lambda j: -p[j])[:k]


def buckets(p: list[float], kept: list[int]) -> list[float]:
    """Collapse p onto the kept ids (in order) plus one tail bucket summing everything else.

    The tail is an explicit sum over the ids not kept (never ``1 - sum(kept)``).
    """
    kept_set = set(kept)
    tail = 0.0
    for j, pj in enumerate(p):
        if j not in kept_set:
            tail += pj
    return [p[j] for j in kept] + [tail]


def retemper_sparse(kept: list[float], tail: float, vocab: int, t0: float, t: float):
    """Re-temper a sparse distribution from t0 to t: p -> p^(t0/t), renormalised.

    The tail mass is modelled as spread uniformly over the ``vocab - len(kept)`` ids not kept.
    Returns ``(kept_probs, tail_prob)``.
    """
    a = t0 / t
    n_tail = vocab - len(kept)
    new_kept = [pk**a for pk in kept]
    new_tail = n_tail * (tail / n_tail) ** a if n_tail > 0 and tail > 0 else 0.0
    z = sum(new_kept) + new_tail
    return [v / z for v in new_kept], new_tail / z


# ---------------------------------------------------------------------------- KD objective


def cross_entropy(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label] (at temperature 1)."""
    return -log_softmax_row(logits, 1.0)[label]


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
    teacher_topk: int | None = None,
) -> float:
    """Mean over valid positions of soft_weight*T^2*D + hard_weight*CE, in float64 loops.

    ``teacher`` is raw logits ``(..., V)``. With ``teacher_topk = k`` the divergence is taken
    over the teacher's top-k ids at temperature ``t`` plus one tail bucket, on both sides.
    ``labels = None``: every position counts and the hard term is skipped. A batch with no
    valid position gives 0.
    """
    s_rows, t_rows = rows(student), rows(teacher)
    ys = [None] * len(s_rows) if labels is None else labels.reshape(-1).tolist()
    soft = 0.0
    hard = 0.0
    n = 0
    for srow, trow, y in zip(s_rows, t_rows, ys, strict=True):
        if y is not None and y == ignore_index:
            continue
        n += 1
        lp, lq = log_softmax_row(trow, t), log_softmax_row(srow, t)
        if teacher_topk is not None:
            p, q = softmax_row(trow, t), softmax_row(srow, t)
            kept = topk_ids(p, teacher_topk)
            lp, lq = to_log(buckets(p, kept)), to_log(buckets(q, kept))
        soft += divergence_log(div, lp, lq, beta, alpha)
        if y is not None:
            hard += cross_entropy(srow, int(y))
    if n == 0:
        return 0.0
    scale = t * t if scale_by_t2 else 1.0
    hw = hard_weight if labels is not None else 0.0
    return (soft_weight * scale * soft + hw * hard) / n


# ----------------------------------------------------------------------------------- inputs


def random_logits(shape, vocab, seed, scale=3.0, dtype=torch.float64):
    """Deterministic N(0, scale^2) logits of shape ``(*shape, vocab)``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, vocab, generator=g, dtype=torch.float64) * scale).to(dtype)


def random_labels(shape, vocab, seed, masked_fraction=0.3, ignore_index=-100):
    """Random labels in [0, vocab) with about ``masked_fraction`` set to ``ignore_index``."""
    g = torch.Generator().manual_seed(seed + 99)
    y = torch.randint(0, vocab, tuple(shape), generator=g)
    mask = torch.rand(tuple(shape), generator=g) < masked_fraction
    return torch.where(mask, torch.full_like(y, ignore_index), y)


# ------------------------------------------------------------------ cross-vocabulary targets


def mapped_buckets(p_t: list[float], t2s: list[int], kept: list[int]) -> list[float]:
    """Teacher probabilities over its own ids moved onto student ids: one bucket per id in
    ``kept`` (the student ids some teacher id maps to), then the tail (everything unmapped)."""
    out = [0.0] * (len(kept) + 1)
    for t_id, p in enumerate(p_t):
        s_id = t2s[t_id]
        if s_id in kept:
            out[kept.index(s_id)] += p
        else:
            out[-1] += p
    return out


def uld_ref(p_s: list[float], p_t: list[float]) -> float:
    """ULD: both probability vectors sorted decreasingly, the shorter padded with zeros,
    summed absolute difference."""
    a = sorted(p_s, reverse=True)
    b = sorted(p_t, reverse=True)
    n = max(len(a), len(b))
    a += [0.0] * (n - len(a))
    b += [0.0] * (n - len(b))
    return sum(abs(x - y) for x, y in zip(a, b, strict=True))
