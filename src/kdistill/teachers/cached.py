"""A cached teacher: sparse targets read from a store, attached to each training block."""

from __future__ import annotations

import torch

from kdistill.cache import StoreReader
from kdistill.data.lm import CausalCollator
from kdistill.errors import InputError

TEACHER_KEYS = ("teacher_ids", "teacher_logprobs", "teacher_log_tail")


class CachedSignalDataset(torch.utils.data.Dataset):
    """Wraps a block dataset; item ``i`` also carries block ``i``'s stored targets."""

    def __init__(self, blocks, reader: StoreReader):
        if len(blocks) != len(reader):
            raise InputError(
                f"store has {len(reader)} blocks but the data has {len(blocks)}; "
                "use the data config the store was built with"
            )
        self.blocks = blocks
        self.reader = reader

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.blocks[i])
        sig = self.reader.block(i).to_signal(self.reader.manifest.vocab_size, 1.0)
        item.update(
            teacher_ids=sig.ids, teacher_logprobs=sig.logprobs, teacher_log_tail=sig.log_tail
        )
        return item


class CachedCollator(CausalCollator):
    """CausalCollator plus stored targets padded to a common K (unused slots: id -1)."""

    def __call__(self, items: list[dict]) -> dict:
        batch = super().__call__(
            [{k: v for k, v in it.items() if k not in TEACHER_KEYS} for it in items]
        )
        b, length = batch["input_ids"].shape
        k = max(it["teacher_ids"].shape[-1] for it in items)
        ids = torch.full((b, length, k), -1, dtype=torch.long)
        lp = torch.full((b, length, k), float("-inf"))
        tail = torch.full((b, length), float("-inf"))
        for r, it in enumerate(items):
            n, kk = it["teacher_ids"].shape
            ids[r, :n, :kk] = it["teacher_ids"]
            lp[r, :n, :kk] = it["teacher_logprobs"]
            tail[r, :n] = it["teacher_log_tail"]
        batch.update(teacher_ids=ids, teacher_logprobs=lp, teacher_log_tail=tail)
        return batch
