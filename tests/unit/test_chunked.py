"""The chunked KD loss equals the full-logit reference: loss and gradients."""

from __future__ import annotations

import pytest
import torch

import kdistill
from kdistill.losses import DIVERGENCES
from kdistill.losses.chunked import chunked_kd_loss
from kdistill.signals import SparseSignal

N, H, V = 37, 8, 23


def _inputs(dtype, seed=0, masked=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    w = (torch.randn(V, H, generator=g, dtype=torch.float64) * 0.7).to(dtype).requires_grad_(True)
    b = (torch.randn(V, generator=g, dtype=torch.float64) * 0.1).to(dtype).requires_grad_(True)
    th = torch.randn(N, 5, generator=g, dtype=torch.float64).to(dtype)
    tw = torch.randn(V, 5, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, V, (N,), generator=g)
    if masked:
        y[torch.rand(N, generator=g) < 0.3] = -100
        y[8:16] = -100  # a fully masked chunk at chunk_size 8
    return h, w, b, th, tw, y


def _reference(h, w, b, teacher_logits, y, *, scale=None, cap=None, **kw):
    logits = h @ w.T + b
    if scale is not None:
        logits = logits * scale
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return kdistill.kd_loss(logits, teacher_logits, y, **kw)


# float64: must agree to 1e-10; fp32: rtol 1e-4 / atol 1e-6 (different summation order)
@pytest.mark.parametrize(
    "dtype,rtol,atol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-4, 1e-6)]
)
@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("chunk", [8, 16, 37, 64])
def test_chunked_equals_reference_logits_teacher(dtype, rtol, atol, div, chunk):
    h, w, b, th, tw, y = _inputs(dtype)
    t_logits = th @ tw.T
    kw = {
        "kd_temperature": 2.0,
        "soft_weight": 0.7,
        "hard_weight": 0.3,
        "divergence": div,
        "beta": 0.3,
        "skew_alpha": 0.2,
    }
    ref = _reference(h, w, b, t_logits, y, **kw)
    g_ref = torch.autograd.grad(ref, (h, w, b))
    got, sums = chunked_kd_loss(h, w, t_logits, y, chunk_size=chunk, head_bias=b, **kw)
    g_got = torch.autograd.grad(got, (h, w, b))
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=rtol, atol=atol)
    for a, r in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=rtol, atol=atol)
    assert int(sums.count) == int((y != -100).sum())


@pytest.mark.parametrize("div", DIVERGENCES)
def test_teacher_as_hidden_plus_head_and_softcap(div):
    h, w, b, th, tw, y = _inputs(torch.float64, seed=1)
    kw = {"kd_temperature": 1.5, "divergence": div}
    t_logits = 3.0 * torch.tanh((th @ tw.T) * 0.5 / 3.0)
    ref = _reference(h, w, b, t_logits, y, scale=0.5, cap=3.0, **kw)
    got, _ = chunked_kd_loss(
        h,
        w,
        th,
        y,
        chunk_size=10,
        head_bias=b,
        logit_scale=0.5,
        softcap=3.0,
        teacher_head_weight=tw,
        **kw,
    )
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(got, h)[0], torch.autograd.grad(ref, h)[0], rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("div", DIVERGENCES)
def test_sparse_teacher(div):
    h, w, b, th, tw, y = _inputs(torch.float64, seed=2)
    sig = SparseSignal.from_logits_topk(th @ tw.T, 5, 1.0)
    ref = _reference(h, w, b, sig, y, kd_temperature=2.0, divergence=div)
    got, _ = chunked_kd_loss(
        h, w, sig, y, chunk_size=9, head_bias=b, kd_temperature=2.0, divergence=div
    )
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(got, w)[0], torch.autograd.grad(ref, w)[0], rtol=1e-10, atol=1e-12
    )


def test_all_masked_batch_is_zero_with_zero_grads():
    h, w, _b, th, tw, y = _inputs(torch.float32, seed=3)
    y[:] = -100
    got, sums = chunked_kd_loss(h, w, th @ tw.T, y, chunk_size=8)
    gh, gw = torch.autograd.grad(got, (h, w))
    assert got.item() == 0.0 and int(sums.count) == 0
    assert gh.abs().max() == 0 and gw.abs().max() == 0


def test_global_num_items_and_gradcheck():
    h, w, _b, th, tw, y = _inputs(torch.float64, seed=4)
    t_logits = th @ tw.T
    full, _ = chunked_kd_loss(h, w, t_logits, y, chunk_size=16, num_items=100)
    own, sums = chunked_kd_loss(h, w, t_logits, y, chunk_size=16)
    assert full.item() == pytest.approx(own.item() * int(sums.count) / 100, rel=1e-12)
    small_h = h[:6].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, ww: chunked_kd_loss(x, ww, t_logits[:6], y[:6], chunk_size=4, divergence="jsd")[
            0
        ],
        (small_h, w.detach().requires_grad_(True)),
    )


def test_bad_arguments():
    h, w, _b, th, tw, y = _inputs(torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_kd_loss(h, w, th @ tw.T, y, chunk_size=0)
    with pytest.raises(ValueError, match="hidden size mismatch"):
        chunked_kd_loss(h, w[:, :4], th @ tw.T, y)
