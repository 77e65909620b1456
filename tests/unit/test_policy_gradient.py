"""The sampled-token reverse-KL estimator: its expected gradient under the student's own
sampling equals the exact dense reverse-KL gradient (computed by enumerating the vocabulary,
for any baseline), the reverse-KL baseline lowers its variance, and masked positions give 0."""

from __future__ import annotations

import pytest
import torch

from kdistill.losses.divergences import reverse_kl
from kdistill.losses.policy_gradient import sampled_reverse_kl


def _expected_grad_and_variance(z, t_logp, baseline):
    """E_y[grad] and E_y[||grad - E grad||^2] over y ~ softmax(z), by enumeration."""
    p = torch.softmax(z.detach().double(), -1)
    grads = []
    for y in range(z.shape[-1]):
        zz = z.detach().clone().requires_grad_(True)
        s_logp = torch.log_softmax(zz.double(), -1)
        b = None if baseline is None else torch.tensor(baseline, dtype=torch.float64)
        per = sampled_reverse_kl(s_logp[y], t_logp[y], b, torch.tensor(True))
        (g,) = torch.autograd.grad(per, zz)
        grads.append(g.double())
    grads = torch.stack(grads)
    mean = (p.unsqueeze(-1) * grads).sum(0)
    var = (p * ((grads - mean) ** 2).sum(-1)).sum()
    return mean, float(var)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_gradient_equals_the_exact_reverse_kl_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(7, generator=g, dtype=torch.float64) * 2
    t_logp = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64) * 2, -1)
    zz = z.clone().requires_grad_(True)
    exact = reverse_kl(t_logp, torch.log_softmax(zz, -1))
    (want,) = torch.autograd.grad(exact, zz)
    s_logp = torch.log_softmax(z, -1)
    rkl = float((s_logp.exp() * (s_logp - t_logp)).sum())
    for b in (None, 0.7, rkl):
        got, _ = _expected_grad_and_variance(z, t_logp, b)
        assert torch.allclose(got, want, atol=1e-10), b
    # the value is the one-sample estimate; its mean over y ~ p_s is the reverse KL
    est = sum(
        float(s_logp.exp()[y])
        * float(sampled_reverse_kl(s_logp[y], t_logp[y], None, torch.tensor(True)))
        for y in range(7)
    )
    assert est == pytest.approx(rkl, rel=1e-10)


def test_the_reverse_kl_baseline_lowers_the_variance():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(50, generator=g, dtype=torch.float64) * 3
    t_logp = torch.log_softmax(torch.randn(50, generator=g, dtype=torch.float64) * 3, -1)
    s_logp = torch.log_softmax(z, -1)
    rkl = float((s_logp.exp() * (s_logp - t_logp)).sum())
    _, plain = _expected_grad_and_variance(z, t_logp, None)
    _, with_b = _expected_grad_and_variance(z, t_logp, rkl)
    assert with_b < 0.5 * plain


def test_masked_and_unscored_positions_give_zero_value_and_gradient():
    z = torch.randn(3, 5, requires_grad=True)
    s_tok = torch.log_softmax(z, -1)[:, 0]
    t_tok = torch.tensor([-1.0, float("-inf"), -2.0])  # position 1: the teacher has no value
    valid = torch.tensor([True, True, False])
    per = sampled_reverse_kl(s_tok, t_tok, torch.zeros(3), valid)
    assert per[1] == 0 and per[2] == 0 and torch.isfinite(per).all()
    per.sum().backward()
    assert torch.equal(z.grad[1:], torch.zeros(2, 5))
