"""Sampling from a causal LM: left-padded prompts, batched ``generate`` with the KV cache,
seeded without touching the caller's RNG stream; the batch of prompt + sample a loss or a
metric reads."""

from __future__ import annotations

import torch

from kdistill.models.placement import device_of, on_model

IGNORE_INDEX = -100
SAMPLED = "sampled_by_student"  # batch key: () bool, the micro-batch is prompt + own sample


def left_pad(prompts: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of shape ``(B, max P_i)``, prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if len(p):
            ids[r, width - len(p) :] = p
            mask[r, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def sample_continuations(
    model,
    prompts: list[torch.Tensor],
    *,
    max_new_tokens: int,
    sampling_temperature: float = 1.0,
    top_p: float = 1.0,
    min_new_tokens: int = 0,
    pad_id: int,
    eos_ids: tuple[int, ...],
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompt_ids, prompt_mask, new_tokens (B, N <= max_new_tokens))`` from ``model``'s
    generation with the KV cache, prompts left-padded. Sampling (``sampling_temperature`` >
    0, nucleus ``top_p``, no top-k cut) is seeded by ``seed`` with the global RNG forked and
    restored around it; ``sampling_temperature`` 0 is greedy."""
    from transformers import GenerationConfig

    greedy = sampling_temperature <= 0
    ids, mask = on_model(left_pad(prompts, pad_id), model)
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=sampling_temperature if not greedy else None,
        top_p=top_p if not greedy else None,
        top_k=0,  # sample from the whole distribution (HF's default would be 50)
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None,
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids) or None,
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    device = device_of(model)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    finally:
        model.train(was_training)
    return ids, mask, out[:, ids.shape[1] :]


def sampled_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    new_tokens: torch.Tensor,
    eos_ids: tuple[int, ...] = (),
) -> dict:
    """The training micro-batch for prompt + sample.

    Args:
        prompt_ids, prompt_mask: ``(B, P)`` left-padded prompts.
        new_tokens: ``(B, N)`` sampled tokens; a row ends at its first EOS (which is kept as
            a target), everything after it is padding.

    Returns ``input_ids``, ``attention_mask``, ``position_ids`` (count of real tokens
    before each position), ``labels`` (-100 on prompt and padding), ``shift_labels`` (the
    target of each position's logits) and :data:`SAMPLED`.
    """
    b, n = new_tokens.shape
    keep = torch.ones((b, n), dtype=torch.long)
    if eos_ids and n:
        is_eos = torch.zeros_like(new_tokens, dtype=torch.bool)
        for e in eos_ids:
            is_eos |= new_tokens == e
        # positions strictly after the first EOS are padding
        after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        keep = (~after).long()
    ids = torch.cat([prompt_ids, new_tokens], dim=1)
    mask = torch.cat([prompt_mask.long(), keep], dim=1)
    labels = torch.cat(
        [
            torch.full_like(prompt_ids, IGNORE_INDEX),
            torch.where(keep.bool(), new_tokens, torch.full_like(new_tokens, IGNORE_INDEX)),
        ],
        dim=1,
    )
    shift = torch.full_like(labels, IGNORE_INDEX)
    shift[:, :-1] = labels[:, 1:]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "labels": labels,
        "shift_labels": shift,
        SAMPLED: torch.tensor(True),
    }
