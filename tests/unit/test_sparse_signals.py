"""Teacher signals (DenseSignal, SparseSignal) and the K + 1 bucket sparse loss path."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kdistill
from kdistill.losses import DIVERGENCES
from kdistill.losses.sparse import (
    kept_mask,
    student_buckets,
    student_buckets_from_logits,
    teacher_buckets,
)
from kdistill.signals import DenseSignal, SparseSignal
from tests.unit import reference as ref

TEMPS = [0.5, 1.0, 2.0, 4.0, 20.0]
FAST = settings(max_examples=30, deadline=None)
NEG_INF = -math.inf
# Where a tail is spread over the V - K dropped ids (to_dense, re-tempering), float64
# signals must keep float64 precision (test_float64_signals_keep_float64_precision).
TAIL_RTOL = 1e-9


def _pad(sig: SparseSignal, n: int, front: bool = False) -> SparseSignal:
    """The same signal with ``n`` unused slots (id -1, log-prob -inf) appended/prepended."""
    lead = sig.ids.shape[:-1]
    ids = torch.full((*lead, n), -1)
    lp = torch.full((*lead, n), NEG_INF, dtype=sig.logprobs.dtype)
    parts = ((ids, sig.ids), (lp, sig.logprobs)) if front else ((sig.ids, ids), (sig.logprobs, lp))
    return SparseSignal(
        torch.cat(parts[0], -1),
        torch.cat(parts[1], -1),
        sig.log_tail,
        sig.vocab_size,
        sig.made_at_temperature,
    )


def _permute(sig: SparseSignal, seed: int) -> SparseSignal:
    perm = torch.randperm(sig.k, generator=torch.Generator().manual_seed(seed))
    return SparseSignal(
        sig.ids[..., perm],
        sig.logprobs[..., perm],
        sig.log_tail,
        sig.vocab_size,
        sig.made_at_temperature,
    )


# ----------------------------------------------------------------------------- DenseSignal


@pytest.mark.parametrize("t", TEMPS)
def test_dense_from_logits_is_log_softmax_at_temperature(t):
    z = ref.random_logits((3, 4), 12, 1)
    sig = DenseSignal.from_logits(z, t)
    assert torch.equal(sig.logprobs, torch.log_softmax(z / t, -1))
    assert sig.made_at_temperature == t and sig.vocab_size == 12
    for i, row in enumerate(ref.rows(z)):
        expected = ref.log_softmax_row(row, t)
        got = sig.logprobs.reshape(-1, 12)[i].tolist()
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("t0", TEMPS)
@pytest.mark.parametrize("t", TEMPS)
def test_dense_at_temperature_equals_log_softmax_of_logits_over_t(t0, t):
    z = ref.random_logits((5,), 20, 2)
    got = DenseSignal.from_logits(z, t0).at_temperature(t)
    # float64 throughout: exact up to a few ulps of the log-probs
    torch.testing.assert_close(got, torch.log_softmax(z / t, -1), rtol=1e-12, atol=1e-12)


def test_dense_at_own_temperature_returns_the_logprobs_unchanged():
    z = ref.random_logits((4,), 9, 3)
    sig = DenseSignal.from_logits(z, 2.0)
    assert torch.equal(sig.at_temperature(2.0), sig.logprobs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dense_signal_math_runs_in_fp32(dtype):
    z = ref.random_logits((3,), 10, 4).to(dtype)
    sig = DenseSignal.from_logits(z, 2.0)
    assert sig.logprobs.dtype == torch.float32
    torch.testing.assert_close(sig.at_temperature(0.5), torch.log_softmax(z.float() / 0.5, -1))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_dense_signal_rejects_bad_temperatures(bad):
    z = ref.random_logits((3,), 5, 5)
    with pytest.raises(ValueError, match="temperature"):
        DenseSignal.from_logits(z, bad)
    with pytest.raises(ValueError, match="made_at_temperature"):
        DenseSignal(torch.log_softmax(z, -1), bad)
    with pytest.raises(ValueError, match="temperature"):
        DenseSignal.from_logits(z).at_temperature(bad)


# ----------------------------------------------------------------------- SparseSignal basics


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_from_logits_topk_keeps_the_k_most_likely_ids(t, k):
    vocab = 8
    z = ref.random_logits((2, 3), vocab, 6)
    sig = SparseSignal.from_logits_topk(z, k, t)
    assert sig.k == k and sig.vocab_size == vocab and sig.made_at_temperature == t
    assert sig.ids.shape == (2, 3, k) and sig.log_tail.shape == (2, 3)
    ids, lps, tails = sig.ids.reshape(-1, k), sig.logprobs.reshape(-1, k), sig.log_tail.reshape(-1)
    for i, row in enumerate(ref.rows(z)):
        p = ref.softmax_row(row, t)
        lp = ref.log_softmax_row(row, t)
        kept = ref.topk_ids(p, k)
        assert ids[i].tolist() == kept  # largest first
        assert lps[i].tolist() == pytest.approx([lp[j] for j in kept], rel=1e-12, abs=1e-12)
        tail = ref.buckets(p, kept)[-1]
        if k == vocab:
            assert tails[i].item() == NEG_INF
        else:
            assert math.exp(tails[i].item()) == pytest.approx(tail, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("k", [0, -1, 9])
def test_from_logits_topk_rejects_k_outside_one_to_vocab(k):
    with pytest.raises(ValueError, match="k must be in"):
        SparseSignal.from_logits_topk(ref.random_logits((2,), 8, 7), k)


def test_from_logits_topk_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        SparseSignal.from_logits_topk(ref.random_logits((2,), 8, 7), 3, temperature=0.0)


def test_sparse_signal_validates_its_fields():
    ids = torch.tensor([[0, 2]])
    lp = torch.tensor([[-0.5, -1.5]])
    tail = torch.tensor([-2.0])
    SparseSignal(ids, lp, tail, 5)  # fine
    with pytest.raises(ValueError, match="same shape"):
        SparseSignal(ids, lp[:, :1], tail, 5)
    with pytest.raises(ValueError, match="log_tail"):
        SparseSignal(ids, lp, torch.tensor([-2.0, -3.0]), 5)
    with pytest.raises(ValueError, match="vocab_size"):
        SparseSignal(ids, lp, tail, 1)
    with pytest.raises(ValueError, match="made_at_temperature"):
        SparseSignal(ids, lp, tail, 5, made_at_temperature=-1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_sparse_signal_from_low_precision_logits_is_fp32(dtype):
    sig = SparseSignal.from_logits_topk(ref.random_logits((3,), 10, 8).to(dtype), 4, 2.0)
    assert sig.logprobs.dtype == torch.float32 and sig.log_tail.dtype == torch.float32
    assert sig.ids.dtype == torch.int64


def test_topk_tail_keeps_precision_for_a_peaky_teacher():
    z = torch.zeros(1, 50)
    z[0, 0] = 25.0  # the top id holds all but ~6e-10 of the mass
    sig = SparseSignal.from_logits_topk(z, 5)
    exact = ref.log_softmax_row([25.0] + [0.0] * 49, 1.0)
    expected_tail = math.log(sum(math.exp(x) for x in exact[5:]))  # ~ -21.19
    assert sig.log_tail.item() == pytest.approx(expected_tail, rel=1e-4)
    # with the tail rounded to 0, reverse KL sees student mass on a teacher-impossible bucket
    s = torch.zeros(1, 50)
    assert math.isfinite(kdistill.kd_loss(s, sig, None, divergence="reverse_kl").item())


# ---------------------------------------------------------------------------------- to_dense


@pytest.mark.parametrize("k", [1, 4, 12])
@pytest.mark.parametrize("pad", [0, 3])
def test_to_dense_sums_to_one_and_spreads_the_tail_uniformly(k, pad):
    vocab = 12
    z = ref.random_logits((2, 3), vocab, 9)
    sig = SparseSignal.from_logits_topk(z, k, 2.0)
    sig = _pad(sig, min(pad, vocab - k)) if pad else sig
    dense = sig.to_dense()
    assert dense.shape == (2, 3, vocab)
    torch.testing.assert_close(
        dense.exp().sum(-1), torch.ones(2, 3, dtype=torch.float64), rtol=0, atol=TAIL_RTOL
    )
    for i, row in enumerate(ref.rows(z)):
        p = ref.softmax_row(row, 2.0)
        kept = ref.topk_ids(p, k)
        got = dense.reshape(-1, vocab)[i].exp().tolist()
        tail_each = ref.buckets(p, kept)[-1] / (vocab - k) if k < vocab else 0.0
        expected = [p[j] if j in kept else tail_each for j in range(vocab)]
        assert got == pytest.approx(expected, rel=TAIL_RTOL, abs=1e-15)
    if k == vocab:
        torch.testing.assert_close(dense, torch.log_softmax(z / 2.0, -1), rtol=1e-12, atol=1e-12)


def test_float64_signals_keep_float64_precision():
    z = ref.random_logits((3,), 10, 24)
    sig = SparseSignal.from_logits_topk(z, 4, 1.0)
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(sig.to_dense().exp().sum(-1), ones, rtol=0, atol=1e-12)
    again = sig.at_temperature(2.0).at_temperature(1.0)
    torch.testing.assert_close(again.log_tail, sig.log_tail, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- re-tempering


@FAST
@given(
    seed=st.integers(0, 10_000),
    vocab=st.integers(2, 30),
    t0=st.sampled_from(TEMPS),
    t=st.sampled_from(TEMPS),
)
def test_retempering_with_all_ids_kept_is_exact(seed, vocab, t0, t):
    z = ref.random_logits((3,), vocab, seed)
    sig = SparseSignal.from_logits_topk(z, vocab, t0).at_temperature(t)
    dense = DenseSignal.from_logits(z, t0).at_temperature(t)
    assert sig.made_at_temperature == t
    assert torch.isneginf(sig.log_tail).all()
    torch.testing.assert_close(sig.to_dense(), dense, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sig.to_dense(), torch.log_softmax(z / t, -1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t0,t", [(1.0, 2.0), (2.0, 0.5), (0.5, 20.0), (4.0, 1.0)])
@pytest.mark.parametrize("pad", [0, 2])
def test_retempering_with_a_tail_matches_the_uniform_tail_reference(t0, t, pad):
    vocab, k = 10, 4
    z = ref.random_logits((5,), vocab, 10)
    base = SparseSignal.from_logits_topk(z, k, t0)
    sig = _pad(base, pad, front=True) if pad else base
    out = sig.at_temperature(t)
    assert out.made_at_temperature == t and torch.equal(out.ids, sig.ids)
    for i, row in enumerate(ref.rows(z)):
        p = ref.softmax_row(row, t0)
        kept = ref.topk_ids(p, k)
        probs, tail = ref.retemper_sparse(
            [p[j] for j in kept], ref.buckets(p, kept)[-1], vocab, t0, t
        )
        got_lp = out.logprobs[i, pad:].tolist()
        assert [math.exp(x) for x in got_lp] == pytest.approx(probs, rel=TAIL_RTOL, abs=1e-15)
        assert math.exp(out.log_tail[i].item()) == pytest.approx(tail, rel=TAIL_RTOL, abs=1e-15)
        assert torch.isneginf(out.logprobs[i, :pad]).all()
        # kept ids relative to one another are exact: log-ratios scale by t0 / t
        lp_t = ref.log_softmax_row(row, t)
        assert got_lp[0] - got_lp[1] == pytest.approx(lp_t[kept[0]] - lp_t[kept[1]], rel=1e-9)
    total = torch.logsumexp(torch.cat([out.logprobs, out.log_tail.unsqueeze(-1)], -1), -1)
    torch.testing.assert_close(total, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)


def test_retempering_to_the_same_temperature_is_the_identity():
    sig = SparseSignal.from_logits_topk(ref.random_logits((3,), 9, 11), 4, 2.0)
    assert sig.at_temperature(2.0) is sig
    with pytest.raises(ValueError, match="temperature"):
        sig.at_temperature(0.0)


# ------------------------------------------------------------------------ bucket functions


def test_kept_mask_marks_kept_ids_and_ignores_unused_slots():
    ids = torch.tensor([[3, -1, 0], [-1, -1, -1]])
    mask = kept_mask(ids, 5)
    assert mask.tolist() == [[True, False, False, True, False], [False] * 5]


@pytest.mark.parametrize("k", [1, 3, 7])
def test_student_buckets_collapse_onto_kept_ids_plus_tail(k):
    vocab = 7
    z = ref.random_logits((4,), vocab, 12)
    s = ref.random_logits((4,), vocab, 13)
    sig = SparseSignal.from_logits_topk(z, k)
    got = student_buckets(torch.log_softmax(s, -1), sig.ids)
    from_logits = student_buckets_from_logits(s, sig.ids)
    torch.testing.assert_close(from_logits, got, rtol=1e-12, atol=1e-12)
    for i, (zrow, srow) in enumerate(zip(ref.rows(z), ref.rows(s), strict=True)):
        kept = ref.topk_ids(ref.softmax_row(zrow, 1.0), k)
        expected = ref.buckets(ref.softmax_row(srow, 1.0), kept)
        assert got[i].exp().tolist() == pytest.approx(expected, rel=1e-10, abs=1e-300)
    tb = teacher_buckets(sig)
    assert tb.shape == (4, k + 1)
    torch.testing.assert_close(tb.exp().sum(-1), torch.ones(4, dtype=torch.float64))
    if k == vocab:  # nothing left for the tail on either side, with a NaN-free gradient
        assert torch.isneginf(got[:, -1]).all() and torch.isneginf(tb[:, -1]).all()
        s_leaf = torch.log_softmax(s, -1).requires_grad_(True)
        student_buckets(s_leaf, sig.ids)[:, :-1].exp().sum().backward()
        assert torch.isfinite(s_leaf.grad).all()


# ------------------------------------------------------------- sparse k = V equals dense


@FAST
@given(
    seed=st.integers(0, 10_000),
    vocab=st.integers(2, 16),
    t=st.sampled_from(TEMPS),
    t0=st.sampled_from(TEMPS),
    div=st.sampled_from(DIVERGENCES),
    masked=st.booleans(),
)
def test_sparse_with_all_ids_equals_dense_loss_and_gradient(seed, vocab, t, t0, div, masked):
    s = ref.random_logits((2, 3), vocab, seed).requires_grad_(True)
    te = ref.random_logits((2, 3), vocab, seed + 1)
    y = ref.random_labels((2, 3), vocab, seed + 2) if masked else None
    kw = {"kd_temperature": t, "divergence": div, "beta": 0.3, "skew_alpha": 0.2}
    dense = kdistill.kd_loss(s, te, y, **kw)
    (g_dense,) = torch.autograd.grad(dense, s)
    sig = _permute(SparseSignal.from_logits_topk(te, vocab, t0), seed)  # order must not matter
    sparse = kdistill.kd_loss(s, sig, y, **kw)
    (g_sparse,) = torch.autograd.grad(sparse, s)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_sparse_with_all_ids_equals_every_divergence_directly(div):
    """k = V through kd_sums' bucket path equals the dense divergence per position."""
    te, s = ref.random_logits((6,), 9, 14), ref.random_logits((6,), 9, 15)
    sig = SparseSignal.from_logits_topk(te, 9, 2.0)
    for hard in (0.0, 0.4):
        y = torch.tensor([0, 1, 2, 3, 4, -100])
        a = kdistill.kd_loss(
            s, sig, y, kd_temperature=2.0, divergence=div, hard_weight=hard, soft_weight=1.0
        )
        b = kdistill.kd_loss(
            s, te, y, kd_temperature=2.0, divergence=div, hard_weight=hard, soft_weight=1.0
        )
        assert a.item() == pytest.approx(b.item(), rel=1e-10)


# ------------------------------------------------------------------------- the tail bucket


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("k", [1, 4])
def test_sparse_loss_with_tail_equals_the_k_plus_one_bucket_reference(div, t, k):
    vocab = 10
    s, te = ref.random_logits((2, 3), vocab, 16), ref.random_logits((2, 3), vocab, 17)
    y = ref.random_labels((2, 3), vocab, 18)
    y[0, 0] = 2
    sig = SparseSignal.from_logits_topk(te, k, t)
    kw = {"kd_temperature": t, "divergence": div, "soft_weight": 0.8, "hard_weight": 0.2}
    got = kdistill.kd_loss(s, sig, y, beta=0.3, skew_alpha=0.2, **kw)
    expected = ref.kd_loss_ref(
        s,
        te,
        y,
        t=t,
        div=div,
        soft_weight=0.8,
        hard_weight=0.2,
        beta=0.3,
        alpha=0.2,
        teacher_topk=k,
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # it is not the dense loss ...
    dense = kdistill.kd_loss(s, te, y, beta=0.3, skew_alpha=0.2, **kw)
    assert abs(dense.item() - got.item()) > 1e-6
    # ... nor the loss with the tail dropped (kept ids renormalised, no tail bucket)
    dropped = SparseSignal(
        sig.ids,
        torch.log_softmax(sig.logprobs, -1),
        torch.full_like(sig.log_tail, NEG_INF),
        vocab,
        t,
    )
    other = kdistill.kd_loss(s, dropped, y, beta=0.3, skew_alpha=0.2, **kw)
    assert other.item() != pytest.approx(got.item(), rel=1e-06)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_sparse_made_at_another_temperature_uses_the_retempered_buckets(div):
    """A k < V signal cached at T0 = 1, trained at T = 2: teacher buckets re-tempered with the
    uniform tail model, student buckets at T over the same ids."""
    vocab, k, t0, t = 8, 3, 1.0, 2.0
    s, te = ref.random_logits((4,), vocab, 19), ref.random_logits((4,), vocab, 20)
    sig = SparseSignal.from_logits_topk(te, k, t0)
    got = kdistill.kd_loss(s, sig, None, kd_temperature=t, divergence=div, soft_weight=1.0)
    total = 0.0
    for zrow, srow in zip(ref.rows(te), ref.rows(s), strict=True):
        p0 = ref.softmax_row(zrow, t0)
        kept = ref.topk_ids(p0, k)
        probs, tail = ref.retemper_sparse(
            [p0[j] for j in kept], ref.buckets(p0, kept)[-1], vocab, t0, t
        )
        q = ref.buckets(ref.softmax_row(srow, t), kept)
        total += ref.divergence(div, [*probs, tail], q)
    assert got.item() == pytest.approx(t * t * total / 4, rel=TAIL_RTOL)


# ------------------------------------------------------------------------- unused slots


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("front", [False, True])
def test_unused_slots_change_nothing(div, front):
    s = ref.random_logits((3,), 8, 21).requires_grad_(True)
    te = ref.random_logits((3,), 8, 22)
    sig = SparseSignal.from_logits_topk(te, 3, 1.5)
    padded = _pad(sig, 2, front=front)
    y = torch.tensor([1, -100, 4])
    kw = {"kd_temperature": 2.0, "divergence": div, "beta": 0.3, "skew_alpha": 0.2}
    a = kdistill.kd_loss(s, sig, y, **kw)
    (ga,) = torch.autograd.grad(a, s)
    b = kdistill.kd_loss(s, padded, y, **kw)
    (gb,) = torch.autograd.grad(b, s)
    assert b.item() == pytest.approx(a.item(), rel=1e-12)
    assert torch.isfinite(gb).all()
    torch.testing.assert_close(gb, ga, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(padded.to_dense(), sig.to_dense(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_position_with_only_unused_slots_is_one_tail_bucket(div):
    """No kept id at all: teacher and student are both 'everything' -> divergence 0."""
    s = ref.random_logits((2,), 6, 23).requires_grad_(True)
    sig = SparseSignal(
        torch.full((2, 3), -1),
        torch.full((2, 3), NEG_INF, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
        6,
        1.0,
    )
    loss = kdistill.kd_loss(s, sig, None, kd_temperature=2.0, divergence=div)
    (g,) = torch.autograd.grad(loss, s)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(g).all() and g.abs().max() <= 1e-12
    dense = sig.to_dense()
    torch.testing.assert_close(dense.exp(), torch.full((2, 6), 1 / 6, dtype=torch.float64))
