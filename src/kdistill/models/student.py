"""Build a student from a teacher (DistilBERT-style layer selection, optional narrower width).

Works for decoder LMs whose blocks live at ``model.model.layers`` (Llama, Mistral, Qwen2,
SmolLM, Gemma, ...). Kept layers are copied with their weights, plus embeddings, final norm
and head; tied embeddings stay tied. A narrower student (``hidden_size`` or
``intermediate_size`` set) keeps the architecture but is randomly initialised.
"""

from __future__ import annotations

import copy

import torch

from kdistill.errors import InputError


def select_layers(
    n_layers: int, keep_layers: list[int] | None = None, every: int | None = None
) -> list[int]:
    """Teacher layer indices to keep.

    ``keep_layers`` explicit list (negative indices allowed), or ``every`` = k keeps layers
    0, k, 2k, ... and always the last layer (so the top of the stack, next to the head, stays).
    """
    if (keep_layers is None) == (every is None):
        raise InputError("student: give exactly one of keep_layers (a list) or every (an int >= 1)")
    if every is not None:
        if every < 1:
            raise InputError(f"student.every must be >= 1, got {every}")
        chosen = list(range(0, n_layers, every))
        if chosen[-1] != n_layers - 1:
            chosen.append(n_layers - 1)
        return chosen
    out = []
    for i in keep_layers:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise InputError(
                f"student.keep_layers has {i}, but the teacher has {n_layers} layers "
                f"(0..{n_layers - 1})"
            )
        out.append(j)
    if len(set(out)) != len(out) or not out:
        raise InputError(f"student.keep_layers must be non-empty and distinct, got {keep_layers}")
    return sorted(out)


def _blocks(model) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(
            f"cannot build a student from {type(model).__name__}: expected decoder blocks at "
            "model.model.layers (Llama-style); give the student as its own model instead"
        )
    return layers


def build_student_from_teacher(
    teacher,
    *,
    keep_layers: list[int] | None = None,
    every: int | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    seed: int = 0,
):
    """A new student model (trainable, fp32) derived from ``teacher``.

    Returns the student; its ``config.kdistill_teacher_layers`` records the kept indices.
    """
    from transformers import AutoModelForCausalLM

    blocks = _blocks(teacher)
    chosen = select_layers(len(blocks), keep_layers, every)
    config = copy.deepcopy(teacher.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.num_hidden_layers = len(chosen)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in chosen]
    narrow = hidden_size is not None or intermediate_size is not None
    if hidden_size is not None:
        heads = config.num_attention_heads
        if hidden_size % heads:
            raise InputError(
                f"student.hidden_size {hidden_size} must be divisible by "
                f"num_attention_heads {heads}"
            )
        config.hidden_size = hidden_size
        config.head_dim = hidden_size // heads
    if intermediate_size is not None:
        config.intermediate_size = intermediate_size
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if not narrow:
        s_blocks = _blocks(student)
        with torch.no_grad():
            for dst, src in zip(s_blocks, chosen, strict=True):
                dst.load_state_dict(blocks[src].state_dict())
            student.model.embed_tokens.load_state_dict(teacher.model.embed_tokens.state_dict())
            student.model.norm.load_state_dict(teacher.model.norm.state_dict())
            if not config.tie_word_embeddings:
                student.lm_head.load_state_dict(teacher.lm_head.state_dict())
    if config.tie_word_embeddings:
        student.tie_weights()
    student.config.kdistill_teacher_layers = chosen
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    return student
