"""Logits from final hidden states and an output head. PURE module.

One projection for every place that makes logits a chunk at a time: the chunked KD loss
(student and same-vocabulary teacher) and a teacher over another vocabulary."""

from __future__ import annotations

import torch


def project_logits(hidden, weight, bias=None, logit_scale=None, softcap=None) -> torch.Tensor:
    """Logits ``(C, V)`` from hidden ``(C, H)``: ``hidden @ W.T + b``, scaled, soft-capped."""
    logits = hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)
    if logit_scale is not None:
        logits = logits * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits
