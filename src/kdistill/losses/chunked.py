"""A memory-bounded KD loss: student logits are built, used and freed chunk by chunk.

PURE module. Instead of materialising ``(N, V)`` student logits (and their softmax and
gradient), :func:`chunked_kd_loss` takes the student's final hidden states ``(N, H)`` and
its output head ``(V, H)``. A custom autograd function walks the positions in chunks of
``chunk_size`` rows. For each chunk it builds the logits ``(C, V)``, the same KD sums as
:func:`kdistill.losses.objective.kd_sums` (the divergence *values* come from the very same
functions in :mod:`kdistill.losses.divergences` / :mod:`kdistill.losses.sparse`), and the
gradient of the chunk's weighted sum w.r.t. its logits, which it folds at once into the
gradients of the hidden states ``(N, H)``, the head ``(V, H)`` and bias ``(V,)``. Backward
only scales the stored gradients by ``grad_output``. Peak extra memory is
``O(chunk_size * V + V * H)`` instead of ``O(N * V)``.

Gradient w.r.t. a chunk's logits:

* dense teacher with finite log-probs (the usual case: teacher logits or teacher hidden
  states): closed form. With ``s = log_softmax(z / T)``, ``p = exp(s)`` and
  ``g = dD/ds`` taken elementwise, ``dD/dz = (g - p * sum(g)) / T``, where ``g`` is
  ``-p_t`` (forward KL), ``p (s - t + 1)`` (reverse KL), ``(1 - beta) p (s - m)``
  (JSD, ``m`` the mixture log-probs), ``-(1 - a) exp(t + s - m)`` (skew KL),
  ``p (s - m + 1 - a exp(s - m))`` (skew reverse KL), ``sign(p - p_t) p / 2`` (TVD);
  hard CE adds ``softmax(z) - onehot(y)``. No autograd graph over ``(C, V)`` is kept.
* sparse teacher, or a dense teacher with ``-inf`` log-probs: autograd through
  :func:`kd_sums` on the chunk's logits (exactly the reference code path).

Only inputs that require grad get a gradient (a frozen head costs no ``(V, H)`` buffer);
under ``torch.no_grad()`` only the sums are computed. Backward runs once (no double backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdistill.losses.cross_vocab import CrossVocabTeacher, SortedSignal
from kdistill.losses.divergences import _mixture_logp, get_divergence
from kdistill.losses.heads import project_logits
from kdistill.losses.objective import (
    KDSums,
    check_temperature,
    check_weights,
    denominator,
    kd_sums,
)
from kdistill.signals import DenseSignal, SparseSignal, fp32_or_wider


@dataclass
class _Spec:
    """Everything the autograd function needs besides the differentiable inputs."""

    teacher: object  # None | (N, V) logits | (N, H_t) hidden | Dense/SparseSignal | CrossVocab
    teacher_head: tuple | None  # (weight (V, H_t), bias (V,) | None), math dtype
    labels: torch.Tensor | None  # (N,)
    kd_temperature: float
    divergence: str
    beta: float
    skew_alpha: float
    ignore_index: int
    soft_coef: float  # soft_weight * T^2 (or soft_weight)
    hard_coef: float
    num_items: torch.Tensor | int | None
    chunk_size: int
    dtype: torch.dtype  # the math dtype: fp64 for fp64 inputs, else fp32
    logit_scale: float | None
    softcap: float | None
    grad_enabled: bool  # torch.is_grad_enabled() at the call (forward itself runs without)
    soft_mask: torch.Tensor | None = None  # (N,) bool: positions with a soft target


def _teacher_chunk(spec: _Spec, sl: slice, dtype: torch.dtype):
    """The teacher over positions ``sl``: logits ``(C, V)``, a Dense or a SparseSignal."""
    t = spec.teacher
    if isinstance(t, CrossVocabTeacher):  # another vocabulary: mapped or sorted (ULD) target
        return t.target(sl, spec.kd_temperature, dtype)
    if isinstance(t, SparseSignal):
        return SparseSignal(
            t.ids[sl], t.logprobs[sl], t.log_tail[sl], t.vocab_size, t.made_at_temperature
        )
    if isinstance(t, DenseSignal):
        return DenseSignal(t.logprobs[sl], t.made_at_temperature)
    if spec.teacher_head is not None:
        w, b = spec.teacher_head
        return project_logits(t[sl].to(dtype), w, b, spec.logit_scale, spec.softcap)
    return t[sl]


def _dense_teacher_logp(teacher, kd_temperature: float) -> torch.Tensor:
    """Teacher log-probs ``(C, V)`` at ``kd_temperature`` (the same math as ``kd_sums``)."""
    if isinstance(teacher, DenseSignal):
        return teacher.at_temperature(kd_temperature)
    t = fp32_or_wider(teacher)
    return torch.log_softmax(t if kd_temperature == 1.0 else t / kd_temperature, dim=-1)


def _dd_ds(spec: _Spec, t: torch.Tensor, s: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``dD/ds`` ``(C, V)`` elementwise for finite teacher ``t`` and student ``s`` log-probs,
    ``p = exp(s)``. Consumes ``t`` (may overwrite it)."""
    name, beta, a = spec.divergence, spec.beta, spec.skew_alpha
    if name == "jsd" and beta in (0.0, 1.0):
        name = "forward_kl" if beta == 0.0 else "reverse_kl"
    if name in ("skew_kl", "skew_reverse_kl") and a in (0.0, 1.0):
        if a == 1.0:
            return torch.zeros_like(s)  # KL(P || P)
        name = "forward_kl" if name == "skew_kl" else "reverse_kl"
    if name == "forward_kl":
        return t.exp_().neg_()
    if name == "reverse_kl":
        return (s - t).add_(1.0).mul_(p)
    if name == "jsd":
        return (s - _mixture_logp(t, s, beta)).mul_(p).mul_(1.0 - beta)
    if name == "skew_kl":
        return (t + s).sub_(_mixture_logp(t, s, a)).exp_().mul_(-(1.0 - a))
    if name == "skew_reverse_kl":
        d = s - _mixture_logp(s, t, a)
        return d.exp().mul_(-a).add_(d).add_(1.0).mul_(p)
    return torch.sign(p - t.exp_()).mul_(p).mul_(0.5)  # tvd


def _log_softmax(z: torch.Tensor, temp: float, inplace: bool) -> torch.Tensor:
    """``log_softmax(z / temp)`` over the last dim; ``inplace`` overwrites ``z`` (saves a
    ``(C, V)`` buffer when the raw logits are not needed any more)."""
    if not inplace:
        return torch.log_softmax(z if temp == 1.0 else z / temp, dim=-1)
    if temp != 1.0:
        z.div_(temp)
    return z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))


def _closed_form(spec: _Spec, z, t_chunk, labels, valid, need_grad: bool):
    """Sums and ``d(part)/dz`` ``(C, V)`` (None unless ``need_grad``) for a dense or absent
    teacher; returns None if the teacher log-probs have ``-inf`` entries (the caller then
    takes the autograd path). Unless a softcap needs them later, ``z`` is overwritten."""
    temp = spec.kd_temperature
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    soft_sum, hard_sum, grad, s, p = zero, zero, None, None, None
    hard = labels is not None and spec.hard_coef != 0
    if t_chunk is not None:
        t = _dense_teacher_logp(t_chunk, temp).to(z.dtype)
        if bool(torch.isneginf(t).any()):
            return None
        s = _log_softmax(z, temp, spec.softcap is None and not (hard and temp != 1.0))
        div = get_divergence(spec.divergence, beta=spec.beta, skew_alpha=spec.skew_alpha)
        soft_sum = torch.where(valid, div(t, s), zero).sum()
        if need_grad:
            p = s.exp()
            grad = _dd_ds(spec, t, s, p)
            del t
            grad.addcmul_(p, grad.sum(-1, keepdim=True), value=-1.0)
            grad.mul_(spec.soft_coef / temp)
    if hard:
        # cross-entropy at T = 1: value -log softmax(z)[y], gradient softmax(z) - onehot(y)
        s1 = s if temp == 1.0 and s is not None else _log_softmax(z, 1.0, spec.softcap is None)
        index = torch.where(valid, labels, torch.zeros_like(labels)).long().unsqueeze(-1)
        hard_sum = -torch.where(valid, s1.gather(-1, index).squeeze(-1), zero).sum()
        if need_grad:
            p1 = p if s1 is s else s1.exp_()
            if grad is None:
                grad = p1.mul_(spec.hard_coef)
            else:
                grad.add_(p1, alpha=spec.hard_coef)
            src = torch.full_like(index, -spec.hard_coef, dtype=grad.dtype)
            grad.scatter_add_(-1, index, src)
    if not need_grad:
        return soft_sum, hard_sum, None
    if grad is None:
        grad = torch.zeros_like(z)
    return soft_sum, hard_sum, grad.masked_fill_(~valid.unsqueeze(-1), 0.0)


def _by_autograd(spec: _Spec, z, t_chunk, labels, valid, need_grad: bool, soft_mask=None):
    """Sums and ``d(part)/dz`` (None unless ``need_grad``) via autograd through
    :func:`kd_sums` on the chunk: exactly the reference code path."""
    with torch.set_grad_enabled(need_grad):
        zz = z.detach().requires_grad_(need_grad)
        sums = kd_sums(
            zz,
            t_chunk,
            labels,
            kd_temperature=spec.kd_temperature,
            divergence=spec.divergence,
            beta=spec.beta,
            skew_alpha=spec.skew_alpha,
            ignore_index=spec.ignore_index,
            compute_hard=spec.hard_coef != 0 and labels is not None,
            soft_mask=soft_mask,
        )
        if not need_grad:
            return sums.soft_sum, sums.hard_sum, None
        part = spec.soft_coef * sums.soft_sum + spec.hard_coef * sums.hard_sum
        (grad,) = torch.autograd.grad(part, zz)
    return sums.soft_sum.detach(), sums.hard_sum.detach(), grad.masked_fill_(~valid[:, None], 0.0)


def _chunk(spec: _Spec, h, w, b, sl: slice, valid, labels, need_grad: bool):
    """One chunk: ``(soft_sum, hard_sum, d(part)/d(x))`` where ``x = h @ W.T + b`` are the
    chunk's pre-scale logits ``(C, V)`` (the gradient is None unless ``need_grad``)."""
    x = project_logits(h, w, b, spec.logit_scale, None)
    z = x if spec.softcap is None else spec.softcap * torch.tanh(x / spec.softcap)
    del x
    t_chunk = None if spec.teacher is None else _teacher_chunk(spec, sl, spec.dtype)
    out = None
    soft_mask = None if spec.soft_mask is None else spec.soft_mask[sl]
    if soft_mask is None and not isinstance(t_chunk, (SparseSignal, SortedSignal)):
        out = _closed_form(spec, z, t_chunk, labels, valid, need_grad)
    if out is None:
        out = _by_autograd(spec, z, t_chunk, labels, valid, need_grad, soft_mask)
    c_soft, c_hard, g = out
    if g is not None and spec.softcap is not None:
        g.mul_((z / spec.softcap).square_().neg_().add_(1.0))  # dz/dx = 1 - (z/c)^2, z intact
    if g is not None and spec.logit_scale is not None:
        g.mul_(spec.logit_scale)
    return c_soft, c_hard, g


class _ChunkedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, spec: _Spec):
        n, dev, dt = hidden.shape[0], hidden.device, spec.dtype
        need_h, need_w, need_b = (spec.grad_enabled and x for x in ctx.needs_input_grad[:3])
        need_b = need_b and bias is not None
        w = weight.detach().to(dt)
        b = None if bias is None else bias.detach().to(dt)
        grad_h = torch.zeros(hidden.shape, dtype=dt, device=dev) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dt, device=dev) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=dt, device=dev) if need_b else None
        soft = torch.zeros((), dtype=dt, device=dev)
        hard = torch.zeros((), dtype=dt, device=dev)
        count = torch.zeros((), dtype=torch.long, device=dev)
        for start in range(0, n, spec.chunk_size):
            sl = slice(start, min(start + spec.chunk_size, n))
            labels = None if spec.labels is None else spec.labels[sl]
            if labels is None:
                valid = torch.ones(sl.stop - start, dtype=torch.bool, device=dev)
            else:
                valid = labels != spec.ignore_index
                if not bool(valid.any()):
                    continue  # an all-masked chunk contributes exactly 0
            h = hidden[sl].detach().to(dt)
            c_soft, c_hard, g = _chunk(spec, h, w, b, sl, valid, labels, need_h or need_w or need_b)
            if g is not None:
                if need_h:
                    grad_h[sl] = g @ w
                if need_w:
                    grad_w.addmm_(g.T, h)
                if need_b:
                    grad_b += g.sum(0)
            soft += c_soft
            hard += c_hard
            count += valid.sum()
        # divided by the same rule as every other term (objective.denominator); the
        # gradients already folded into grad_h/w/b are divided by it too
        denom = denominator(spec.num_items if spec.num_items is not None else count, dev, dt)
        loss = (spec.soft_coef * soft + spec.hard_coef * hard) / denom
        grads = [None if g is None else g.div_(denom) for g in (grad_h, grad_w, grad_b)]
        ctx.save_for_backward(*grads)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(soft, hard, count)
        return loss, soft, hard, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *_unused):
        out = [
            None if g is None else (g * grad_loss).to(d)
            for g, d in zip(ctx.saved_tensors, ctx.dtypes, strict=True)
        ]
        return *out, None


def _check_inputs(hidden, head_weight, teacher, labels, teacher_head_weight, chunk_size):
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}; e.g. 128")
    if hidden.dim() != 2 or head_weight.dim() != 2:
        raise ValueError(
            "student_hidden must be (N, H) and head_weight (V, H); flatten batch and sequence first"
        )
    (n, hid), vocab = hidden.shape, head_weight.shape[0]
    if head_weight.shape[1] != hid:
        raise ValueError(
            f"hidden size mismatch: hidden {tuple(hidden.shape)} vs head {tuple(head_weight.shape)}"
        )
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if teacher_head_weight is not None and not isinstance(teacher, torch.Tensor):
        raise ValueError("teacher_head_weight needs teacher hidden states (N, H_t) as teacher")
    if isinstance(teacher, torch.Tensor):
        want_v = vocab if teacher_head_weight is None else teacher_head_weight.shape[1]
        if teacher.dim() != 2 or teacher.shape[0] != n or teacher.shape[1] != want_v:
            what = "logits (N, V)" if teacher_head_weight is None else "hidden states (N, H_t)"
            raise ValueError(f"teacher {what} must be ({n}, {want_v}), got {tuple(teacher.shape)}")
        if teacher_head_weight is not None and teacher_head_weight.shape[0] != vocab:
            raise ValueError(
                f"vocab mismatch: student head V={vocab}, teacher head "
                f"{tuple(teacher_head_weight.shape)}; slice both to the shared vocabulary"
            )
    elif isinstance(teacher, CrossVocabTeacher):
        if teacher.rows != n or teacher.student_vocab != vocab:
            raise ValueError(
                f"cross-vocabulary teacher covers {teacher.rows} rows for V_s="
                f"{teacher.student_vocab}; need {n} rows for V_s={vocab}"
            )
    elif isinstance(teacher, (DenseSignal, SparseSignal)):
        lead = teacher.logprobs.shape[:-1]
        if tuple(lead) != (n,) or teacher.vocab_size != vocab:
            raise ValueError(
                f"teacher signal covers positions {tuple(lead)} over V={teacher.vocab_size}; "
                f"need ({n},) over V={vocab}"
            )
    elif teacher is not None:
        raise ValueError(
            "teacher must be logits / hidden states (torch.Tensor), DenseSignal, SparseSignal "
            f"or None, got {type(teacher).__name__}"
        )


def chunked_kd_loss(
    student_hidden: torch.Tensor,
    head_weight: torch.Tensor,
    teacher,
    labels: torch.Tensor | None = None,
    *,
    kd_temperature: float = 1.0,
    soft_weight: float = 0.5,
    hard_weight: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    scale_by_t2: bool = True,
    ignore_index: int = -100,
    num_items: torch.Tensor | int | None = None,
    chunk_size: int = 128,
    head_bias: torch.Tensor | None = None,
    logit_scale: float | None = None,
    softcap: float | None = None,
    teacher_head_weight: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
    soft_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, KDSums]:
    """KD loss over ``N`` positions without ever holding ``(N, V)`` student logits.

    Equals ``combine(kd_sums(logits, teacher, labels, ...), ...)`` on the full logits
    ``logits = softcap(logit_scale * (student_hidden @ head_weight.T + head_bias))``.

    Args:
        student_hidden: ``(N, H)`` final hidden states (after the final norm), any float dtype.
        head_weight: ``(V, H)`` output head; ``head_bias`` ``(V,)`` optional.
        teacher: one of ``(N, V)`` teacher logits; ``(N, H_t)`` teacher hidden states with
            ``teacher_head_weight`` ``(V, H_t)`` (and optional ``teacher_head_bias`` ``(V,)``;
            projected chunk by chunk without grad, with the same ``logit_scale`` and
            ``softcap``); a :class:`DenseSignal` or :class:`SparseSignal` over the N
            positions; a :class:`~kdistill.losses.cross_vocab.CrossVocabTeacher` (a teacher
            over another vocabulary: mapped KD or ULD, its targets made a chunk at a time);
            or ``None`` for the hard term only (then ``soft_weight`` must be 0).
        labels: ``(N,)`` aligned targets, ``ignore_index`` = masked; ``None``: every position
            counts and the hard term is skipped.
        kd_temperature, soft_weight, hard_weight, divergence, beta, skew_alpha, scale_by_t2,
            ignore_index: as in :func:`kdistill.losses.objective.kd_loss`.
        num_items: the global valid-position count to divide by (default: this call's count).
        chunk_size: positions per chunk; peak extra memory grows with ``chunk_size * V``.
        soft_mask: ``(N,)`` bool, positions that have a soft target (None: all); the
            others keep their hard term and count.
        logit_scale: multiply the logits by this (e.g. Cohere); ``softcap``: cap ``c``,
            logits become ``c * tanh(logits / c)`` (Gemma's ``final_logit_softcapping``).

    Returns:
        ``(loss, sums)``: the scalar loss (fp32, or fp64 for fp64 inputs), differentiable
        once w.r.t. ``student_hidden``, ``head_weight`` and ``head_bias`` (gradients come back
        in their dtypes), and detached :class:`KDSums` (``soft_sum``, ``hard_sum``,
        ``count``) for logging and cross-rank reduction. All positions masked: loss 0 and
        zero gradients. Math runs in fp32 (fp64 for fp64 inputs) whatever the input dtype.
    """
    check_temperature(kd_temperature)
    check_weights(soft_weight, hard_weight)
    get_divergence(divergence, beta=beta, skew_alpha=skew_alpha)  # validates the name and knobs
    _check_inputs(student_hidden, head_weight, teacher, labels, teacher_head_weight, chunk_size)
    if teacher is None and soft_weight != 0:
        raise ValueError("teacher=None computes the hard term only; pass soft_weight=0")
    if labels is None and soft_weight == 0:
        raise ValueError("labels=None with soft_weight=0 leaves nothing to learn; pass labels")
    fp64 = torch.float64 in (student_hidden.dtype, head_weight.dtype)
    dt = torch.float64 if fp64 else torch.float32
    t_head = None
    if teacher_head_weight is not None:
        t_head = (
            teacher_head_weight.detach().to(dt),
            None if teacher_head_bias is None else teacher_head_bias.detach().to(dt),
        )
    spec = _Spec(
        teacher=teacher.detach() if isinstance(teacher, torch.Tensor) else teacher,
        teacher_head=t_head,
        labels=labels,
        kd_temperature=float(kd_temperature),
        divergence=divergence,
        beta=float(beta),
        skew_alpha=float(skew_alpha),
        ignore_index=ignore_index,
        soft_coef=soft_weight * (kd_temperature**2 if scale_by_t2 else 1.0),
        hard_coef=float(hard_weight) if labels is not None else 0.0,
        num_items=num_items,
        chunk_size=chunk_size,
        dtype=dt,
        logit_scale=logit_scale,
        softcap=softcap,
        grad_enabled=torch.is_grad_enabled(),
        soft_mask=soft_mask,
    )
    loss, soft, hard, count = _ChunkedKD.apply(student_hidden, head_weight, head_bias, spec)
    return loss, KDSums(soft, hard, count)
