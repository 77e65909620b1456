"""The chunked KD loss equals the full-logit reference: loss, sums and gradients.

Reference: ``kd_sums`` + ``combine`` on the full logits ``softcap(scale * (h @ W.T + b))``,
differentiated by autograd. N = 37 positions so chunk sizes 8 and 16 leave a ragged last chunk;
positions 8..15 are all masked, so at chunk size 8 one whole chunk is masked.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import DIVERGENCES, chunked_kd_loss, combine, kd_sums
from kdistill.signals import DenseSignal, SparseSignal

N, H, HT, V = 37, 8, 5, 23
F64 = {"rtol": 1e-10, "atol": 1e-12}
F32 = {"rtol": 1e-4, "atol": 1e-6}
TOL = {torch.float64: F64, torch.float32: F32}


def _inputs(dtype, seed=0, masked=True):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    h = rand(N, H).requires_grad_(True)
    w = rand(V, H, scale=0.7).requires_grad_(True)
    b = rand(V, scale=0.1).requires_grad_(True)
    th, tw, tb = rand(N, HT), rand(V, HT), rand(V, scale=0.1)
    y = torch.randint(0, V, (N,), generator=g)
    if masked:
        y[torch.rand(N, generator=g) < 0.3] = -100
        y[8:16] = -100
    return h, w, b, (th, tw, tb), y


def _head(x, w, b=None, scale=None, cap=None):
    logits = x @ w.T if b is None else x @ w.T + b
    if scale is not None:
        logits = logits * scale
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return logits


def _reference(h, w, b, teacher, y, *, scale=None, cap=None, num_items=None, **kw):
    sums = kd_sums(
        _head(h, w, b, scale, cap),
        teacher,
        y,
        kd_temperature=kw.get("kd_temperature", 1.0),
        divergence=kw.get("divergence", "forward_kl"),
        beta=kw.get("beta", 0.5),
        skew_alpha=kw.get("skew_alpha", 0.1),
        compute_hard=y is not None and kw.get("hard_weight", 0.5) != 0,
    )
    loss = combine(
        sums,
        soft_weight=kw.get("soft_weight", 0.5),
        hard_weight=kw.get("hard_weight", 0.5) if y is not None else 0.0,
        kd_temperature=kw.get("kd_temperature", 1.0),
        num_items=num_items,
    )
    return loss, sums


def _assert_matches(got, ref, params, tol):
    (loss, sums), (ref_loss, ref_sums) = got, ref
    torch.testing.assert_close(loss, ref_loss.to(loss.dtype), **tol)
    torch.testing.assert_close(sums.soft_sum, ref_sums.soft_sum.to(loss.dtype), **tol)
    torch.testing.assert_close(sums.hard_sum, ref_sums.hard_sum.to(loss.dtype), **tol)
    assert int(sums.count) == int(ref_sums.count)
    grads = torch.autograd.grad(loss, params)
    ref_grads = torch.autograd.grad(ref_loss, params)
    for name, a, r in zip(("hidden", "head", "bias"), grads, ref_grads, strict=False):
        assert a.dtype == r.dtype, name
        torch.testing.assert_close(a, r, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


def _teacher(kind, th, tw, tb, *, scale=None, cap=None):
    """(argument for chunked_kd_loss, extra kwargs, reference teacher)."""
    logits = _head(th, tw, tb, scale, cap)
    if kind == "logits":
        return logits, {}, logits
    if kind == "hidden":
        return th, {"teacher_head_weight": tw, "teacher_head_bias": tb}, logits
    sig = SparseSignal.from_logits_topk(logits, 5, 1.0)
    return sig, {}, sig


KW = {"kd_temperature": 2.0, "soft_weight": 0.7, "hard_weight": 0.3, "beta": 0.3, "skew_alpha": 0.2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("chunk", [8, 16, 37, 64])
def test_logits_teacher_every_divergence_and_chunk_size(dtype, div, chunk):
    h, w, b, (th, tw, tb), y = _inputs(dtype)
    teacher = _head(th, tw, tb)
    kw = {**KW, "divergence": div}
    got = chunked_kd_loss(h, w, teacher, y, chunk_size=chunk, head_bias=b, **kw)
    _assert_matches(got, _reference(h, w, b, teacher, y, **kw), (h, w, b), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("kind", ["hidden", "sparse"])
def test_hidden_and_sparse_teachers(dtype, div, kind, chunk=8):
    h, w, b, (th, tw, tb), y = _inputs(dtype, seed=1)
    arg, extra, ref_teacher = _teacher(kind, th, tw, tb)
    kw = {**KW, "divergence": div}
    got = chunked_kd_loss(h, w, arg, y, chunk_size=chunk, head_bias=b, **extra, **kw)
    _assert_matches(got, _reference(h, w, b, ref_teacher, y, **kw), (h, w, b), TOL[dtype])


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("kind", ["logits", "hidden", "sparse"])
def test_temperature_one_soft_and_hard(div, kind):
    h, w, b, (th, tw, tb), y = _inputs(torch.float64, seed=2)
    arg, extra, ref_teacher = _teacher(kind, th, tw, tb)
    kw = {"divergence": div, "beta": 0.6, "skew_alpha": 0.1}
    got = chunked_kd_loss(h, w, arg, y, chunk_size=16, head_bias=b, **extra, **kw)
    _assert_matches(got, _reference(h, w, b, ref_teacher, y, **kw), (h, w, b), F64)


@pytest.mark.parametrize(
    "dtype,kind",
    [(torch.float64, k) for k in ("logits", "hidden", "sparse")] + [(torch.float32, "logits")],
)
@pytest.mark.parametrize("div", DIVERGENCES)
def test_softcap_and_logit_scale(dtype, div, kind):
    h, w, b, (th, tw, tb), y = _inputs(dtype, seed=3)
    arg, extra, ref_teacher = _teacher(kind, th, tw, tb, scale=0.5, cap=3.0)
    kw = {**KW, "divergence": div}
    got = chunked_kd_loss(
        h, w, arg, y, chunk_size=16, head_bias=b, logit_scale=0.5, softcap=3.0, **extra, **kw
    )
    ref = _reference(h, w, b, ref_teacher, y, scale=0.5, cap=3.0, **kw)
    _assert_matches(got, ref, (h, w, b), TOL[dtype])


@pytest.mark.parametrize("div", [d for d in DIVERGENCES if d != "reverse_kl"])
def test_dense_signal_with_zero_probabilities_and_retempering(div):
    """-inf teacher log-probs take the autograd path; a made-at-T0 signal is re-tempered."""
    h, w, b, (th, tw, tb), y = _inputs(torch.float64, seed=4)
    logits = _head(th, tw, tb)
    logits[:, :4] = float("-inf")  # e.g. a masked-out part of the vocabulary
    for made_at in (1.0, 2.0):
        sig = DenseSignal.from_logits(logits, made_at)
        kw = {**KW, "divergence": div}
        got = chunked_kd_loss(h, w, sig, y, chunk_size=8, head_bias=b, **kw)
        _assert_matches(got, _reference(h, w, b, sig, y, **kw), (h, w, b), F64)


def test_sparse_signal_with_unused_slots_and_no_tail():
    h, w, b, (th, tw, tb), y = _inputs(torch.float64, seed=5)
    full = SparseSignal.from_logits_topk(_head(th, tw, tb), V, 1.0)  # all kept: no tail
    ids, lp = full.ids.clone(), full.logprobs.clone()
    ids[:5, -3:], lp[:5, -3:] = -1, float("-inf")  # unused slots; their mass moves to the tail
    tail = torch.where(
        torch.arange(N) < 5, torch.logsumexp(full.logprobs[:, -3:], -1), full.log_tail
    )
    sig = SparseSignal(ids, lp, tail, V, 1.0)
    for div in DIVERGENCES:
        kw = {**KW, "divergence": div}
        got = chunked_kd_loss(h, w, sig, y, chunk_size=16, head_bias=b, **kw)
        _assert_matches(got, _reference(h, w, b, sig, y, **kw), (h, w, b), F64)


def test_masked_positions_never_leak_even_with_garbage_teacher():
    h, w, b, (th, tw, tb), y = _inputs(torch.float64, seed=6)
    clean = _head(th, tw, tb)
    dirty = clean.detach().clone()
    dirty[y == -100] = float("nan")
    for div in DIVERGENCES:
        kw = {**KW, "divergence": div}
        got = chunked_kd_loss(h, w, dirty, y, chunk_size=8, head_bias=b, **kw)
        _assert_matches(got, _reference(h, w, b, clean, y, **kw), (h, w, b), F64)


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("kind", ["logits", "hidden", "sparse"])
def test_all_masked_batch_is_zero_with_zero_finite_grads(div, kind):
    h, w, b, (th, tw, tb), y = _inputs(torch.float32, seed=7)
    arg, extra, _ = _teacher(kind, th, tw, tb)
    y[:] = -100
    loss, sums = chunked_kd_loss(h, w, arg, y, chunk_size=8, head_bias=b, divergence=div, **extra)
    assert loss.item() == 0.0 and int(sums.count) == 0
    assert sums.soft_sum.item() == 0.0 and sums.hard_sum.item() == 0.0
    for g in torch.autograd.grad(loss, (h, w, b)):
        assert torch.isfinite(g).all() and g.abs().max() == 0
    if kind == "logits":  # zero positions at all
        empty, sums = chunked_kd_loss(h[:0], w, arg[:0], y[:0], divergence=div)
        assert empty.item() == 0.0 and int(sums.count) == 0
        assert torch.autograd.grad(empty, w)[0].abs().max() == 0


def test_no_labels_every_position_counts():
    h, w, b, (th, tw, tb), _ = _inputs(torch.float64, seed=8)
    teacher = _head(th, tw, tb)
    kw = {**KW, "divergence": "jsd"}
    got = chunked_kd_loss(h, w, teacher, None, chunk_size=16, head_bias=b, **kw)
    _assert_matches(got, _reference(h, w, b, teacher, None, **kw), (h, w, b), F64)
    assert int(got[1].count) == N and got[1].hard_sum.item() == 0.0


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_no_teacher_is_the_hard_cross_entropy(temp):
    h, w, b, _, y = _inputs(torch.float64, seed=9)
    kw = {"soft_weight": 0.0, "hard_weight": 1.0, "kd_temperature": temp, "head_bias": b}
    loss, sums = chunked_kd_loss(h, w, None, y, chunk_size=8, **kw)
    ref = F.cross_entropy(_head(h, w, b), y)
    torch.testing.assert_close(loss, ref, **F64)
    for a, r in zip(torch.autograd.grad(loss, (h, w, b)), torch.autograd.grad(ref, (h, w, b))):
        torch.testing.assert_close(a, r, **F64)
    assert sums.soft_sum.item() == 0.0


def test_global_num_items_and_grad_output_scaling():
    h, w, _b, (th, tw, tb), y = _inputs(torch.float64, seed=10)
    teacher = _head(th, tw, tb)
    got = chunked_kd_loss(h, w, teacher, y, chunk_size=16, num_items=100, **KW)
    _assert_matches(got, _reference(h, w, None, teacher, y, num_items=100, **KW), (h, w), F64)
    loss, _ = chunked_kd_loss(h, w, teacher, y, chunk_size=16, num_items=torch.tensor(100))
    (gh,) = torch.autograd.grad(loss, h)
    (gh3,) = torch.autograd.grad(3.0 * chunked_kd_loss(h, w, teacher, y, num_items=100)[0], h)
    torch.testing.assert_close(gh3, 3.0 * gh, **F64)


def test_gradcheck():
    h, w, b, (th, tw, tb), y = _inputs(torch.float64, seed=11)
    teacher = _head(th, tw, tb)[:6]

    def f(x, ww, bb):
        return chunked_kd_loss(
            x, ww, teacher, y[:6], chunk_size=4, divergence="jsd", head_bias=bb, softcap=2.0
        )[0]

    leaf = [t.detach()[:6] if t is h else t.detach() for t in (h, w, b)]
    inputs = tuple(t.clone().requires_grad_(True) for t in leaf)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


def test_bf16_inputs_fp32_math_grads_in_input_dtype():
    h, w, _b, (th, tw, tb), y = _inputs(torch.float32, seed=12)
    hb, wb = h.detach().bfloat16().requires_grad_(True), w.detach().bfloat16().requires_grad_(True)
    teacher = _head(th, tw, tb).bfloat16()
    loss, _ = chunked_kd_loss(hb, wb, teacher, y, chunk_size=8, divergence="jsd")
    assert loss.dtype == torch.float32
    gh, gw = torch.autograd.grad(loss, (hb, wb))
    assert gh.dtype == gw.dtype == torch.bfloat16
    h32, w32 = hb.detach().float().requires_grad_(True), wb.detach().float().requires_grad_(True)
    ref, _ = _reference(h32, w32, None, teacher.float(), y, divergence="jsd")
    rh, rw = torch.autograd.grad(ref, (h32, w32))
    torch.testing.assert_close(loss, ref, **F32)
    torch.testing.assert_close(gh.float(), rh, rtol=1e-2, atol=1e-3)  # bf16 rounding of grads
    torch.testing.assert_close(gw.float(), rw, rtol=1e-2, atol=1e-3)


def test_bad_arguments():
    h, w, _b, (th, tw, tb), y = _inputs(torch.float32)
    t = _head(th, tw, tb)
    cases = [
        ({"chunk_size": 0}, t, "chunk_size"),
        ({"divergence": "kl"}, t, "unknown divergence"),
        ({"kd_temperature": 0.0}, t, "kd_temperature"),
        ({}, t[:-1], "teacher logits"),
        ({}, t[:, :-1], "teacher logits"),
        ({"teacher_head_weight": tw[:-1]}, th, "vocab mismatch"),
        ({"teacher_head_weight": tw}, SparseSignal.from_logits_topk(t, 3), "teacher hidden"),
        ({}, SparseSignal.from_logits_topk(t[:-1], 3), "teacher signal"),
        ({}, None, "teacher=None"),
        ({}, "logits", "teacher must be"),
    ]
    for kw, teacher, match in cases:
        with pytest.raises(ValueError, match=match):
            chunked_kd_loss(h, w, teacher, y, **kw)
    with pytest.raises(ValueError, match="hidden size mismatch"):
        chunked_kd_loss(h, w[:, :4], t, y)
    with pytest.raises(ValueError, match="labels must have shape"):
        chunked_kd_loss(h, w, t, y[:-1])


def test_dense_teachers_take_the_closed_form_path(monkeypatch):
    """Logits / hidden teachers must never fall back to autograd over (C, V) tensors."""
    from kdistill.losses import chunked

    def boom(*args, **kwargs):
        raise AssertionError("autograd fallback used for a finite dense teacher")

    monkeypatch.setattr(chunked, "_by_autograd", boom)
    h, w, b, (th, tw, tb), y = _inputs(torch.float64, seed=13)
    for kind in ("logits", "hidden"):
        arg, extra, ref_teacher = _teacher(kind, th, tw, tb)
        for div in DIVERGENCES:
            kw = {**KW, "divergence": div}
            got = chunked_kd_loss(h, w, arg, y, chunk_size=16, head_bias=b, **extra, **kw)
            _assert_matches(got, _reference(h, w, b, ref_teacher, y, **kw), (h, w, b), F64)


def test_gradients_only_where_needed(monkeypatch):
    """A frozen head gets no gradient (and costs none); under no_grad nothing is computed."""
    from kdistill.losses import chunked

    h, w, b, (th, tw, tb), y = _inputs(torch.float64, seed=14)
    teacher = _head(th, tw, tb)
    ref, _ = _reference(h, w, b, teacher, y, **KW)
    ref_gh, ref_gw = torch.autograd.grad(ref, (h, w))
    frozen = w.detach()
    loss, _ = chunked_kd_loss(h, frozen, teacher, y, head_bias=b.detach(), chunk_size=8, **KW)
    torch.testing.assert_close(torch.autograd.grad(loss, h)[0], ref_gh, **F64)
    loss, _ = chunked_kd_loss(h.detach(), w, teacher, y, head_bias=b.detach(), **KW)
    torch.testing.assert_close(torch.autograd.grad(loss, w)[0], ref_gw, **F64)

    seen = []
    original = chunked._chunk

    def spy(*args):
        seen.append(args[-1])
        return original(*args)

    monkeypatch.setattr(chunked, "_chunk", spy)
    with torch.no_grad():
        loss, _ = chunked_kd_loss(h, w, teacher, y, head_bias=b, chunk_size=8, **KW)
    assert seen and not any(seen)
    torch.testing.assert_close(loss, ref.detach(), **F64)
    assert not loss.requires_grad
