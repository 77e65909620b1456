"""A stored teacher: sparse targets read from a teacher-signal store (``kdistill cache``),
looked up by the examples' indices; no teacher model in memory."""

from __future__ import annotations

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

    def signal(self, batch, *, want: Want) -> TeacherSignal:
        vocab = self.reader.manifest.vocab_size
        rows = []
        for i in batch[EXAMPLE_INDEX].tolist():
            s = self.reader.block(i).to_signal(vocab, 1.0)
            rows.append((s.ids, s.logprobs, s.log_tail))
        length = batch["input_ids"].shape[1]
        sparse = pad_sparse(rows, length, vocab, self.temperature)
        device = batch["input_ids"].device
        return TeacherSignal(sparse=to_device(sparse, device))
