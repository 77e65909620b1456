"""Cross-vocabulary targets (mapped KD, ULD) against float64 references and properties."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.losses.chunked import chunked_kd_loss
from kdistill.losses.cross_vocab import (
    CrossVocabTeacher,
    VocabMap,
    cross_targets,
    mapped_share,
    mapped_signal,
    sorted_signal,
    uld,
)
from kdistill.losses.objective import combine, kd_loss, kd_sums
from tests.unit import reference as ref

V_T, V_S = 13, 9
# teacher ids -> student ids: two teacher ids onto student 2, three unmapped, student ids
# 5 and 8 reached by no teacher id (they live in the tail bucket)
T2S = [0, 1, 2, 2, 3, 4, -1, 6, 7, -1, 1, -1, 3]


def _logits(shape, vocab, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, vocab, generator=g, dtype=torch.float64) * scale


def test_mapped_signal_matches_the_float64_reference_and_reports_the_mapped_share():
    vmap = VocabMap.from_pairs(T2S, V_S)
    kept = vmap.student_ids.tolist()
    assert kept == [0, 1, 2, 3, 4, 6, 7]
    z = _logits((5,), V_T, 0)
    for temp in (1.0, 2.5):
        sig = cross_targets(z, objective="mapped", kd_temperature=temp, vmap=vmap)
        assert sig.made_at_temperature == temp
        for r, row in enumerate(ref.rows(z)):
            want = ref.mapped_buckets(ref.softmax_row(row, temp), T2S, kept)
            got = [*sig.logprobs[r].exp().tolist(), math.exp(float(sig.log_tail[r]))]
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
            assert float(mapped_share(sig)[r]) == pytest.approx(1 - want[-1], rel=1e-12)


@pytest.mark.parametrize("divergence", ref.DIVERGENCE_NAMES)
def test_mapped_kd_matches_the_bucket_reference_for_every_divergence(divergence):
    vmap = VocabMap.from_pairs(T2S, V_S)
    kept = vmap.student_ids.tolist()
    z_t, z_s = _logits((6,), V_T, 1), _logits((6,), V_S, 2)
    temp = 2.0
    sig = cross_targets(z_t, objective="mapped", kd_temperature=temp, vmap=vmap)
    sums = kd_sums(z_s, sig, None, kd_temperature=temp, divergence=divergence)
    want = 0.0
    for row_t, row_s in zip(ref.rows(z_t), ref.rows(z_s), strict=True):
        p_t = ref.mapped_buckets(ref.softmax_row(row_t, temp), T2S, kept)
        q = ref.softmax_row(row_s, temp)
        p_s = [q[i] for i in kept] + [sum(q[i] for i in range(V_S) if i not in kept)]
        want += ref.divergence(divergence, p_t, p_s)
    assert float(sums.soft_sum) == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd"])
def test_identical_vocabularies_give_exactly_todays_loss(divergence):
    vmap = VocabMap.from_pairs(list(range(V_S)), V_S)
    z_t, z_s = _logits((2, 5), V_S, 3), _logits((2, 5), V_S, 4)
    labels = torch.randint(0, V_S, (2, 5), generator=torch.Generator().manual_seed(5))
    labels[0, :2] = -100
    temp = 1.7
    sig = cross_targets(z_t, objective="mapped", kd_temperature=temp, vmap=vmap)
    assert bool(torch.isneginf(sig.log_tail).all())  # nothing unmapped
    args = dict(kd_temperature=temp, soft_weight=0.7, hard_weight=0.3, divergence=divergence)
    mapped = kd_loss(z_s, sig, labels, **args)
    today = kd_loss(z_s, z_t, labels, **args)
    assert float(mapped) == pytest.approx(float(today), rel=1e-12, abs=1e-14)


def test_mapped_signal_keeps_rows_whose_mass_is_far_below_fp32_range():
    vmap = VocabMap.from_pairs(T2S, V_S)
    z = torch.full((1, V_T), -300.0)
    z[0, 0] = 0.0  # every other id has probability e^-300, far below fp32's smallest
    sig = mapped_signal(torch.log_softmax(z.float(), -1), vmap, 1.0)
    assert torch.isfinite(sig.logprobs[0, 0]) and float(sig.logprobs[0, 0]) == pytest.approx(0.0)
    assert not bool(torch.isnan(sig.logprobs).any())


def test_uld_matches_the_float64_reference_for_either_larger_vocabulary():
    temp = 1.5
    for v_t, v_s in ((V_T, V_S), (V_S, V_T)):
        z_t, z_s = _logits((4,), v_t, 6), _logits((4,), v_s, 7)
        sig = cross_targets(z_t, objective="uld", kd_temperature=temp, student_vocab=v_s)
        got = uld(sig, torch.log_softmax(z_s / temp, -1))
        for r, (row_t, row_s) in enumerate(zip(ref.rows(z_t), ref.rows(z_s), strict=True)):
            want = ref.uld_ref(ref.softmax_row(row_s, temp), ref.softmax_row(row_t, temp))
            assert float(got[r]) == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_uld_properties_zero_for_a_permutation_symmetric_bounded_and_gradcheck():
    z = _logits((3,), V_S, 8)
    lp = torch.log_softmax(z, -1)
    perm = torch.randperm(V_S, generator=torch.Generator().manual_seed(0))
    same = uld(sorted_signal(lp[:, perm], V_S, 1.0), lp)
    assert torch.allclose(same, torch.zeros(3, dtype=torch.float64), atol=1e-15)
    other = torch.log_softmax(_logits((3,), V_S, 9), -1)
    ab = uld(sorted_signal(lp, V_S, 1.0), other)
    ba = uld(sorted_signal(other, V_S, 1.0), lp)
    assert torch.allclose(ab, ba, atol=1e-14)
    assert bool((ab > 0).all()) and bool((ab <= 2.0).all())
    target = sorted_signal(torch.log_softmax(_logits((3,), V_T, 10), -1), V_S, 1.0)
    zs = _logits((3,), V_S, 11).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: uld(target, torch.log_softmax(x, -1)).sum(), (zs,))


@pytest.mark.parametrize("objective", ["mapped", "uld"])
def test_chunked_cross_vocab_loss_equals_the_full_logit_loss(objective):
    n, h_s, h_t = 23, 5, 7
    g = torch.Generator().manual_seed(12)
    hs = torch.randn(n, h_s, generator=g, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(V_S, h_s, generator=g, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(n, h_t, generator=g, dtype=torch.float64)
    wt = torch.randn(V_T, h_t, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V_S, (n,), generator=g)
    labels[3:9] = -100
    vmap = VocabMap.from_pairs(T2S, V_S) if objective == "mapped" else None
    args = dict(kd_temperature=2.0, soft_weight=0.7, hard_weight=0.3)
    teacher = CrossVocabTeacher(ht, wt, objective, V_S, vmap=vmap)
    loss, sums = chunked_kd_loss(hs, ws, teacher, labels, chunk_size=4, **args)
    g_h, g_w = torch.autograd.grad(loss, (hs, ws))
    full_target = cross_targets(
        ht @ wt.T, objective=objective, kd_temperature=2.0, vmap=vmap, student_vocab=V_S
    )
    full = kd_loss(hs @ ws.T, full_target, labels, **args)
    f_h, f_w = torch.autograd.grad(full, (hs, ws))
    assert float(loss.detach()) == pytest.approx(float(full.detach()), rel=1e-12)
    assert torch.allclose(g_h, f_h, rtol=1e-10, atol=1e-12)
    assert torch.allclose(g_w, f_w, rtol=1e-10, atol=1e-12)
    assert int(sums.count) == int((labels != -100).sum())


@pytest.mark.parametrize("objective", ["mapped", "uld"])
def test_all_masked_cross_vocab_batch_gives_zero_not_nan(objective):
    z_t, z_s = _logits((4,), V_T, 13), _logits((4,), V_S, 14).requires_grad_(True)
    vmap = VocabMap.from_pairs(T2S, V_S)
    sig = cross_targets(z_t, objective=objective, kd_temperature=1.0, vmap=vmap, student_vocab=V_S)
    labels = torch.full((4,), -100)
    sums = kd_sums(z_s, sig, labels)
    loss = combine(sums, soft_weight=0.5, hard_weight=0.5, kd_temperature=1.0)
    (grad,) = torch.autograd.grad(loss, z_s)
    assert float(loss.detach()) == 0.0 and not bool(torch.isnan(grad).any())


def test_a_sorted_target_refuses_another_temperature():
    sig = sorted_signal(torch.log_softmax(_logits((2,), V_T, 15), -1), V_S, 2.0)
    with pytest.raises(ValueError, match="cannot be re-tempered"):
        kd_sums(_logits((2,), V_S, 16), sig, None, kd_temperature=1.0)
