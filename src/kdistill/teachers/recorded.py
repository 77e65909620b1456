"""A recorded teacher: the per-token top log-probs an API returned with its generations
(``kdistill generate``, ``generate.top_logprobs``), as sparse targets per training example."""

from __future__ import annotations

import torch

from kdistill.teachers.base import EXAMPLE_INDEX, TeacherSignal, Want, pad_sparse
from kdistill.teachers.store import _to


class RecordedTeacher:
    """``targets[i]``: (ids ``(n_i, k)``, log-probs ``(n_i, k)``, log tail ``(n_i,)``) for
    example ``i`` (see :func:`kdistill.data.completions.attach_signal`)."""

    def __init__(
        self, targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], vocab_size: int
    ):
        self.targets = targets
        self.vocab_size = vocab_size

    def signal(self, batch, *, want: Want) -> TeacherSignal:
        rows = [self.targets[i] for i in batch[EXAMPLE_INDEX].tolist()]
        length = batch["input_ids"].shape[1]
        sparse = pad_sparse(rows, length, self.vocab_size, 1.0)
        return TeacherSignal(sparse=_to(sparse, batch["input_ids"].device))
