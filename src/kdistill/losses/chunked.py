"""A memory-bounded KD loss: student logits are built, used and freed chunk by chunk.

PURE module. Instead of materialising ``(N, V)`` student logits (and their softmax and
gradient), :func:`chunked_kd_loss` takes the student's final hidden states ``(N, H)`` and
its output head ``(V, H)``. A custom autograd function walks the positions in chunks of
``chunk_size``: for each chunk it computes the logits, the exact same KD sums as
:func:`kdistill.losses.objective.kd_sums` (same divergence code), and the gradient of the
chunk's weighted sum w.r.t. the chunk's hidden states and the head, accumulating them; the
backward pass only scales the stored gradients. Peak extra memory is O(chunk_size * V)
instead of O(N * V). The teacher may be full logits ``(N, V)``, its own hidden states plus
head (projected chunk by chunk under ``no_grad``), or a :class:`SparseSignal`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdistill.losses.objective import KDSums, check_weights, kd_sums
from kdistill.signals import DenseSignal, SparseSignal, fp32_or_wider


def _project(hidden, weight, bias, logit_scale, softcap):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    if logit_scale is not None:
        logits = logits * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def _teacher_chunk(
    teacher, sl: slice, teacher_head_weight, teacher_head_bias, logit_scale, softcap
):
    if isinstance(teacher, SparseSignal):
        return SparseSignal(
            teacher.ids[sl],
            teacher.logprobs[sl],
            teacher.log_tail[sl],
            teacher.vocab_size,
            teacher.made_at_temperature,
        )
    if isinstance(teacher, DenseSignal):
        return DenseSignal(teacher.logprobs[sl], teacher.made_at_temperature)
    if teacher_head_weight is not None:
        with torch.no_grad():
            return _project(
                fp32_or_wider(teacher[sl]),
                fp32_or_wider(teacher_head_weight),
                None if teacher_head_bias is None else fp32_or_wider(teacher_head_bias),
                logit_scale,
                softcap,
            )
    return teacher[sl]


class _ChunkedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_hidden_or_logits, box):
        opts = box["opts"]
        n = hidden.shape[0]
        acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        grad_h = torch.zeros(hidden.shape, dtype=acc_dtype, device=hidden.device)
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
        grad_b = (
            None if bias is None else torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device)
        )
        w = weight.detach().to(acc_dtype).requires_grad_(True)
        b = None if bias is None else bias.detach().to(acc_dtype).requires_grad_(True)
        numer = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        soft = torch.zeros_like(numer)
        hard = torch.zeros_like(numer)
        count = torch.zeros((), dtype=torch.long, device=hidden.device)
        teacher = box["teacher"] if box["teacher"] is not None else teacher_hidden_or_logits
        for start in range(0, n, opts["chunk_size"]):
            sl = slice(start, min(start + opts["chunk_size"], n))
            labels = None if box["labels"] is None else box["labels"][sl]
            if labels is not None and not bool((labels != opts["ignore_index"]).any()):
                continue  # an all-masked chunk contributes exactly 0
            with torch.enable_grad():
                h = hidden[sl].detach().to(acc_dtype).requires_grad_(True)
                logits = _project(h, w, b, opts["logit_scale"], opts["softcap"])
                if teacher is None:  # no teacher: the hard term only (the baseline)
                    ce = F.cross_entropy(
                        logits, labels, ignore_index=opts["ignore_index"], reduction="sum"
                    )
                    sums = KDSums(0.0 * ce, ce, (labels != opts["ignore_index"]).sum())
                else:
                    t_chunk = _teacher_chunk(
                        teacher,
                        sl,
                        box["t_weight"],
                        box["t_bias"],
                        opts["logit_scale"],
                        opts["softcap"],
                    )
                    sums = kd_sums(
                        logits,
                        t_chunk,
                        labels,
                        kd_temperature=opts["t"],
                        divergence=opts["divergence"],
                        beta=opts["beta"],
                        skew_alpha=opts["skew_alpha"],
                        ignore_index=opts["ignore_index"],
                        compute_hard=opts["hard_w"] != 0 and labels is not None,
                    )
                part = opts["soft_w"] * opts["t2"] * sums.soft_sum + opts["hard_w"] * sums.hard_sum
                inputs = (h, w) if b is None else (h, w, b)
                grads = torch.autograd.grad(part, inputs)
            grad_h[sl] += grads[0]
            grad_w += grads[1]
            if b is not None:
                grad_b += grads[2]
            numer += part.detach()
            soft += sums.soft_sum.detach()
            hard += sums.hard_sum.detach()
            count += sums.count
        denom = box["num_items"]
        if denom is None:
            denom = count.clamp_min(1).to(acc_dtype)
        elif isinstance(denom, torch.Tensor):
            denom = denom.to(hidden.device, acc_dtype).clamp_min(1.0)
        else:
            denom = max(float(denom), 1.0)
        box["sums"] = KDSums(soft, hard, count)
        ctx.save_for_backward(
            grad_h / denom, grad_w / denom, *(() if grad_b is None else (grad_b / denom,))
        )
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return (numer / denom).to(torch.float32 if acc_dtype == torch.float32 else acc_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        gh = (saved[0] * grad_out).to(ctx.dtypes[0])
        gw = (saved[1] * grad_out).to(ctx.dtypes[1])
        gb = (saved[2] * grad_out).to(ctx.dtypes[2]) if len(saved) > 2 else None
        return gh, gw, gb, None, None


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
    chunk_size: int = 1024,
    head_bias: torch.Tensor | None = None,
    logit_scale: float | None = None,
    softcap: float | None = None,
    teacher_head_weight: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, KDSums]:
    """KD loss over ``N`` positions without holding ``(N, V)`` student logits.

    Args:
        student_hidden: ``(N, H)`` final hidden states (after the final norm).
        head_weight: ``(V, H)`` output head; ``head_bias`` ``(V,)`` optional. Student logits
            are ``hidden @ W.T + b``, times ``logit_scale``, then soft-capped
            ``softcap * tanh(logits / softcap)`` where the model does so.
        teacher: ``(N, V)`` logits; or ``(N, H_t)`` hidden states with
            ``teacher_head_weight`` ``(V, H_t)`` (same scale/cap); or a Dense/SparseSignal
            over the N positions.
        labels: ``(N,)`` aligned targets, ``ignore_index`` masked; None: all positions count.
        num_items: global valid-position count to divide by (default: this call's count).

    Returns:
        ``(loss, sums)``: the scalar loss (differentiable w.r.t. hidden, head weight and
        bias) and detached :class:`KDSums` for logging. Equals :func:`kd_loss` on the full
        logits.
    """
    check_weights(soft_weight, hard_weight)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if student_hidden.dim() != 2 or head_weight.dim() != 2:
        raise ValueError(
            "student_hidden must be (N, H) and head_weight (V, H); flatten batch and sequence first"
        )
    if head_weight.shape[1] != student_hidden.shape[1]:
        raise ValueError(
            f"hidden size mismatch: hidden {tuple(student_hidden.shape)} vs head "
            f"{tuple(head_weight.shape)}"
        )
    opts = {
        "chunk_size": chunk_size,
        "t": kd_temperature,
        "divergence": divergence,
        "beta": beta,
        "skew_alpha": skew_alpha,
        "ignore_index": ignore_index,
        "soft_w": soft_weight,
        "hard_w": hard_weight if labels is not None else 0.0,
        "t2": kd_temperature**2 if scale_by_t2 else 1.0,
        "logit_scale": logit_scale,
        "softcap": softcap,
    }
    if teacher is None and labels is None:
        raise ValueError("chunked_kd_loss: without a teacher, labels are required (hard term)")
    is_tensor = isinstance(teacher, torch.Tensor)
    box = {
        "opts": opts,
        "labels": labels,
        "num_items": num_items,
        "teacher": None if is_tensor else teacher,
        "t_weight": teacher_head_weight,
        "t_bias": teacher_head_bias,
    }
    t_arg = teacher.detach() if is_tensor else None
    loss = _ChunkedKD.apply(student_hidden, head_weight, head_bias, t_arg, box)
    return loss, box["sums"]
