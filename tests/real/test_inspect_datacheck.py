"""`inspect` and `datacheck` on the real teacher."""

from __future__ import annotations

import itertools

import pytest

from kdistill.pipeline.datacheck import compare, load_texts, profile
from kdistill.pipeline.inspect import sampled_sequences, soft_labels

pytestmark = pytest.mark.real


def test_soft_labels_sum_to_one_and_entropy_rises_with_t(real_teacher):
    model, tok = real_teacher
    rows = soft_labels(model, tok, "The capital of France is", (0.2, 1.0, 2.0, 5.0, 20.0))
    for r in rows:
        assert r["total_probability"] == pytest.approx(1.0, abs=1e-4)
    ents = [r["entropy_nats"] for r in rows]
    assert all(a < b for a, b in itertools.pairwise(ents))
    assert rows[0]["top"][0]["prob"] > rows[-1]["top"][0]["prob"]
    assert "Paris" in rows[1]["top"][0]["token"]


def test_sampled_sequences_shares_sum_to_one(real_teacher):
    model, tok = real_teacher
    seqs = sampled_sequences(model, tok, "I am hungry, I want to eat", n=6, max_new_tokens=5)
    assert 1 <= len(seqs) <= 6
    assert sum(s["share"] for s in seqs) == pytest.approx(1.0)
    assert all(s["logprob"] < 0 for s in seqs)


def test_datacheck_ranks_in_domain_closer_than_python_docs(real_teacher):
    model, tok = real_teacher
    train = profile(model, tok, load_texts("kjv:train"), max_tokens=2048)
    held = profile(model, tok, load_texts("kjv:heldout"), max_tokens=2048)
    pydoc = profile(model, tok, load_texts("pydoc"), max_tokens=2048)
    near, far = compare(train, held), compare(train, pydoc)
    for key in ("unigram_jsd_bits", "embedding_cosine_distance"):
        assert near[key] < far[key], key
    assert not near["mismatch"] and far["mismatch"]
