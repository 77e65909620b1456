"""Build a student from a teacher: kept layers (every k-th, a list, or ranked by importance)
and optionally a narrower width sliced from the teacher's most important units.

Works for decoder LMs whose blocks live at ``model.model.layers`` (Llama, Mistral, Qwen2,
SmolLM, Gemma, ...). Kept layers are copied with their weights, plus embeddings, final norm
and head; tied embeddings stay tied. Importance ranking and slicing: :mod:`kdistill.models.prune`.
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
    from kdistill.models.prune import decoder_blocks

    return decoder_blocks(model, "build a student from")[1]


def build_student_from_teacher(
    teacher,
    *,
    keep_layers: list[int] | None = None,
    every: int | None = None,
    layers: int | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_key_value_heads: int | None = None,
    depth_metric: str = "block_influence",
    calibration: list[torch.Tensor] | None = None,
    seed: int = 0,
    init: str = "teacher",
):
    """A new student model (trainable, fp32) derived from ``teacher``.

    Depth: ``keep_layers`` (explicit), ``every`` (every k-th and the last) or ``layers`` (a
    count, the most important by ``depth_metric`` on ``calibration``). Width (``hidden_size``,
    ``intermediate_size``, ``num_key_value_heads``): the most important channels, neurons and
    KV groups on ``calibration``, sliced from the teacher's weights
    (:mod:`kdistill.models.prune`). ``config.kdistill_teacher_layers`` records the kept layers;
    with importance pruning, ``student.kdistill_pruning`` holds indices and scores.
    ``init="random"`` keeps that shape but draws every weight afresh (a from-scratch model).
    """
    from kdistill.models.prune import apply_plan, measure_importance, plan_pruning, prune_summary

    blocks = _blocks(teacher)
    if sum(x is not None for x in (keep_layers, every, layers)) != 1:
        raise InputError(
            "student: give exactly one of keep_layers (a list), every or layers (ints)"
        )
    chosen = None if layers is not None else select_layers(len(blocks), keep_layers, every)
    width = (hidden_size, intermediate_size, num_key_value_heads)
    if chosen is not None and all(w is None for w in width) and depth_metric == "block_influence":
        student = _copy_layers(teacher, blocks, chosen, seed)
        student.kdistill_pruning = None
    else:
        if calibration is None:
            raise InputError(
                "student: importance pruning (layers, hidden_size, intermediate_size, "
                "num_key_value_heads) needs calibration blocks from the training data"
            )
        imp = measure_importance(teacher, calibration, skip_kl=depth_metric == "skip_kl")
        plan = plan_pruning(
            teacher,
            imp,
            layers=chosen if chosen is not None else layers,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_key_value_heads=num_key_value_heads,
            depth_metric=depth_metric,
        )
        student = apply_plan(teacher, plan, seed=seed)
        chosen = plan.layers
        student.kdistill_pruning = prune_summary(plan, imp)
        student.config.kdistill_pruning = {
            "depth_metric": depth_metric if layers is not None else "given",
            "calibration_tokens": imp.calibration_tokens,
            "hidden_size": student.config.hidden_size,
            "intermediate_size": student.config.intermediate_size,
            "num_key_value_heads": student.config.num_key_value_heads,
        }
    student.config.kdistill_teacher_layers = chosen
    if init == "random":
        _draw_afresh(student, seed)
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def _draw_afresh(student, seed: int) -> None:
    """Replace every weight by the architecture's own initialisation, seeded."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(copy.deepcopy(student.config), dtype=torch.float32)
    student.load_state_dict(fresh.state_dict())
    student.config.kdistill_init = "random"


def _copy_layers(teacher, blocks, chosen: list[int], seed: int):
    """The kept blocks copied whole, with embeddings, final norm and head."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(teacher.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.num_hidden_layers = len(chosen)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in chosen]
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
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
    return student
