"""A teacher model in memory (the online path): one forward per micro-batch, no gradients."""

from __future__ import annotations

import torch

from kdistill.models.placement import on_model
from kdistill.teachers.base import EXAMPLE_INDEX, TeacherSignal, Want


class ModelTeacher:
    """Wraps a frozen module returning logits (``.logits`` or a tensor)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    def to(self, device) -> ModelTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def signal(self, batch, *, want: Want) -> TeacherSignal:
        inputs = on_model({k: v for k, v in batch.items() if k != EXAMPLE_INDEX}, self.model)
        if want.form == "hidden":
            out = self.model(**inputs, output_hidden_states=True, logits_to_keep=1)
            head = self.model.get_output_embeddings()
            return TeacherSignal(
                hidden=out.hidden_states[-1],
                head_weight=head.weight,
                head_bias=getattr(head, "bias", None),
                layers={k: out.hidden_states[k] for k in want.layers},
            )
        if want.layers:
            out = self.model(**inputs, output_hidden_states=True)
            layers = {k: out.hidden_states[k] for k in want.layers}
        else:
            out, layers = self.model(**inputs), {}
        logits = out.logits if hasattr(out, "logits") else out
        return TeacherSignal(logits=logits, layers=layers)
