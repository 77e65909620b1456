"""The pure KD core against float64 references and properties (issue: foundation)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kdistill
from kdistill.losses import DIVERGENCES, combine, kd_sums
from kdistill.losses.divergences import get_divergence
from kdistill.signals import DenseSignal, SparseSignal
from tests.unit.reference import divergence, kd_loss_ref, random_logits, softmax_row

TEMPS = [0.5, 1.0, 2.0, 4.0, 20.0]
SHAPES = [(7,), (3, 5), (2, 4)]


def _labels(shape, vocab, seed, masked_fraction=0.3):
    g = torch.Generator().manual_seed(seed + 99)
    y = torch.randint(0, vocab, shape, generator=g)
    mask = torch.rand(shape, generator=g) < masked_fraction
    return torch.where(mask, torch.full_like(y, -100), y)


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("t", TEMPS)
def test_divergences_match_reference(div, t):
    s = random_logits((6,), 11, seed=1)
    te = random_logits((6,), 11, seed=2)
    f = get_divergence(div, beta=0.3, skew_alpha=0.2)
    got = f(torch.log_softmax(te / t, -1), torch.log_softmax(s / t, -1))
    for i in range(6):
        p = softmax_row(te[i].tolist(), t)
        q = softmax_row(s[i].tolist(), t)
        assert got[i].item() == pytest.approx(divergence(div, p, q, 0.3, 0.2), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", TEMPS)
@pytest.mark.parametrize("masked", [False, True])
def test_kd_loss_matches_reference(div, shape, t, masked):
    vocab = 13
    s = random_logits(shape, vocab, seed=3)
    te = random_logits(shape, vocab, seed=4)
    y = _labels(shape, vocab, 5, masked_fraction=0.4 if masked else 0.0)
    if masked:
        y.view(-1)[0] = 1  # at least one valid position
    got = kdistill.kd_loss(
        s,
        te,
        y,
        kd_temperature=t,
        soft_weight=0.7,
        hard_weight=0.3,
        divergence=div,
        beta=0.3,
        skew_alpha=0.2,
    )
    ref = kd_loss_ref(s, te, y, t=t, soft_weight=0.7, hard_weight=0.3, div=div, beta=0.3, alpha=0.2)
    assert got.item() == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_labels_none_counts_every_position_and_skips_hard(div):
    s, te = random_logits((2, 3), 9, 6), random_logits((2, 3), 9, 7)
    got = kdistill.kd_loss(s, te, None, kd_temperature=2.0, divergence=div)
    ref = kd_loss_ref(s, te, None, t=2.0, soft_weight=0.5, hard_weight=0.5, div=div)
    assert got.item() == pytest.approx(ref, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    vocab=st.integers(2, 40),
    t=st.sampled_from(TEMPS),
    div=st.sampled_from(DIVERGENCES),
    beta=st.floats(0, 1),
    alpha=st.floats(0, 1),
)
def test_divergence_nonnegative_and_zero_on_equal(seed, vocab, t, div, beta, alpha):
    s = torch.log_softmax(random_logits((5,), vocab, seed) / t, -1)
    te = torch.log_softmax(random_logits((5,), vocab, seed + 1) / t, -1)
    f = get_divergence(div, beta=beta, skew_alpha=alpha)
    assert (f(te, s) >= -1e-10).all()
    assert f(te, te).abs().max() < 1e-10


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s = torch.log_softmax(random_logits((9,), 17, 8), -1)
    te = torch.log_softmax(random_logits((9,), 17, 9), -1)
    fwd, rev = get_divergence("forward_kl"), get_divergence("reverse_kl")
    assert torch.equal(get_divergence("jsd", beta=0.0)(te, s), fwd(te, s))
    assert torch.equal(get_divergence("jsd", beta=1.0)(te, s), rev(te, s))


@pytest.mark.parametrize("t", TEMPS)
def test_t_squared_scaling_is_exact(t):
    s, te = random_logits((4, 3), 10, 10), random_logits((4, 3), 10, 11)
    y = _labels((4, 3), 10, 12)
    on = kdistill.kd_loss(s, te, y, kd_temperature=t, soft_weight=1.0, hard_weight=0.0)
    off = kdistill.kd_loss(
        s, te, y, kd_temperature=t, soft_weight=1.0, hard_weight=0.0, scale_by_t2=False
    )
    assert on.item() == pytest.approx(t * t * off.item(), rel=1e-12)


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_sparse_with_all_ids_equals_dense(div, t):
    s, te = random_logits((3, 4), 12, 13), random_logits((3, 4), 12, 14)
    y = _labels((3, 4), 12, 15)
    dense = kdistill.kd_loss(s, te, y, kd_temperature=t, divergence=div)
    sparse = kdistill.kd_loss(
        s, SparseSignal.from_logits_topk(te, 12, t), y, kd_temperature=t, divergence=div
    )
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-9)
    # a shuffled id order is the same distribution
    sig = SparseSignal.from_logits_topk(te, 12, t)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    shuffled = SparseSignal(sig.ids[..., perm], sig.logprobs[..., perm], sig.log_tail, 12, t)
    again = kdistill.kd_loss(s, shuffled, y, kd_temperature=t, divergence=div)
    assert again.item() == pytest.approx(dense.item(), rel=1e-9)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_sparse_tail_bucket_matches_reference(div):
    """k < V: the divergence is taken over K kept ids + one 'everything else' bucket."""
    s, te = random_logits((5,), 10, 16), random_logits((5,), 10, 17)
    sig = SparseSignal.from_logits_topk(te, 4, 1.0)
    got = kdistill.kd_loss(s, sig, None, soft_weight=1.0, divergence=div, beta=0.3, skew_alpha=0.2)
    total = 0.0
    for i in range(5):
        p = softmax_row(te[i].tolist(), 1.0)
        q = softmax_row(s[i].tolist(), 1.0)
        kept = sig.ids[i].tolist()
        pb = [p[j] for j in kept] + [1 - sum(p[j] for j in kept)]
        qb = [q[j] for j in kept] + [1 - sum(q[j] for j in kept)]
        total += divergence(div, pb, qb, 0.3, 0.2)
    assert got.item() == pytest.approx(total / 5, rel=1e-6)
    # the tail matters: dropping it (renormalising the kept ids) gives a different loss
    renorm = SparseSignal(
        sig.ids,
        torch.log_softmax(sig.logprobs, -1),
        torch.full_like(sig.log_tail, float("-inf")),
        10,
        1.0,
    )
    other = kdistill.kd_loss(
        s, renorm, None, soft_weight=1.0, divergence=div, beta=0.3, skew_alpha=0.2
    )
    assert abs(other.item() - got.item()) > 1e-6


def test_sparse_unused_slots_are_ignored():
    s, te = random_logits((3,), 8, 18), random_logits((3,), 8, 19)
    sig = SparseSignal.from_logits_topk(te, 3, 1.0)
    pad_ids = torch.cat([sig.ids, torch.full((3, 2), -1)], -1)
    pad_lp = torch.cat([sig.logprobs, torch.full((3, 2), float("-inf"), dtype=torch.float64)], -1)
    padded = SparseSignal(pad_ids, pad_lp, sig.log_tail, 8, 1.0)
    for div in DIVERGENCES:
        a = kdistill.kd_loss(s, sig, None, soft_weight=1.0, divergence=div)
        b = kdistill.kd_loss(s, padded, None, soft_weight=1.0, divergence=div)
        assert b.item() == pytest.approx(a.item(), rel=1e-12), div


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("sparse", [False, True])
def test_gradcheck_float64(div, sparse):
    s = random_logits((2, 3), 6, 20).requires_grad_(True)
    te = random_logits((2, 3), 6, 21)
    y = torch.tensor([[1, -100, 3], [0, 5, -100]])
    teacher = SparseSignal.from_logits_topk(te, 3, 1.0) if sparse else te
    assert torch.autograd.gradcheck(
        lambda x: kdistill.kd_loss(
            x,
            teacher,
            y,
            kd_temperature=2.0,
            soft_weight=0.6,
            hard_weight=0.4,
            divergence=div,
            beta=0.3,
        ),
        (s,),
    )


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("sparse", [False, True])
def test_all_masked_batch_is_zero_with_zero_gradient(div, sparse):
    s = random_logits((2, 4), 9, 22, dtype=torch.float32).requires_grad_(True)
    te = random_logits((2, 4), 9, 23, dtype=torch.float32)
    teacher = SparseSignal.from_logits_topk(te, 4, 1.0) if sparse else te
    y = torch.full((2, 4), -100)
    loss = kdistill.kd_loss(s, teacher, y, kd_temperature=3.0, divergence=div)
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert torch.isfinite(s.grad).all() and s.grad.abs().max() == 0


# Mixed precision: bf16/fp16 logits up to 1e4 in magnitude. Tolerances (stated): the loss is
# computed in fp32 from the *same* low-precision values, so it must equal the fp32 reference on
# the upcast values to rel 1e-5; gradients (returned in the low-precision dtype) to the
# dtype's resolution: rel 2e-2 for bf16 (8-bit mantissa), 2e-3 for fp16, atol 1e-6.
@pytest.mark.parametrize("dtype,grad_rtol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("t", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("div", DIVERGENCES)
def test_low_precision_large_logits(dtype, grad_rtol, t, div):
    g = torch.Generator().manual_seed(24)
    base_s = (torch.rand(3, 4, 50, generator=g) * 2 - 1) * 1e4
    base_t = (torch.rand(3, 4, 50, generator=g) * 2 - 1) * 1e4
    y = _labels((3, 4), 50, 25)
    s_lo = base_s.to(dtype).requires_grad_(True)
    t_lo = base_t.to(dtype)
    loss = kdistill.kd_loss(s_lo, t_lo, y, kd_temperature=t, divergence=div)
    loss.backward()
    s32 = s_lo.detach().float().requires_grad_(True)
    ref = kdistill.kd_loss(s32, t_lo.float(), y, kd_temperature=t, divergence=div)
    ref.backward()
    assert torch.isfinite(loss) and torch.isfinite(s_lo.grad.float()).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(
        s_lo.grad.float(), s32.grad.to(dtype).float(), rtol=grad_rtol, atol=1e-6
    )


def test_gradient_accumulation_invariance_with_uneven_counts():
    """N micro-batches of 1, each divided by the *global* count, sum to the big batch."""
    vocab, n = 11, 4
    s = random_logits((n, 6), vocab, 26, dtype=torch.float32).requires_grad_(True)
    te = random_logits((n, 6), vocab, 27, dtype=torch.float32)
    y = _labels((n, 6), vocab, 28)
    y[0, :5] = -100  # uneven valid counts: 1, ~4, ~4, ~4
    y[2, :] = torch.arange(6)
    kw = {"kd_temperature": 2.0, "divergence": "jsd"}
    big = kdistill.kd_loss(s, te, y, soft_weight=0.7, hard_weight=0.3, **kw)
    (g_big,) = torch.autograd.grad(big, s)
    total = (y != -100).sum()
    g_acc = torch.zeros_like(s)
    g_naive = torch.zeros_like(s)
    for i in range(n):
        sums = kd_sums(s[i : i + 1], te[i : i + 1], y[i : i + 1], **kw)
        part = combine(sums, soft_weight=0.7, hard_weight=0.3, kd_temperature=2.0, num_items=total)
        g_acc += torch.autograd.grad(part, s, retain_graph=True)[0]
        own = combine(sums, soft_weight=0.7, hard_weight=0.3, kd_temperature=2.0)
        g_naive += torch.autograd.grad(own, s)[0] / n
    torch.testing.assert_close(g_acc, g_big, rtol=1e-5, atol=1e-7)
    assert (g_naive - g_big).abs().max() > 1e-3  # per-micro-batch means would be wrong


def test_dense_signal_retempering_is_exact():
    z = random_logits((4,), 15, 29)
    sig = DenseSignal.from_logits(z, 0.5)
    for t in TEMPS:
        torch.testing.assert_close(
            sig.at_temperature(t), torch.log_softmax(z / t, -1), rtol=1e-10, atol=1e-10
        )
    s = random_logits((4,), 15, 30)
    assert kdistill.kd_loss(s, sig, None, kd_temperature=2.0).item() == pytest.approx(
        kdistill.kd_loss(s, z, None, kd_temperature=2.0).item(), rel=1e-10
    )


def test_sparse_retempering_exact_without_tail():
    z = random_logits((3,), 10, 31)
    sig = SparseSignal.from_logits_topk(z, 10, 1.0).at_temperature(4.0)
    torch.testing.assert_close(sig.to_dense(), torch.log_softmax(z / 4.0, -1), rtol=1e-9, atol=1e-9)
    partial = SparseSignal.from_logits_topk(z, 4, 1.0).at_temperature(2.0)
    assert torch.allclose(partial.to_dense().exp().sum(-1), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"kd_temperature": 0.0}, "kd_temperature"),
        ({"kd_temperature": -1.0}, "kd_temperature"),
        ({"soft_weight": -0.1}, "soft_weight"),
        ({"hard_weight": -1.0}, "hard_weight"),
        ({"soft_weight": 0.0, "hard_weight": 0.0}, "soft_weight and hard_weight"),
        ({"beta": 1.5, "divergence": "jsd"}, "beta"),
        ({"skew_alpha": -0.2, "divergence": "skew_kl"}, "skew_alpha"),
        ({"divergence": "kl"}, "unknown divergence"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    s, te = random_logits((2,), 5, 32), random_logits((2,), 5, 33)
    with pytest.raises(ValueError, match=name):
        kdistill.kd_loss(s, te, torch.tensor([1, 2]), **kwargs)


def test_shape_vocab_and_label_mismatch():
    s = random_logits((2, 3), 5, 34)
    with pytest.raises(ValueError, match="vocab mismatch"):
        kdistill.kd_loss(s, random_logits((2, 3), 6, 35))
    with pytest.raises(ValueError, match="shape mismatch"):
        kdistill.kd_loss(s, random_logits((3, 2), 5, 36))
    with pytest.raises(ValueError, match="labels shape"):
        kdistill.kd_loss(s, random_logits((2, 3), 5, 37), torch.zeros(3, dtype=torch.long))


def test_public_api_signature_defaults():
    s, te = random_logits((4,), 7, 38), random_logits((4,), 7, 39)
    y = torch.tensor([0, 1, 2, 3])
    explicit = kdistill.kd_loss(
        s,
        te,
        y,
        kd_temperature=1.0,
        soft_weight=0.5,
        hard_weight=0.5,
        divergence="forward_kl",
        beta=0.5,
        skew_alpha=0.1,
        scale_by_t2=True,
        ignore_index=-100,
    )
    assert kdistill.kd_loss(s, te, y).item() == explicit.item()
    assert list(itertools.islice(DIVERGENCES, 6)) == [
        "forward_kl",
        "reverse_kl",
        "jsd",
        "skew_kl",
        "skew_reverse_kl",
        "tvd",
    ]
