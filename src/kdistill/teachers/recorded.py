"""A recorded teacher: the per-token top log-probs an API returned with its generations
(``kdistill generate``, ``generate.top_logprobs``), as sparse targets per training example,
read from the run's recorded store (:mod:`kdistill.teachers.recorded_store`) one example at
a time."""

from __future__ import annotations

from kdistill.teachers.base import EXAMPLE_INDEX, TeacherSignal, Want, pad_sparse, to_device


class RecordedTeacher:
    """``targets.targets(i)``: (ids ``(n_i, k)``, log-probs ``(n_i, k)``, log tail ``(n_i,)``)
    for training example ``i`` (see :func:`kdistill.data.completions.attach_signal`)."""

    def __init__(self, targets, vocab_size: int):
        self.targets = targets
        self.vocab_size = vocab_size

    def signal(self, batch, *, want: Want) -> TeacherSignal:
        rows = [self.targets.targets(i) for i in batch[EXAMPLE_INDEX].tolist()]
        length = batch["input_ids"].shape[1]
        sparse = pad_sparse(rows, length, self.vocab_size, 1.0)
        return TeacherSignal(sparse=to_device(sparse, batch["input_ids"].device))
