"""Bucketing for sparse teacher signals: K kept ids plus one "everything else" bucket.

PURE module. A sparse teacher keeps ids ``(..., K)`` with log-probs and a tail mass. Both the
teacher and the student distribution are collapsed onto the same K + 1 categories (the kept
ids, then the tail), and any divergence is computed on those. With all V ids kept, the tail is
empty on both sides and the result equals the dense divergence exactly.
"""

from __future__ import annotations

import torch

from kdistill.signals import SparseSignal, fp32_or_wider


def kept_mask(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Boolean ``(..., V)``: True where the id is among the kept ``ids (..., K)``."""
    index = torch.where(ids >= 0, ids, torch.full_like(ids, vocab_size))
    mask = torch.zeros((*ids.shape[:-1], vocab_size + 1), dtype=torch.bool, device=ids.device)
    mask.scatter_(-1, index, True)
    return mask[..., :vocab_size]


def teacher_buckets(signal: SparseSignal) -> torch.Tensor:
    """``(..., K + 1)`` teacher log-probs: kept ids (unused slots -inf), then the tail.

    Where the kept ids cover the whole vocabulary, no tail id exists and the tail is forced
    to ``-inf`` (a stored tail of rounding noise must not meet an empty student tail).
    """
    valid = signal.ids >= 0
    kept = torch.where(valid, fp32_or_wider(signal.logprobs), float("-inf"))
    covers_all = valid.sum(-1) >= signal.vocab_size
    tail = torch.where(covers_all, float("-inf"), fp32_or_wider(signal.log_tail))
    return torch.cat([kept, tail.unsqueeze(-1)], dim=-1)


def student_buckets_from_logits(
    scaled_logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    need_tail: bool = True,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Like :func:`student_buckets` but from tempered logits ``(..., V)``, without ever
    materialising the full ``(..., V)`` log-softmax: kept log-probs are
    ``z_i - logsumexp(z)``. With ``need_tail=False`` (forward KL against a tail-less teacher,
    e.g. sampled targets) the tail is a constant 0 whose contribution the divergence masks
    out, saving two passes over the vocabulary.
    """
    if lse is None:
        lse = torch.logsumexp(scaled_logits, dim=-1, keepdim=True)
    valid = ids >= 0
    gathered = scaled_logits.gather(-1, ids.clamp_min(0)) - lse
    kept = torch.where(valid, gathered, float("-inf"))
    if not need_tail:
        return torch.cat([kept, torch.zeros_like(lse)], dim=-1)
    return student_buckets(scaled_logits - lse, ids)


def student_buckets(student_logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Collapse student log-probs ``(..., V)`` onto the kept ``ids (..., K)`` plus a tail.

    Returns ``(..., K + 1)``. The tail is ``logsumexp`` over the ids not kept, computed
    directly (not as ``1 - sum``) so it keeps full precision; when nothing is left it is
    ``-inf`` with a zero (never NaN) gradient.
    """
    vocab = student_logp.shape[-1]
    valid = ids >= 0
    gathered = student_logp.gather(-1, ids.clamp_min(0))
    kept = torch.where(valid, gathered, float("-inf"))
    in_kept = kept_mask(ids, vocab)
    has_tail = (~in_kept).any(-1, keepdim=True)
    # rows without a tail would take logsumexp over all -inf (NaN gradient): feed zeros there
    rest = torch.where(in_kept & has_tail, float("-inf"), student_logp)
    rest = torch.where(has_tail, rest, torch.zeros((), dtype=rest.dtype, device=rest.device))
    tail = torch.logsumexp(rest, dim=-1, keepdim=True)
    tail = torch.where(has_tail, tail, float("-inf"))
    return torch.cat([kept, tail], dim=-1)
