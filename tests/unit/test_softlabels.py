"""Sparsification and compact encoding of teacher targets (pure)."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.softlabels import decode_positions, encode_positions, sampled_rows, topk_rows
from kdistill.softlabels.encoding import pack_bits, unpack_bits


def _logprobs(p=7, v=40, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(p, v, generator=g) * scale, dim=-1)


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 11, 16, 17])
def test_bit_packing_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    vals = torch.randint(0, 2**bits, (101,), generator=g)
    packed = pack_bits(vals, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(101 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 101), vals)


def test_topk_keeps_the_largest_and_the_tail():
    lp = _logprobs()
    rows = topk_rows(lp, 5)
    assert rows.lengths.tolist() == [5] * 7
    ref_lp, ref_ids = torch.topk(lp, 5)
    assert torch.equal(rows.ids.view(7, 5), ref_ids)
    tail = 1 - ref_lp.exp().sum(-1)
    assert torch.allclose(rows.log_tail.exp(), tail, atol=1e-6)


def test_top_p_cuts_early_but_keeps_one():
    lp = torch.log(torch.tensor([[0.7, 0.2, 0.05, 0.05], [0.4, 0.3, 0.2, 0.1]]))
    rows = topk_rows(lp, 4, top_p=0.6)
    assert rows.lengths.tolist() == [1, 2]


def test_topk_all_ids_is_exact_and_tailless():
    lp = _logprobs(v=30)
    sig = topk_rows(lp, 30).to_signal(30, 1.0)
    assert torch.allclose(sig.to_dense(), lp, atol=1e-6)
    assert torch.isneginf(sig.log_tail).all()


def test_sampled_counts_sum_to_n_and_ids_unique():
    rows = sampled_rows(_logprobs(), 32, torch.Generator().manual_seed(1))
    starts = torch.cumsum(rows.lengths, 0) - rows.lengths
    for i in range(rows.n_positions):
        s, n = int(starts[i]), int(rows.lengths[i])
        assert int(rows.counts[s : s + n].sum()) == 32
        assert rows.ids[s : s + n].unique().numel() == n
    assert torch.allclose(rows.to_signal(40, 1.0).to_dense().exp().sum(-1), torch.ones(7))


@pytest.mark.parametrize("n", [8, 32, 128])
def test_sampled_estimator_is_unbiased(n):
    """Mean of R sampled targets -> dense p; the error bound shrinks like 1/sqrt(n R)."""
    lp = _logprobs(p=3, v=20, scale=1.5)
    reps = 400
    g = torch.Generator().manual_seed(n)
    total = torch.zeros(3, 20)
    for _ in range(reps):
        total += sampled_rows(lp, n, g).to_signal(20, 1.0).to_dense().exp()
    mean = total / reps
    bound = 5 * math.sqrt(0.25 / (n * reps))  # 5 sigma of a Bernoulli mean
    assert (mean - lp.exp()).abs().max() < bound


@pytest.mark.parametrize("kind,tol", [("logprob16", 3e-3), ("logprob8", 0.08)])
def test_logprob_encoding_round_trip(kind, tol):
    lp = _logprobs(v=300)
    rows = topk_rows(lp, 12)
    dec = decode_positions(encode_positions(rows, 300, kind))
    assert torch.equal(dec.ids, rows.ids)
    assert (dec.logprobs - rows.logprobs).abs().max() < tol
    # decoded targets are normalised (kept + tail = 1)
    assert torch.allclose(
        dec.to_signal(300, 1.0).to_dense().exp().sum(-1), torch.ones(7), atol=1e-5
    )


def test_count_encoding_is_exact_and_small():
    lp = _logprobs(p=50, v=49152, scale=4.0)
    rows = sampled_rows(lp, 24, torch.Generator().manual_seed(0))
    enc = encode_positions(rows, 49152, "count8")
    dec = decode_positions(enc)
    assert torch.equal(dec.ids, rows.ids) and torch.equal(dec.counts, rows.counts)
    per_id = 16 / 8 + 1  # 16-bit ids + 1-byte counts
    expect = 50 + per_id * rows.ids.numel()
    assert enc.nbytes() == pytest.approx(expect, abs=2)


def test_bad_arguments():
    lp = _logprobs()
    with pytest.raises(ValueError, match="k must be"):
        topk_rows(lp, 0)
    with pytest.raises(ValueError, match="top_p"):
        topk_rows(lp, 3, top_p=1.5)
    with pytest.raises(ValueError, match=r"n \(samples"):
        sampled_rows(lp, 300)
    with pytest.raises(ValueError, match="count8"):
        encode_positions(topk_rows(lp, 3), 40, "count8")


def test_a_position_without_target_round_trips_as_no_target_not_nan():
    """signal_rows keeps what a top-k answer gave; a position with no ids (a served teacher's
    unscored one) is stored with length 0 and read back with a -inf tail, never NaN."""
    from kdistill.softlabels import decode_positions, encode_positions, signal_rows

    ids = torch.tensor([[3, 1, -1], [-1, -1, -1], [2, -1, -1]])
    lp = torch.tensor([[-0.5, -1.5, float("-inf")], [float("-inf")] * 3, [-0.1, float("-inf"), 0]])
    tail = torch.tensor([-2.0, 0.0, -2.4])
    rows = signal_rows(ids, lp, tail)
    assert rows.lengths.tolist() == [2, 0, 1] and rows.ids.tolist() == [3, 1, 2]
    for kind in ("logprob16", "logprob8"):
        back = decode_positions(encode_positions(rows, 8, kind))
        assert back.lengths.tolist() == [2, 0, 1]
        assert not torch.isnan(back.log_tail).any() and not torch.isnan(back.logprobs).any()
        assert float(back.log_tail[1]) == float("-inf")
        # each scored position still sums to 1 (kept + tail)
        mass0 = back.logprobs[:2].exp().sum() + back.log_tail[0].exp()
        assert float(mass0) == pytest.approx(1.0, abs=1e-6)
