"""Loss terms beyond the logit terms (``kd`` and ``ce``): named, weighted, registered.

A term is a ``torch.nn.Module`` with ``teacher_states`` (indices into the teacher's
``hidden_states`` it reads) and ``forward(student_states, teacher_states, valid) -> sum``, a
sum over valid positions; the trainer adds ``weight(step) * sum`` to the objective's
numerator and divides once by the global count of valid positions. A term may own
parameters (projections): they join the optimizer and are saved in each checkpoint as
``loss_terms.safetensors``, never in the student's model folder.

:func:`register_loss_term` makes a term nameable in ``distill.terms`` (its settings class is
registered with :func:`kdistill.config.schema.register_term_spec`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdistill.errors import InputError
from kdistill.losses.hidden import HiddenStateTerm, default_layer_map
from kdistill.schedules import Schedule, as_schedule

TERM_STATE_FILE = "loss_terms.safetensors"

# name -> factory(settings: dict, *, student, teacher_model) -> torch.nn.Module
LOSS_TERMS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_loss_term(name: str, factory: Callable[..., torch.nn.Module]) -> None:
    LOSS_TERMS[name] = factory


@dataclass
class TermSlot:
    """One extra term in a run: its name, module and (scheduled) weight."""

    name: str
    module: torch.nn.Module
    weight: Schedule


def _hidden(settings: dict, *, student, teacher_model) -> HiddenStateTerm:
    if teacher_model is None:
        raise InputError(
            "distill.terms: the hidden term needs teacher.kind=model (a teacher "
            "model whose hidden states it reads)"
        )
    n_t = teacher_model.config.num_hidden_layers
    n_s = student.config.num_hidden_layers
    layer_map = settings.get("layer_map")
    if not layer_map:
        kept = getattr(student.config, "kdistill_teacher_layers", None)
        if not kept:
            raise InputError(
                "distill.terms: hidden needs layer_map ({student_layer: teacher_layer}) for a "
                "student not cut from the teacher"
            )
        try:
            layer_map = default_layer_map(list(kept), n_t)
        except ValueError as e:  # e.g. a chain stage's student cut from another model
            raise InputError(
                f"distill.terms: hidden's default layer map does not fit this teacher ({e}: "
                "the student was cut from another model); give layer_map "
                "{student_layer: teacher_layer}"
            ) from None
    for s, t in layer_map.items():
        if not (0 <= int(s) < n_s and 0 <= int(t) < n_t):
            raise InputError(
                f"distill.terms: hidden layer_map {s}: {t} is out of range (student has {n_s} "
                f"layers, teacher {n_t})"
            )
    return HiddenStateTerm(
        layer_map, student.config.hidden_size, teacher_model.config.hidden_size, settings["loss"]
    )


register_loss_term("hidden", _hidden)


def build_terms(settings: list[dict], *, student, teacher_model) -> list[TermSlot]:
    slots = []
    for s in settings:
        module = LOSS_TERMS[s["name"]](s, student=student, teacher_model=teacher_model)
        slots.append(TermSlot(s["name"], module, as_schedule(s.get("weight", 1.0))))
    return slots


def term_state(slots: list[TermSlot]) -> dict[str, torch.Tensor]:
    return {
        f"{slot.name}.{k}": v.detach().contiguous().cpu()
        for slot in slots
        for k, v in slot.module.state_dict().items()
    }


def load_term_state(slots: list[TermSlot], state: dict[str, torch.Tensor]) -> None:
    for slot in slots:
        prefix = f"{slot.name}."
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if own or slot.module.state_dict():
            slot.module.load_state_dict(own)
