"""Training examples: ``(input_ids, labels)`` pairs with masked positions, and chat turns
rendered with the tokenizer's template (everything before the final reply masked)."""

from __future__ import annotations

import torch

from kdistill.errors import InputError

IGNORE_INDEX = -100


def chat_example(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with everything before the final assistant reply masked."""
    if not messages or messages[-1].get("role") != "assistant":
        raise InputError("a chat record's last message must be the assistant's reply")
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    if hasattr(full, "input_ids"):
        full, prompt = full["input_ids"], prompt["input_ids"]
    full, prompt = list(full)[:max_length], list(prompt)
    n_prompt = min(len(prompt), len(full))
    labels = [IGNORE_INDEX] * n_prompt + full[n_prompt:]
    return full, labels


class BlockDataset(torch.utils.data.Dataset):
    """Items ``{input_ids, labels}`` from packed blocks or chat examples."""

    def __init__(self, examples: list[tuple[list[int], list[int]]] | torch.Tensor):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        if isinstance(ex, torch.Tensor):
            return {"input_ids": ex, "labels": ex.clone()}
        ids, labels = ex
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
