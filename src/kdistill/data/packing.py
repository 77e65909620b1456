"""Token blocks: documents joined with EOS and cut into ``block_size`` rows, and the
fingerprint a teacher store is matched against."""

from __future__ import annotations

import hashlib

import torch

from kdistill.data.examples import BlockDataset
from kdistill.errors import InputError


def pack_texts(tokenizer, texts: list[str], block_size: int, max_tokens: int | None = None):
    """Token blocks ``(n_blocks, block_size)`` from documents joined with EOS."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if max_tokens is not None and len(stream) >= max_tokens + block_size:
            break
    if max_tokens is not None:
        stream = stream[: max(max_tokens, block_size)]
    n = len(stream) // block_size
    if n == 0:
        raise InputError(
            f"only {len(stream)} tokens of text, fewer than one block of {block_size}; "
            "lower data.block_size or add data"
        )
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)


def data_fingerprint(dataset: BlockDataset) -> str:
    """sha256 over every example's token ids and labels (what a teacher store must match)."""
    h = hashlib.sha256()
    for i in range(len(dataset)):
        item = dataset[i]
        h.update(item["input_ids"].numpy().tobytes())
        h.update(item["labels"].numpy().tobytes())
    return h.hexdigest()
