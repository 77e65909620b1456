"""The KD objective (kdistill.kd_loss, kd_sums, combine) against the float64 loop reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kdistill
from kdistill.losses import DIVERGENCES, KDSums, combine, kd_sums
from kdistill.signals import DenseSignal, SparseSignal
from tests.unit import reference as ref

TEMPS = [0.5, 1.0, 2.0, 4.0, 20.0]
SHAPES = [((7,), 5), ((3, 5), 17), ((2, 4, 6), 50)]
FAST = settings(max_examples=40, deadline=None)
# non-default knobs so a swapped or ignored argument shows up
KNOBS = {"soft_weight": 0.7, "hard_weight": 0.3, "beta": 0.3, "skew_alpha": 0.2}
REF_KNOBS = {"soft_weight": 0.7, "hard_weight": 0.3, "beta": 0.3, "alpha": 0.2}
_W = {"soft_weight": 0.5, "hard_weight": 0.5}  # kd_loss's default weights


def _labels(shape, vocab, seed, mode):
    """mode: 'none' -> None, 'all' -> every position valid, 'masked' -> ~40% are -100."""
    if mode == "none":
        return None
    y = ref.random_labels(shape, vocab, seed, masked_fraction=0.4 if mode == "masked" else 0.0)
    if mode == "masked":
        y.view(-1)[0] = 1  # at least one valid position
        y.view(-1)[-1] = -100  # and at least one masked one
    return y


# ------------------------------------------------------------------------ against reference


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("shape,vocab", SHAPES)
@pytest.mark.parametrize("t", TEMPS)
@pytest.mark.parametrize("mode", ["none", "all", "masked"])
def test_kd_loss_matches_reference(div, shape, vocab, t, mode):
    seed = 11 * len(shape) + vocab
    s = ref.random_logits(shape, vocab, seed)
    te = ref.random_logits(shape, vocab, seed + 1)
    y = _labels(shape, vocab, seed + 2, mode)
    got = kdistill.kd_loss(s, te, y, kd_temperature=t, divergence=div, **KNOBS)
    expected = ref.kd_loss_ref(s, te, y, t=t, div=div, **REF_KNOBS)
    assert got.shape == () and got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("t", [1.0, 3.0])  # T = 1 and T != 1 take different hard-term paths
def test_hard_term_is_cross_entropy_at_temperature_one(t):
    s, te = ref.random_logits((4, 5), 9, 1), ref.random_logits((4, 5), 9, 2)
    y = _labels((4, 5), 9, 3, "masked")
    hard = kdistill.kd_loss(s, te, y, kd_temperature=t, soft_weight=0.0, hard_weight=1.0)
    ce = F.cross_entropy(s.reshape(-1, 9), y.reshape(-1), ignore_index=-100)
    assert hard.item() == pytest.approx(ce.item(), rel=1e-12)
    expected = ref.kd_loss_ref(s, te, y, t=t, soft_weight=0.0, hard_weight=1.0, div="tvd")
    assert hard.item() == pytest.approx(expected, rel=1e-12)
    # not the cross-entropy of the tempered student
    tempered = F.cross_entropy(s.reshape(-1, 9) / 3.0, y.reshape(-1), ignore_index=-100)
    assert abs(hard.item() - tempered.item()) > 1e-3


def test_weights_combine_linearly():
    s, te = ref.random_logits((3, 4), 8, 4), ref.random_logits((3, 4), 8, 5)
    y = _labels((3, 4), 8, 6, "masked")
    kw = {"kd_temperature": 2.0, "divergence": "jsd"}
    soft = kdistill.kd_loss(s, te, y, soft_weight=1.0, hard_weight=0.0, **kw)
    hard = kdistill.kd_loss(s, te, y, soft_weight=0.0, hard_weight=1.0, **kw)
    both = kdistill.kd_loss(s, te, y, soft_weight=0.25, hard_weight=1.5, **kw)
    assert both.item() == pytest.approx(0.25 * soft.item() + 1.5 * hard.item(), rel=1e-12)


def test_teacher_as_dense_signal_equals_raw_logits():
    s, te = ref.random_logits((3, 4), 10, 7), ref.random_logits((3, 4), 10, 8)
    y = _labels((3, 4), 10, 9, "masked")
    for made_at in (1.0, 0.5, 2.0):
        for div in DIVERGENCES:
            a = kdistill.kd_loss(s, te, y, kd_temperature=2.0, divergence=div)
            b = kdistill.kd_loss(
                s, DenseSignal.from_logits(te, made_at), y, kd_temperature=2.0, divergence=div
            )
            assert b.item() == pytest.approx(a.item(), rel=1e-10), (made_at, div)


def test_single_position_without_leading_dims():
    s, te = ref.random_logits((), 6, 10), ref.random_logits((), 6, 11)
    for t in (1.0, 2.0):
        got = kdistill.kd_loss(s, te, torch.tensor(3), kd_temperature=t, divergence="jsd")
        expected = ref.kd_loss_ref(s, te, torch.tensor(3), t=t, div="jsd", **_W)
        assert got.item() == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_masked_positions_are_excluded_from_both_terms(div, t):
    s, te = ref.random_logits((3, 6), 7, 12), ref.random_logits((3, 6), 7, 13)
    y = _labels((3, 6), 7, 14, "masked")
    masked = y == -100
    base = kdistill.kd_loss(s, te, y, kd_temperature=t, divergence=div, **KNOBS)
    # change student and teacher arbitrarily where masked: the loss must not move at all
    noise = ref.random_logits((3, 6), 7, 15, scale=50.0)
    s2 = torch.where(masked.unsqueeze(-1), noise, s).requires_grad_(True)
    te2 = torch.where(masked.unsqueeze(-1), -noise, te)
    moved = kdistill.kd_loss(s2, te2, y, kd_temperature=t, divergence=div, **KNOBS)
    assert moved.item() == base.item()
    moved.backward()
    assert s2.grad[masked].abs().max() == 0
    assert s2.grad[~masked].abs().max() > 0
    # the mean is over valid positions only: equals the loss on the valid rows alone
    alone = kdistill.kd_loss(
        s[~masked], te[~masked], y[~masked], kd_temperature=t, divergence=div, **KNOBS
    )
    assert alone.item() == pytest.approx(base.item(), rel=1e-12)


@pytest.mark.parametrize("ignore_index", [-1, 0, 3])
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_custom_ignore_index(ignore_index, t):
    s, te = ref.random_logits((10,), 6, 16), ref.random_logits((10,), 6, 17)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0, 3, 1, 2])
    y = torch.where(torch.arange(10) % 3 == 0, torch.full_like(y, ignore_index), y)
    got = kdistill.kd_loss(s, te, y, kd_temperature=t, ignore_index=ignore_index, **_W)
    expected = ref.kd_loss_ref(s, te, y, t=t, div="forward_kl", ignore_index=ignore_index, **_W)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_ignore_index_outside_the_vocabulary_at_temperature_one():
    s, te = ref.random_logits((4,), 5, 18), ref.random_logits((4,), 5, 19)
    y = torch.tensor([1, 5, 2, 5])
    at_two = kdistill.kd_loss(s, te, y, kd_temperature=2.0, ignore_index=5)
    assert at_two.item() == pytest.approx(
        ref.kd_loss_ref(s, te, y, t=2.0, div="forward_kl", ignore_index=5, **_W), rel=1e-10
    )
    at_one = kdistill.kd_loss(s, te, y, kd_temperature=1.0, ignore_index=5)
    assert at_one.item() == pytest.approx(
        ref.kd_loss_ref(s, te, y, t=1.0, div="forward_kl", ignore_index=5, **_W), rel=1e-10
    )


@pytest.mark.parametrize("div", DIVERGENCES)
def test_labels_none_counts_every_position_and_skips_hard(div):
    s, te = ref.random_logits((2, 3), 9, 20), ref.random_logits((2, 3), 9, 21)
    none = kdistill.kd_loss(s, te, None, kd_temperature=2.0, divergence=div, hard_weight=0.9)
    soft_only = kdistill.kd_loss(
        s,
        te,
        torch.zeros(2, 3, dtype=torch.long),
        kd_temperature=2.0,
        divergence=div,
        hard_weight=0.0,
    )
    assert none.item() == pytest.approx(soft_only.item(), rel=1e-12)
    # hard_weight is irrelevant without labels
    other = kdistill.kd_loss(s, te, None, kd_temperature=2.0, divergence=div, hard_weight=0.0)
    assert other.item() == none.item()


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("teacher_kind", ["logits", "dense_signal", "sparse_k<V", "sparse_k=V"])
@pytest.mark.parametrize("t", [1.0, 3.0])
def test_all_masked_batch_is_exactly_zero_with_zero_gradient(div, teacher_kind, t):
    s = ref.random_logits((2, 4), 9, 22, dtype=torch.float32).requires_grad_(True)
    te = ref.random_logits((2, 4), 9, 23, dtype=torch.float32)
    teacher = {
        "logits": te,
        "dense_signal": DenseSignal.from_logits(te, t),
        "sparse_k<V": SparseSignal.from_logits_topk(te, 4, t),
        "sparse_k=V": SparseSignal.from_logits_topk(te, 9, t),
    }[teacher_kind]
    y = torch.full((2, 4), -100)
    loss = kdistill.kd_loss(s, teacher, y, kd_temperature=t, divergence=div, **KNOBS)
    loss.backward()
    assert loss.item() == 0.0
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert s.grad.abs().max() == 0
    sums = kd_sums(s, teacher, y, kd_temperature=t, divergence=div)
    assert sums.count.item() == 0 and sums.soft_sum.item() == 0 and sums.hard_sum.item() == 0


def test_empty_batch_is_zero():
    s = torch.zeros(0, 5, requires_grad=True)
    for t in (1.0, 2.0):
        loss = kdistill.kd_loss(
            s, torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), kd_temperature=t
        )
        assert loss.item() == 0.0


# ----------------------------------------------------------------------------- properties


@FAST
@given(
    seed=st.integers(0, 10_000),
    t=st.floats(0.25, 25.0),
    div=st.sampled_from(DIVERGENCES),
    sparse=st.booleans(),
)
def test_t_squared_scaling_changes_the_soft_term_by_exactly_t_squared(seed, t, div, sparse):
    s, te = ref.random_logits((3, 4), 10, seed), ref.random_logits((3, 4), 10, seed + 1)
    y = ref.random_labels((3, 4), 10, seed + 2)
    y[0, 0] = 1
    teacher = SparseSignal.from_logits_topk(te, 4, t) if sparse else te
    kw = {"kd_temperature": t, "divergence": div, "soft_weight": 0.8, "hard_weight": 0.0}
    on = kdistill.kd_loss(s, teacher, y, **kw)
    off = kdistill.kd_loss(s, teacher, y, scale_by_t2=False, **kw)
    assert on.item() == pytest.approx(t * t * off.item(), rel=1e-12)
    # the hard term is never scaled by T^2
    kw_hard = {**kw, "soft_weight": 0.0, "hard_weight": 1.0}
    h_on = kdistill.kd_loss(s, teacher, y, **kw_hard)
    assert h_on.item() == kdistill.kd_loss(s, teacher, y, scale_by_t2=False, **kw_hard).item()


@FAST
@given(
    seed=st.integers(0, 10_000),
    t=st.sampled_from(TEMPS),
    div=st.sampled_from(DIVERGENCES),
    vocab=st.integers(2, 20),
)
def test_loss_nonnegative_and_soft_term_zero_when_student_equals_teacher(seed, t, div, vocab):
    s = ref.random_logits((2, 3), vocab, seed)
    y = ref.random_labels((2, 3), vocab, seed + 1)
    kw = {"kd_temperature": t, "divergence": div, "beta": 0.3, "skew_alpha": 0.2}
    assert kdistill.kd_loss(s, ref.random_logits((2, 3), vocab, seed + 2), y, **kw) >= -1e-6
    same = kdistill.kd_loss(s, s.clone() + 5.0, y, soft_weight=1.0, hard_weight=0.0, **kw)
    assert abs(same.item()) <= 1e-10  # logits shifted by a constant: the same distribution


# ---------------------------------------------------------------------------------- gradcheck


def _gradcheck_teacher(kind: str, te: torch.Tensor):
    if kind == "dense":
        return te
    if kind == "sparse_k<V":
        return SparseSignal.from_logits_topk(te, 2, 2.0)
    # k < V with two unused slots (id -1, log-prob -inf)
    sig = SparseSignal.from_logits_topk(te, 3, 2.0)
    pad_ids = torch.full((*sig.ids.shape[:-1], 2), -1)
    pad_lp = torch.full((*sig.ids.shape[:-1], 2), -math.inf, dtype=sig.logprobs.dtype)
    return SparseSignal(
        torch.cat([pad_ids, sig.ids], -1),
        torch.cat([pad_lp, sig.logprobs], -1),
        sig.log_tail,
        5,
        2.0,
    )


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("kind", ["dense", "sparse_k<V", "sparse_padded"])
def test_gradcheck_float64(div, kind):
    s = ref.random_logits((3,), 5, 24).requires_grad_(True)
    te = ref.random_logits((3,), 5, 25)
    y = torch.tensor([1, -100, 4])
    teacher = _gradcheck_teacher(kind, te)  # sparse signals are made at T0 = 2
    for t in (1.0, 2.0):  # T = 1: re-tempered teacher and the gather hard term; T = 2: direct
        assert torch.autograd.gradcheck(
            lambda x, t=t: kdistill.kd_loss(
                x, teacher, y, kd_temperature=t, divergence=div, **KNOBS
            ),
            (s,),
        )


@pytest.mark.parametrize("div", DIVERGENCES)
def test_gradient_matches_finite_differences_of_the_reference(div):
    """The analytic gradient of kd_loss equals central differences of the loop reference."""
    s = ref.random_logits((3,), 4, 26).requires_grad_(True)
    te = ref.random_logits((3,), 4, 27)
    y = torch.tensor([2, -100, 0])
    kw = {"t": 2.0, "div": div, **REF_KNOBS}
    kdistill.kd_loss(s, te, y, kd_temperature=2.0, divergence=div, **KNOBS).backward()
    h = 1e-6
    numeric = torch.zeros_like(s)
    for idx in range(s.numel()):
        plus, minus = s.detach().clone(), s.detach().clone()
        plus.view(-1)[idx] += h
        minus.view(-1)[idx] -= h
        numeric.view(-1)[idx] = (
            ref.kd_loss_ref(plus, te, y, **kw) - ref.kd_loss_ref(minus, te, y, **kw)
        ) / (2 * h)
    torch.testing.assert_close(s.grad, numeric, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------- low precision inputs

# bf16 / fp16 logits up to |1e4|. kd_loss upcasts to fp32 for all soft-label math, so:
#  * loss: equal to kd_loss on the very same values upcast to fp32 within LOSS_RTOL, and to the
#    float64 loop reference within REF_RTOL (fp32 log-softmax of |z/T| <= 2e4 keeps ~1e-3
#    absolute accuracy in each log-prob, negligible against losses of that size);
#  * gradient: the fp32 gradient rounded once to the input dtype, so within half an ulp:
#    rtol = the dtype's machine epsilon (bf16 2^-8, fp16 2^-10), atol GRAD_ATOL for fp16
#    values that flush to subnormals.
LOSS_RTOL = 1e-5
REF_RTOL, REF_ATOL = 1e-3, 1e-3
GRAD_RTOL = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-10}
GRAD_ATOL = 1e-7


def _big_logits(seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(3, 4, 40, generator=g, dtype=torch.float64) * 2 - 1) * 1e4
    x[0, 0] = 1e4  # a row of identical maximal logits: the uniform distribution
    x[0, 1, :20] = -1e4  # half the row at the extremes
    x[0, 1, 20:] = 1e4
    x[1, 0] = torch.linspace(-1e4, 1e4, 40)
    x[2, 3] = torch.randn(40, generator=g, dtype=torch.float64)  # a small-logit row
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [0.5, 1.0, 3.0, 20.0])
@pytest.mark.parametrize("div", DIVERGENCES)
def test_low_precision_large_logits(dtype, t, div):
    s_lo = _big_logits(28, dtype).requires_grad_(True)
    t_lo = _big_logits(29, dtype)
    y = ref.random_labels((3, 4), 40, 30)
    y[0, 0] = 7
    kw = {"kd_temperature": t, "divergence": div, **KNOBS}
    loss = kdistill.kd_loss(s_lo, t_lo, y, **kw)
    loss.backward()
    s32 = s_lo.detach().float().requires_grad_(True)
    ref32 = kdistill.kd_loss(s32, t_lo.float(), y, **kw)
    ref32.backward()
    assert loss.dtype == torch.float32 and s_lo.grad.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(s_lo.grad.float()).all()
    assert loss.item() == pytest.approx(ref32.item(), rel=LOSS_RTOL)
    expected64 = ref.kd_loss_ref(s_lo, t_lo, y, t=t, div=div, **REF_KNOBS)
    assert loss.item() == pytest.approx(expected64, rel=REF_RTOL, abs=REF_ATOL)
    torch.testing.assert_close(s_lo.grad.float(), s32.grad, rtol=GRAD_RTOL[dtype], atol=GRAD_ATOL)


# ---------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_gradient_accumulation_invariance_with_uneven_counts(div, sparse, t):
    """N micro-batches of one sequence, each combined with the *global* count, give the same
    gradient (and loss) as one batch of N; per-micro-batch means would not."""
    n, length, vocab = 4, 6, 11
    s = ref.random_logits((n, length), vocab, 31).requires_grad_(True)
    te = ref.random_logits((n, length), vocab, 32)
    y = ref.random_labels((n, length), vocab, 33, masked_fraction=0.0)
    y[0, :5] = -100  # valid counts per sequence: 1, 6, 3, 0
    y[2, ::2] = -100
    y[3, :] = -100
    counts = (y != -100).sum(-1).tolist()
    assert counts == [1, 6, 3, 0]
    teacher = SparseSignal.from_logits_topk(te, 4, t) if sparse else te

    def piece(i):
        if not sparse:
            return te[i : i + 1]
        return SparseSignal(
            teacher.ids[i : i + 1],
            teacher.logprobs[i : i + 1],
            teacher.log_tail[i : i + 1],
            vocab,
            t,
        )

    kw = {"kd_temperature": t, "divergence": div, "beta": 0.3, "skew_alpha": 0.2}
    weights = {"soft_weight": 0.7, "hard_weight": 0.3, "kd_temperature": t}
    big = kdistill.kd_loss(s, teacher, y, **kw, soft_weight=0.7, hard_weight=0.3)
    (g_big,) = torch.autograd.grad(big, s)
    global_count = (y != -100).sum()

    g_acc = torch.zeros_like(s)
    g_naive = torch.zeros_like(s)
    loss_acc = 0.0
    total = None
    for i in range(n):
        sums = kd_sums(s[i : i + 1], piece(i), y[i : i + 1], **kw)
        part = combine(sums, **weights, num_items=global_count)
        loss_acc += part.item()
        g_acc += torch.autograd.grad(part, s, retain_graph=True)[0]
        own = combine(sums, **weights)
        g_naive += torch.autograd.grad(own, s, retain_graph=True)[0] / n
        total = sums if total is None else total + sums
    torch.testing.assert_close(g_acc, g_big, rtol=1e-10, atol=1e-13)
    assert loss_acc == pytest.approx(big.item(), rel=1e-10)
    # KDSums add up like data-parallel ranks: one divide by the summed count is the big batch
    assert isinstance(total, KDSums) and total.count.item() == sum(counts)
    assert combine(total, **weights).item() == pytest.approx(big.item(), rel=1e-10)
    # the naive per-micro-batch mean is measurably different
    assert (g_naive - g_big).abs().max() > 1e-3


def test_combine_divides_once_by_num_items():
    sums = KDSums(torch.tensor(6.0), torch.tensor(2.0), torch.tensor(4))
    kw = {"soft_weight": 0.5, "hard_weight": 0.25}
    assert combine(sums, kd_temperature=2.0, **kw).item() == pytest.approx((0.5 * 4 * 6 + 0.5) / 4)
    assert combine(sums, kd_temperature=2.0, num_items=10, **kw).item() == pytest.approx(12.5 / 10)
    assert combine(sums, kd_temperature=2.0, num_items=torch.tensor(5), **kw).item() == 2.5
    assert combine(sums, kd_temperature=2.0, scale_by_t2=False, **kw).item() == pytest.approx(
        3.5 / 4
    )
    empty = KDSums(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0))
    assert combine(empty, kd_temperature=1.0, **kw).item() == 0.0
    assert combine(empty, kd_temperature=1.0, num_items=0, **kw).item() == 0.0


# -------------------------------------------------------------------------- bad arguments


def _call(**kwargs):
    s, te = ref.random_logits((2,), 5, 34), ref.random_logits((2,), 5, 35)
    return kdistill.kd_loss(s, te, torch.tensor([1, 2]), **kwargs)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"kd_temperature": 0.0}, "kd_temperature"),
        ({"kd_temperature": -1.0}, "kd_temperature"),
        ({"kd_temperature": math.inf}, "kd_temperature"),
        ({"kd_temperature": math.nan}, "kd_temperature"),
        ({"soft_weight": -0.1}, "soft_weight"),
        ({"hard_weight": -1.0}, "hard_weight"),
        ({"hard_weight": math.nan}, "hard_weight"),
        ({"soft_weight": 0.0, "hard_weight": 0.0}, "soft_weight and hard_weight"),
        ({"beta": 1.5, "divergence": "jsd"}, "beta"),
        ({"beta": -0.5, "divergence": "jsd"}, "beta"),
        ({"skew_alpha": -0.2, "divergence": "skew_kl"}, "skew_alpha"),
        ({"skew_alpha": 1.2, "divergence": "skew_reverse_kl"}, "skew_alpha"),
        ({"divergence": "kl"}, "divergence"),
        ({"divergence": "Forward_KL"}, "divergence"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _call(**kwargs)


def test_shape_vocab_and_label_mismatches_name_what_is_wrong():
    s = ref.random_logits((2, 3), 5, 36)
    with pytest.raises(ValueError, match="vocab") as info:
        kdistill.kd_loss(s, ref.random_logits((2, 3), 6, 37))
    assert "student" in str(info.value) and "teacher" in str(info.value)
    with pytest.raises(ValueError, match="shape") as info:
        kdistill.kd_loss(s, ref.random_logits((3, 2), 5, 38))
    assert "(2, 3)" in str(info.value) and "(3, 2)" in str(info.value)
    with pytest.raises(ValueError, match="shape"):
        kdistill.kd_loss(s, ref.random_logits((6,), 5, 38))
    with pytest.raises(ValueError, match="labels"):
        kdistill.kd_loss(s, ref.random_logits((2, 3), 5, 39), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab"):
        kdistill.kd_loss(s, SparseSignal.from_logits_topk(ref.random_logits((2, 3), 7, 40), 3))
    with pytest.raises(ValueError, match="shape"):
        kdistill.kd_loss(s, DenseSignal.from_logits(ref.random_logits((2, 2), 5, 41)))


def test_labels_none_with_zero_soft_weight_is_rejected():
    s, te = ref.random_logits((2,), 5, 42), ref.random_logits((2,), 5, 43)
    with pytest.raises(ValueError, match="labels"):
        kdistill.kd_loss(s, te, None, soft_weight=0.0, hard_weight=1.0)


def test_wrong_teacher_type_raises_value_error():
    s = ref.random_logits((2,), 3, 44)
    with pytest.raises(ValueError, match="teacher"):
        kdistill.kd_loss(s, [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])


def test_public_signature_defaults():
    s, te = ref.random_logits((4,), 7, 45), ref.random_logits((4,), 7, 46)
    y = torch.tensor([0, 1, -100, 3])
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
    expected = ref.kd_loss_ref(s, te, y, t=1.0, div="forward_kl", **_W)
    assert explicit.item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(TypeError):  # the knobs are keyword-only
        kdistill.kd_loss(s, te, y, 2.0)
