"""Sampling from a causal LM: left-padded prompts, batched ``generate`` with the KV cache,
seeded without touching the caller's RNG stream."""

from __future__ import annotations

import torch


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
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=sampling_temperature if not greedy else None,
        top_p=top_p if not greedy else None,
        top_k=0,  # sample from the whole distribution (HF's default would be 50)
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids) or None,
    )
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, use_cache=True
            )
    finally:
        model.train(was_training)
    return ids, mask, out[:, ids.shape[1] :]
