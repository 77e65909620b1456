"""Sparse teacher targets from dense log-probs (PURE: torch, math, stdlib).

Rows are variable-length (CSR): position ``i`` keeps ``lengths[i]`` ids. Two methods:

* :func:`topk_rows` keeps the ``k`` most likely ids (optionally fewer: the smallest prefix
  whose mass reaches ``top_p``) with their log-probs, and the tail mass outside them.
  Deterministic, but a *biased* target at small ``k`` (the tail's shape is lost).
* :func:`sampled_rows` draws ``n`` ids from the teacher distribution and keeps the unique ids
  with their counts; ``count / n`` is an *unbiased* estimate of every probability
  (Sparse Logit Sampling, Anshumann et al. 2025), with no tail (the estimate sums to 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdistill.signals import SparseSignal


@dataclass
class SparseRows:
    """CSR sparse targets for P positions.

    Attributes:
        lengths: ``(P,)`` int64 number of kept ids per position.
        ids: ``(sum(lengths),)`` int64 kept ids, position-major.
        logprobs: ``(sum(lengths),)`` fp32 log-probs of the kept ids (for ``sampled``:
            ``log(count / n)``).
        log_tail: ``(P,)`` fp32 log mass outside the kept ids (``-inf`` when none).
        counts: ``(sum(lengths),)`` int64 sample counts (``sampled`` only, else None).
        n_samples: draws per position (``sampled`` only, else None).
    """

    lengths: torch.Tensor
    ids: torch.Tensor
    logprobs: torch.Tensor
    log_tail: torch.Tensor
    counts: torch.Tensor | None = None
    n_samples: int | None = None

    @property
    def n_positions(self) -> int:
        return int(self.lengths.numel())

    def to_signal(self, vocab_size: int, temperature: float, shape=None) -> SparseSignal:
        """Pad to a :class:`SparseSignal` ``(P, K_max)`` (unused slots: id -1, log-prob -inf),
        reshaped to ``(*shape, K_max)`` when ``shape`` (the leading position shape) is given."""
        p = self.n_positions
        k_max = max(int(self.lengths.max()) if p else 1, 1)
        ids = torch.full((p, k_max), -1, dtype=torch.long)
        lp = torch.full((p, k_max), float("-inf"), dtype=torch.float32)
        rows = torch.repeat_interleave(torch.arange(p), self.lengths)
        starts = torch.cumsum(self.lengths, 0) - self.lengths
        cols = torch.arange(self.ids.numel()) - torch.repeat_interleave(starts, self.lengths)
        ids[rows, cols] = self.ids
        lp[rows, cols] = self.logprobs.float()
        tail = self.log_tail.float()
        if shape is not None:
            ids, lp, tail = ids.view(*shape, k_max), lp.view(*shape, k_max), tail.view(*shape)
        return SparseSignal(ids, lp, tail, vocab_size, temperature)


def topk_rows(logprobs: torch.Tensor, k: int, top_p: float | None = None) -> SparseRows:
    """Keep the top ``k`` ids of ``logprobs (P, V)`` (fewer where ``top_p`` is reached)."""
    vocab = logprobs.shape[-1]
    if not 1 <= k <= min(vocab, 255):
        raise ValueError(f"k must be in [1, {min(vocab, 255)}], got {k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    lp = logprobs.float()
    top_lp, top_ids = torch.topk(lp, k, dim=-1)
    if top_p is None:
        keep = torch.ones_like(top_lp, dtype=torch.bool)
    else:
        cum = torch.cumsum(top_lp.exp(), dim=-1)
        # keep ids while the mass *before* them is below top_p (always at least one)
        keep = (cum - top_lp.exp()) < top_p
    lengths = keep.sum(-1)
    if k == vocab and top_p is None:
        log_tail = torch.full(lengths.shape, float("-inf"))
    else:
        # the exact tail: logsumexp over every id not kept (never 1 - sum, which rounds to 0)
        kept_ids = torch.where(keep, top_ids, torch.full_like(top_ids, vocab))
        mask = torch.zeros(lp.shape[0], vocab + 1, dtype=torch.bool)
        mask.scatter_(-1, kept_ids, True)
        log_tail = torch.logsumexp(lp.masked_fill(mask[:, :vocab], float("-inf")), dim=-1)
    return SparseRows(lengths.long(), top_ids[keep], top_lp[keep], log_tail)


def sampled_rows(
    logprobs: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> SparseRows:
    """Draw ``n`` ids per position from ``exp(logprobs (P, V))``; keep unique ids + counts."""
    if not 1 <= n <= 255:
        raise ValueError(f"n (samples per position) must be in [1, 255], got {n}")
    probs = logprobs.float().exp()
    draws = torch.multinomial(probs, n, replacement=True, generator=generator)  # (P, n)
    draws, _ = torch.sort(draws, dim=-1)
    first = torch.ones_like(draws, dtype=torch.bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]
    lengths = first.sum(-1)
    ids = draws[first]
    # counts: run lengths of equal ids in each sorted row
    pos = torch.nonzero(first.reshape(-1)).squeeze(-1)
    ends = torch.cat([pos[1:], torch.tensor([draws.numel()])])
    counts = ends - pos
    logp = torch.log(counts.float() / n)
    tail = torch.full(lengths.shape, float("-inf"))
    return SparseRows(lengths.long(), ids, logp, tail, counts.long(), n)


def signal_rows(ids: torch.Tensor, logprobs: torch.Tensor, log_tail: torch.Tensor) -> SparseRows:
    """Rows from a padded sparse signal ``(P, K)`` (unused slots: id -1): what a teacher that
    answers with top-k log-probs already gives (a served one). A position without a target
    keeps no ids (length 0, tail ``-inf``): a store reads it back as "no target here"."""
    keep = ids >= 0
    lengths = keep.sum(-1)
    tail = torch.where(lengths > 0, log_tail.float(), torch.full_like(log_tail.float(), -math.inf))
    return SparseRows(lengths.long(), ids[keep].long(), logprobs[keep].float(), tail)
