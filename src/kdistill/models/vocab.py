"""Teacher/student vocabulary reconciliation.

Same tokenizer, padded embedding matrices (e.g. V_model = 49,280 for a 49,152-token tokenizer):
logits are sliced to the real vocabulary so padded ids never get probability. A genuinely
different tokenizer is refused (cross-tokenizer distillation is not supported yet).
"""

from __future__ import annotations

import hashlib
import json

from kdistill.errors import InputError


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shared_vocab_size(
    teacher_tok, student_tok, teacher_logit_dim: int, student_logit_dim: int
) -> int:
    """The number of real token ids both sides share; logits are sliced to this."""
    if tokenizer_fingerprint(teacher_tok) != tokenizer_fingerprint(student_tok):
        raise InputError(
            "teacher and student tokenizers differ; kdistill needs the same tokenizer on both "
            "sides (cross-tokenizer distillation is not supported yet): pick a student from "
            "the teacher's family or build one with `student.from_teacher`"
        )
    real = len(teacher_tok)
    if teacher_logit_dim < real or student_logit_dim < real:
        raise InputError(
            f"a model's output dim ({teacher_logit_dim}, {student_logit_dim}) is smaller than "
            f"the tokenizer's {real} ids; the checkpoint does not match its tokenizer"
        )
    return real
