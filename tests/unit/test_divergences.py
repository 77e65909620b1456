"""Per-position divergences (kdistill.losses.divergences) against float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import DIVERGENCES
from kdistill.losses import divergences as D
from kdistill.losses.divergences import get_divergence
from tests.unit import reference as ref

TEMPS = [0.5, 1.0, 2.0, 4.0, 20.0]
# (leading shape, vocab): one, two and three leading dims, vocab 5..50
SHAPES = [((7,), 5), ((3, 5), 17), ((2, 4, 6), 50)]
# float64 in, float64 reference: only rounding separates them
RTOL, ATOL = 1e-9, 1e-12
FAST = settings(max_examples=40, deadline=None)

DIRECT = {
    "forward_kl": lambda t, s, beta, alpha: D.forward_kl(t, s),
    "reverse_kl": lambda t, s, beta, alpha: D.reverse_kl(t, s),
    "jsd": lambda t, s, beta, alpha: D.jsd(t, s, beta),
    "skew_kl": lambda t, s, beta, alpha: D.skew_kl(t, s, alpha),
    "skew_reverse_kl": lambda t, s, beta, alpha: D.skew_reverse_kl(t, s, alpha),
    "tvd": lambda t, s, beta, alpha: D.tvd(t, s),
}


def _logp(logits: torch.Tensor, t: float) -> torch.Tensor:
    return torch.log_softmax(logits / t, dim=-1)


def _assert_matches(got: torch.Tensor, expected: list[float]) -> None:
    flat = got.reshape(-1).tolist()
    assert len(flat) == len(expected)
    for i, (a, b) in enumerate(zip(flat, expected, strict=True)):
        assert a == pytest.approx(b, rel=RTOL, abs=ATOL), f"position {i}: {a} vs {b}"


def test_divergence_names_are_the_documented_six():
    assert DIVERGENCES == ref.DIVERGENCE_NAMES


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("shape,vocab", SHAPES)
@pytest.mark.parametrize("t", TEMPS)
def test_matches_reference_on_random_logits(div, shape, vocab, t):
    seed = 7 * len(shape) + vocab
    s = ref.random_logits(shape, vocab, seed)
    te = ref.random_logits(shape, vocab, seed + 1)
    beta, alpha = 0.3, 0.2
    expected = ref.divergence_per_position(div, te, s, t, beta, alpha)
    direct = DIRECT[div](_logp(te, t), _logp(s, t), beta, alpha)
    assert direct.shape == shape and direct.dtype == torch.float64
    _assert_matches(direct, expected)
    via_name = get_divergence(div, beta=beta, skew_alpha=alpha)(_logp(te, t), _logp(s, t))
    assert torch.equal(via_name, direct)


@pytest.mark.parametrize("beta", [0.0, 1e-3, 0.1, 0.5, 0.9, 1.0 - 1e-3, 1.0])
def test_jsd_every_beta_matches_reference(beta):
    s, te = ref.random_logits((6,), 13, 1), ref.random_logits((6,), 13, 2)
    got = D.jsd(_logp(te, 1.0), _logp(s, 1.0), beta)
    _assert_matches(got, ref.divergence_per_position("jsd", te, s, 1.0, beta=beta))


@pytest.mark.parametrize("div", ["skew_kl", "skew_reverse_kl"])
@pytest.mark.parametrize("alpha", [0.0, 1e-3, 0.1, 0.5, 0.9, 1.0])
def test_skew_every_alpha_matches_reference(div, alpha):
    s, te = ref.random_logits((6,), 13, 3), ref.random_logits((6,), 13, 4)
    got = get_divergence(div, skew_alpha=alpha)(_logp(te, 2.0), _logp(s, 2.0))
    _assert_matches(got, ref.divergence_per_position(div, te, s, 2.0, alpha=alpha))


def test_hand_computed_values():
    """p = (1/2, 1/2), q = (1/4, 3/4): every divergence worked out on paper."""
    p = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    q = torch.tensor([0.25, 0.75], dtype=torch.float64).log()
    fkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    m = (0.375, 0.625)  # beta = 1/2
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    )
    sk = (0.1 * 0.5 + 0.9 * 0.25, 0.1 * 0.5 + 0.9 * 0.75)  # alpha = 0.1: 0.1 P_t + 0.9 P_s
    skew = 0.5 * math.log(0.5 / sk[0]) + 0.5 * math.log(0.5 / sk[1])
    sr = (0.1 * 0.25 + 0.9 * 0.5, 0.1 * 0.75 + 0.9 * 0.5)  # 0.1 P_s + 0.9 P_t
    skew_rev = 0.25 * math.log(0.25 / sr[0]) + 0.75 * math.log(0.75 / sr[1])
    assert D.forward_kl(p, q).item() == pytest.approx(fkl, rel=1e-12)
    assert D.reverse_kl(p, q).item() == pytest.approx(rkl, rel=1e-12)
    assert D.jsd(p, q, 0.5).item() == pytest.approx(js, rel=1e-12)
    assert D.skew_kl(p, q, 0.1).item() == pytest.approx(skew, rel=1e-12)
    assert D.skew_reverse_kl(p, q, 0.1).item() == pytest.approx(skew_rev, rel=1e-12)
    assert D.tvd(p, q).item() == pytest.approx(0.25, rel=1e-12)
    # the direction matters: forward and reverse KL differ on this pair
    assert abs(fkl - rkl) > 1e-3


# ----------------------------------------------------------------------------- properties


def _dist(draw_logits: list[float]) -> torch.Tensor:
    return torch.log_softmax(torch.tensor(draw_logits, dtype=torch.float64), dim=-1)


logit_rows = st.integers(2, 12).flatmap(
    lambda v: st.tuples(
        st.lists(st.floats(-30, 30), min_size=v, max_size=v),
        st.lists(st.floats(-30, 30), min_size=v, max_size=v),
    )
)


@FAST
@given(
    pair=logit_rows,
    div=st.sampled_from(DIVERGENCES),
    beta=st.floats(0, 1),
    alpha=st.floats(0, 1),
    t=st.sampled_from(TEMPS),
)
def test_nonnegative_zero_on_equal_and_matches_reference(pair, div, beta, alpha, t):
    te_list, s_list = pair
    f = get_divergence(div, beta=beta, skew_alpha=alpha)
    te = _logp(torch.tensor([te_list], dtype=torch.float64), t)
    s = _logp(torch.tensor([s_list], dtype=torch.float64), t)
    value = f(te, s)
    assert torch.isfinite(value).all()
    assert value.item() >= -1e-6
    assert f(te, te).abs().item() <= 1e-12  # D(p, p) = 0
    assert f(s, s).abs().item() <= 1e-12
    expected = ref.divergence_log(
        div, ref.log_softmax_row(te_list, t), ref.log_softmax_row(s_list, t), beta, alpha
    )
    assert value.item() == pytest.approx(expected, rel=1e-7, abs=1e-10)


@FAST
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 40), t=st.sampled_from(TEMPS))
def test_jsd_endpoints_are_exactly_forward_and_reverse_kl(seed, vocab, t):
    te = _logp(ref.random_logits((4,), vocab, seed), t)
    s = _logp(ref.random_logits((4,), vocab, seed + 1), t)
    assert torch.equal(D.jsd(te, s, 0.0), D.forward_kl(te, s))
    assert torch.equal(D.jsd(te, s, 1.0), D.reverse_kl(te, s))
    assert torch.equal(get_divergence("jsd", beta=0.0)(te, s), D.forward_kl(te, s))
    assert torch.equal(get_divergence("jsd", beta=1)(te, s), D.reverse_kl(te, s))
    # skew endpoints: alpha = 0 is the plain KL, alpha = 1 compares P with itself
    torch.testing.assert_close(D.skew_kl(te, s, 0.0), D.forward_kl(te, s), rtol=0, atol=0)
    torch.testing.assert_close(D.skew_reverse_kl(te, s, 0.0), D.reverse_kl(te, s), rtol=0, atol=0)
    assert D.skew_kl(te, s, 1.0).abs().max() == 0
    assert D.skew_reverse_kl(te, s, 1.0).abs().max() == 0


@FAST
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 30))
def test_textbook_inequalities(seed, vocab):
    """Symmetry of JSD(1/2) and TVD, JSD(1/2) <= log 2, TVD <= 1, Pinsker TVD^2 <= KL/2."""
    te = _logp(ref.random_logits((5,), vocab, seed), 1.0)
    s = _logp(ref.random_logits((5,), vocab, seed + 1), 1.0)
    torch.testing.assert_close(D.jsd(te, s, 0.5), D.jsd(s, te, 0.5), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(D.tvd(te, s), D.tvd(s, te), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(D.reverse_kl(te, s), D.forward_kl(s, te), rtol=0, atol=0)
    assert (D.jsd(te, s, 0.5) <= math.log(2) + 1e-12).all()
    assert (D.tvd(te, s) <= 1 + 1e-12).all()
    assert (D.tvd(te, s) ** 2 <= D.forward_kl(te, s) / 2 + 1e-12).all()
    assert (D.tvd(te, s) ** 2 <= D.reverse_kl(te, s) / 2 + 1e-12).all()


# -------------------------------------------------------------------- zero-probability entries


def _with_zeros():
    """Teacher and student log-probs with -inf entries: index 0 is zero on both sides,
    index 1 is zero for the teacher only, index 2 is zero for the student only."""
    te = torch.tensor([[-math.inf, -math.inf, 0.3, 1.0, -0.5]], dtype=torch.float64)
    s = torch.tensor([[-math.inf, 0.7, -math.inf, 0.2, 0.4]], dtype=torch.float64)
    return torch.log_softmax(te, -1), torch.log_softmax(s, -1)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_categories_zero_on_both_sides_contribute_nothing(div):
    """Categories that are -inf on both sides change neither the value nor the gradient."""
    te = torch.log_softmax(torch.tensor([[0.3, 1.0, -0.5]], dtype=torch.float64), -1)
    s = torch.log_softmax(torch.tensor([[0.7, 0.2, 0.4]], dtype=torch.float64), -1)
    pad = torch.full((1, 2), -math.inf, dtype=torch.float64)
    perm = [3, 0, 4, 1, 2]  # the two shared zero entries land at positions 1 and 3
    f = get_divergence(div, beta=0.4, skew_alpha=0.3)
    s_plain = s.clone().requires_grad_(True)
    s_padded = torch.cat([pad, s], -1).requires_grad_(True)
    plain = f(te, s_plain)
    padded = f(torch.cat([pad, te], -1)[:, perm], s_padded[:, perm])
    assert padded.item() == pytest.approx(plain.item(), rel=1e-12)
    padded.sum().backward()
    plain.sum().backward()
    assert torch.isfinite(s_padded.grad).all()
    assert s_padded.grad[:, :2].abs().max() == 0
    torch.testing.assert_close(s_padded.grad[:, 2:], s_plain.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_one_sided_zeros_follow_the_definition(div):
    """0 log 0 = 0; mass where the other side has none makes the KL infinite, as defined."""
    te, s = _with_zeros()
    f = get_divergence(div, beta=0.4, skew_alpha=0.3)
    got = f(te, s).item()
    p, q = te.exp()[0].tolist(), s.exp()[0].tolist()
    expected = ref.divergence(div, p, q, beta=0.4, alpha=0.3)
    if math.isinf(expected):
        assert got == math.inf
    else:
        assert got == pytest.approx(expected, rel=1e-12)
        assert math.isfinite(got)


@pytest.mark.parametrize("div", ["jsd", "skew_kl", "skew_reverse_kl", "tvd"])
def test_bounded_divergences_have_finite_gradient_with_one_sided_zeros(div):
    te, s = _with_zeros()
    s = s.clone().requires_grad_(True)
    get_divergence(div, beta=0.4, skew_alpha=0.3)(te, s).sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("div", ["skew_kl", "skew_reverse_kl"])
def test_skew_alpha_one_is_zero_even_with_zero_probability_entries(div):
    te, s = _with_zeros()  # KL(P || 1 * P + 0 * Q) = KL(P || P) = 0 by definition
    assert get_divergence(div, skew_alpha=1.0)(te, s).item() == 0.0


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"beta": -0.1}, "beta"),
        ({"beta": 1.01}, "beta"),
        ({"beta": math.nan}, "beta"),
        ({"skew_alpha": -1e-9}, "skew_alpha"),
        ({"skew_alpha": 2.0}, "skew_alpha"),
        ({"skew_alpha": math.nan}, "skew_alpha"),
    ],
)
def test_get_divergence_rejects_out_of_range_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        get_divergence("jsd", **kwargs)


@pytest.mark.parametrize("name", ["kl", "KL", "js", "", "forward-kl"])
def test_get_divergence_rejects_unknown_names_and_lists_the_choices(name):
    with pytest.raises(ValueError, match="unknown divergence") as info:
        get_divergence(name)
    assert all(d in str(info.value) for d in DIVERGENCES)
