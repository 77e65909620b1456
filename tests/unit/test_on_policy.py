"""On-policy batches: prompt + sample with the prompt and post-EOS padding masked, prompts
from masked prefixes or block starts, reproducible micro-batch choices, distinct-n."""

from __future__ import annotations

import pytest
import torch

from kdistill.eval.metrics import distinct_n
from kdistill.models.sampling import SAMPLED, left_pad, sampled_batch
from kdistill.training.on_policy import OnPolicy, is_on_policy, prompts_of

EOS, PAD = 2, 0


def test_sampled_batch_masks_prompt_padding_and_tokens_after_eos():
    p_ids, p_mask = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], PAD)
    assert p_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    new = torch.tensor([[9, EOS, 11, 12], [13, 14, 15, 16]])
    b = sampled_batch(p_ids, p_mask, new, (EOS,))
    assert b["input_ids"].tolist() == [[5, 6, 7, 9, EOS, 11, 12], [0, 0, 8, 13, 14, 15, 16]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
    x = -100
    assert b["labels"].tolist() == [[x, x, x, 9, EOS, x, x], [x, x, x, 13, 14, 15, 16]]
    # the logits at position i predict token i + 1: the last prompt token predicts the first
    # sampled token, the EOS is a target, nothing after it
    assert b["shift_labels"].tolist() == [[x, x, 9, EOS, x, x, x], [x, x, 13, 14, 15, 16, x]]
    # positions count real tokens, so a left-padded row starts at 0 where its prompt starts
    assert b["position_ids"].tolist()[1] == [0, 0, 0, 1, 2, 3, 4]
    assert bool(b[SAMPLED])


def test_sampled_batch_without_eos_keeps_every_sampled_token():
    p_ids, p_mask = left_pad([torch.tensor([5])], PAD)
    b = sampled_batch(p_ids, p_mask, torch.tensor([[EOS, EOS]]), ())
    assert b["shift_labels"].tolist() == [[EOS, EOS, -100]]


def test_prompts_are_the_masked_prefix_or_the_first_block_tokens():
    ids = torch.arange(10, 18).reshape(2, 4)
    labels = torch.tensor([[-100, -100, 12, 13], [14, 15, 16, 17]])
    mask = torch.ones_like(ids)
    got = prompts_of({"input_ids": ids, "labels": labels, "attention_mask": mask}, 3)
    assert [p.tolist() for p in got] == [[10, 11], [14, 15, 16]]
    # a short row keeps at least one token to continue from and leaves one out
    mask[1, 2:] = 0
    got = prompts_of({"input_ids": ids, "labels": labels, "attention_mask": mask}, 3)
    assert got[1].tolist() == [14]
    # a row whose labels are all masked is a prompt on its own
    labels[1] = -100
    got = prompts_of({"input_ids": ids, "labels": labels, "attention_mask": mask}, 3)
    assert got[1].tolist() == [14, 15]


def test_micro_batch_choice_is_a_seeded_function_of_step_rank_and_micro_batch():
    s = OnPolicy(fraction=0.3, seed=7)
    draws = [
        is_on_policy(s, step, rank, m) for step in range(200) for rank in (0, 1) for m in (0, 1)
    ]
    assert draws == [
        is_on_policy(s, step, rank, m) for step in range(200) for rank in (0, 1) for m in (0, 1)
    ]
    assert 0.25 < sum(draws) / len(draws) < 0.35  # 800 draws at p = 0.3: sd 0.016
    ranks = [[is_on_policy(s, step, r, 0) for step in range(200)] for r in (0, 1)]
    assert ranks[0] != ranks[1]  # each rank draws its own
    assert all(is_on_policy(OnPolicy(fraction=1.0), t, 0, 0) for t in range(20))
    assert not any(is_on_policy(OnPolicy(fraction=0.0), t, 0, 0) for t in range(20))


def test_distinct_n():
    assert distinct_n([[1, 2, 3, 4]], 2) == 1.0
    assert distinct_n([[1, 1, 1, 1, 1]], 2) == pytest.approx(1 / 4)
    assert distinct_n([[1, 2], [1, 2]], 2) == pytest.approx(1 / 2)
    assert distinct_n([[1], []], 2) != distinct_n([[1], []], 2)  # NaN: no bigram at all
