"""On-policy distillation: the student samples continuations of the batch's prompts, and the
micro-batch it trains on becomes prompt + its own sample (GKD, Agarwal et al. 2024).

The trainer swaps micro-batches here before it counts the step's valid targets, so the one
division by the global count still holds; the teacher then scores the sampled text like any
other batch (it never knows), and the loss is the on-policy divergence over the sampled
tokens only (prompt and padding masked, no cross-entropy on the student's own tokens).

Reproducible by construction: whether a micro-batch is on-policy and the tokens sampled
for it come from generators seeded by ``(seed, step, rank, micro-batch)``, never from the
global RNG, so a resumed run (same weights at that step) samples exactly the same tokens
and every rank draws its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from kdistill.models.sampling import SAMPLED, sample_continuations, sampled_batch

IGNORE_INDEX = -100
__all__ = ["SAMPLED", "OnPolicy", "is_on_policy", "on_policy_batch", "prompts_of"]


@dataclass(frozen=True)
class OnPolicy:
    """On-policy settings (``distill.on_policy``).

    ``fraction``: the probability that a micro-batch is on-policy (GKD's lambda).
    ``prompt_tokens``: for rows without a masked prompt (packed text blocks), the prompt is
    the block's first ``prompt_tokens`` tokens; rows whose labels mask a prefix (chat
    ``messages``, a ``prompt`` column) use that prefix.
    ``divergence``: the per-token divergence on sampled tokens (reverse KL by default).
    ``estimator``: ``exact`` (the divergence over the vocabulary, or over the top-k + tail of
    a sparse teacher) or ``sampled`` (the sampled-token reverse-KL estimator, which needs only
    the teacher's log-prob of each sampled token).
    ``forward_kl_share``: s in ``(1 - s) * D + s * forward KL`` on sampled tokens (long
    samples can otherwise collapse the student's entropy).
    """

    fraction: float = 1.0
    max_new_tokens: int = 64
    sampling_temperature: float = 1.0
    top_p: float = 1.0
    prompt_tokens: int = 64
    divergence: str = "reverse_kl"
    estimator: str = "exact"
    forward_kl_share: float = 0.0
    min_new_tokens: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.estimator not in ("exact", "sampled"):
            raise ValueError(f"estimator must be exact or sampled, got {self.estimator!r}")
        if not 0.0 <= self.forward_kl_share <= 1.0:
            raise ValueError(f"forward_kl_share must be in [0, 1], got {self.forward_kl_share}")


def _seed(*parts) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def is_on_policy(settings: OnPolicy, step: int, rank: int, micro: int) -> bool:
    """Whether micro-batch ``micro`` of optimizer step ``step`` on ``rank`` is on-policy."""
    if settings.fraction >= 1.0:
        return True
    if settings.fraction <= 0.0:
        return False
    g = torch.Generator().manual_seed(_seed("choose", settings.seed, step, rank, micro))
    return float(torch.rand((), generator=g)) < settings.fraction


def prompts_of(batch: dict, prompt_tokens: int) -> list[torch.Tensor]:
    """Each row's prompt ``(P_i,)``: its label-masked prefix if it has one (chat, prompt
    column), the whole row if every label is masked (prompts only), else its first
    ``prompt_tokens`` tokens (at most all but one of them)."""
    ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask")
    out = []
    for r in range(ids.shape[0]):
        n = int(mask[r].sum()) if mask is not None else ids.shape[1]
        valid = (labels[r, :n] != IGNORE_INDEX).nonzero()
        if not len(valid):
            first = n  # a prompt-only row
        elif int(valid[0]) == 0:
            first = min(prompt_tokens, max(n - 1, 1))  # a text block: its first tokens
        else:
            first = int(valid[0])  # the masked prefix
        out.append(ids[r, :first])
    return out


def on_policy_batch(
    model,
    batch: dict,
    settings: OnPolicy,
    *,
    step: int,
    rank: int,
    micro: int,
    pad_id: int,
    eos_ids: tuple[int, ...],
) -> dict:
    """``batch`` replaced by prompt + the student's sample (see :func:`sampled_batch`)."""
    prompts = prompts_of(batch, settings.prompt_tokens)
    seed = _seed("sample", settings.seed, step, rank, micro)
    p_ids, p_mask, new = sample_continuations(
        model,
        prompts,
        max_new_tokens=settings.max_new_tokens,
        sampling_temperature=settings.sampling_temperature,
        top_p=settings.top_p,
        min_new_tokens=settings.min_new_tokens,
        pad_id=pad_id,
        eos_ids=eos_ids,
        seed=seed,
    )
    return sampled_batch(p_ids, p_mask, new, eos_ids)
