"""Data preparation and student construction on tiny offline models."""

from __future__ import annotations

import pytest
import torch

from kdistill.data.holdout import split_held_out
from kdistill.data.kjv import clean_passage
from kdistill.data.lm import IGNORE_INDEX, CausalCollator, build_lm_datasets, chat_example
from kdistill.models.student import build_student_from_teacher, select_layers
from kdistill.models.vocab import shared_vocab_size
from tests.conftest import TINY_TEXT, make_tiny_lm, make_tokenizer


def test_clean_passage_strips_verse_numbers():
    raw = "31:48 And Laban said, This heap is a witness.  31:49 And Mizpah; for he said"
    assert clean_passage(raw) == "And Laban said, This heap is a witness. And Mizpah; for he said"


def test_split_is_deterministic_and_disjoint():
    recs = [f"doc {i}" for i in range(200)]
    a, b = split_held_out(recs, 0.1, seed=3)
    a2, b2 = split_held_out(recs, 0.1, seed=3)
    assert (a, b) == (a2, b2)
    assert not set(a) & set(b) and len(a) + len(b) == 200
    assert 5 <= len(b) <= 40


def test_packing_and_shift_labels(tiny_tokenizer, tiny_text_file):
    train, held = build_lm_datasets(
        tiny_tokenizer, str(tiny_text_file), block_size=16, held_out_fraction=0.2
    )
    assert len(train) > 0 and len(held) > 0
    batch = CausalCollator(tiny_tokenizer.pad_token_id)([train[0], train[1]])
    assert batch["input_ids"].shape == (2, 16)
    assert torch.equal(batch["shift_labels"][:, :-1], batch["input_ids"][:, 1:])
    assert (batch["shift_labels"][:, -1] == IGNORE_INDEX).all()


def test_chat_prompt_is_masked(tiny_tokenizer):
    msgs = [
        {"role": "user", "content": "And God said"},
        {"role": "assistant", "content": "Let there be light"},
    ]
    ids, labels = chat_example(tiny_tokenizer, msgs, max_length=128)
    n_masked = sum(1 for x in labels if x == IGNORE_INDEX)
    prompt = tiny_tokenizer.apply_chat_template(
        msgs[:1], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert n_masked == len(prompt)
    answer = tiny_tokenizer.decode([t for t, y in zip(ids, labels) if y != IGNORE_INDEX])
    assert "Let there be light" in answer and "God said" not in answer


def test_select_layers():
    assert select_layers(30, every=3) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert select_layers(4, keep_layers=[-1, 0]) == [0, 3]
    with pytest.raises(ValueError, match="keep_layers"):
        select_layers(4, keep_layers=[7])
    with pytest.raises(ValueError, match="exactly one"):
        select_layers(4)


def test_student_with_all_layers_equals_teacher(tiny_tokenizer):
    teacher = make_tiny_lm(tiny_tokenizer).eval()
    student = build_student_from_teacher(teacher, keep_layers=[0, 1, 2, 3]).eval()
    ids = torch.randint(0, len(tiny_tokenizer), (2, 12))
    with torch.no_grad():
        assert torch.equal(student(input_ids=ids).logits, teacher(input_ids=ids).logits)
    assert student.lm_head.weight is student.model.embed_tokens.weight  # tied stays tied


def test_student_layer_subset_copies_weights(tiny_tokenizer):
    teacher = make_tiny_lm(tiny_tokenizer)
    student = build_student_from_teacher(teacher, keep_layers=[1, 3])
    assert student.config.num_hidden_layers == 2
    for s_idx, t_idx in enumerate([1, 3]):
        s_sd = student.model.layers[s_idx].state_dict()
        t_sd = teacher.model.layers[t_idx].state_dict()
        assert all(torch.equal(s_sd[k], t_sd[k]) for k in t_sd)
    assert all(p.requires_grad for p in student.parameters())


def test_narrow_student_is_sliced_from_the_teacher(tiny_tokenizer):
    teacher = make_tiny_lm(tiny_tokenizer)
    calib = [torch.randint(0, len(tiny_tokenizer), (1, 8))]
    student = build_student_from_teacher(
        teacher, every=2, hidden_size=16, intermediate_size=24, calibration=calib
    )
    assert student.config.hidden_size == 16
    kept = student.kdistill_pruning["plan"]["channels"]
    assert torch.equal(
        student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, kept]
    )
    assert student(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == len(tiny_tokenizer)


def test_padded_vocab_is_reconciled(tiny_tokenizer):
    real = len(tiny_tokenizer)
    assert shared_vocab_size(tiny_tokenizer, tiny_tokenizer, real + 64, real) == real


def test_tokenizer_mismatch_is_refused(tiny_tokenizer):
    other = make_tokenizer([t.upper() for t in TINY_TEXT], vocab_size=320)
    with pytest.raises(ValueError, match="tokenizers differ"):
        shared_vocab_size(tiny_tokenizer, other, 300, 300)
