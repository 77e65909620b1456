"""A stored teacher: sparse targets read from a teacher-signal store (``kdistill cache``),
looked up by the examples' indices; no teacher model in memory."""

from __future__ import annotations

import torch

from kdistill.cache import StoreReader
from kdistill.errors import InputError
from kdistill.teachers.base import EXAMPLE_INDEX, TeacherSignal, Want, pad_sparse, to_device


class StoreTeacher:
    """Block ``i`` of the training data <-> block ``i`` of the store (checked at build)."""

    def __init__(self, reader: StoreReader, n_examples: int):
        if n_examples != len(reader):
            raise InputError(
                f"store has {len(reader)} blocks but the data has {n_examples}; "
                "use the data config the store was built with"
            )
        self.reader = reader
        self.temperature = reader.manifest.cache_temperature
        # a store from a teacher with another tokenizer: unaligned positions keep their CE
        teacher = reader.manifest.teacher or {}
        self.valid_for = "soft" if teacher.get("kind") == "aligned" else "all"

    def signal(self, batch, *, want: Want) -> TeacherSignal:
        vocab = self.reader.manifest.vocab_size
        rows, kept = [], []
        for i in batch[EXAMPLE_INDEX].tolist():
            block = self.reader.block(i)
            s = block.to_signal(vocab, 1.0)
            rows.append((s.ids, s.logprobs, s.log_tail))
            kept.append(block.lengths > 0)
        length = batch["input_ids"].shape[1]
        sparse = pad_sparse(rows, length, vocab, self.temperature)
        device = batch["input_ids"].device
        valid = None
        if not all(bool(k[:-1].all()) for k in kept):
            # positions the teacher gave no target for (a server's, or unaligned ones)
            valid = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
            for r, k in enumerate(kept):
                valid[r, : k.numel()] = k
            valid = valid.to(device)
        return TeacherSignal(
            sparse=to_device(sparse, device), valid=valid, valid_for=self.valid_for
        )
