"""Builders: config objects -> plain keyword arguments for library functions.

Config objects never travel below ``config/``; everything below takes plain values.
"""

from __future__ import annotations

from kdistill.config.schema import RunConfig, ScheduleSpec


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())


def _scalar(v):
    return v.model_dump() if isinstance(v, ScheduleSpec) else float(v)


def schedule_kwargs(cfg: RunConfig) -> dict:
    d = cfg.distill
    return {
        "kd_temperature": _scalar(d.kd_temperature),
        # the no-teacher baseline trains on hard labels only (and logs it that way)
        "soft_weight": 0.0 if no_teacher(cfg) else _scalar(d.soft_weight),
        "hard_weight": 1.0 if no_teacher(cfg) else _scalar(d.hard_weight),
        "beta": _scalar(d.beta),
    }


def _checkpointing_key() -> str:
    """transformers 5.x renamed ``gradient_checkpointing`` to ``activation_checkpointing``
    (the old name warns); use the one the installed version has."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else ("gradient_checkpointing")
    )


def no_teacher(cfg: RunConfig) -> bool:
    """The same-size baseline: ``teacher.kind: none``."""
    return cfg.teacher.kind == "none"


def teacher_settings(cfg: RunConfig) -> dict:
    """The teacher section as plain values (for a teacher kind's factory)."""
    return cfg.teacher.model_dump(mode="json")


def term_settings(cfg: RunConfig) -> list[dict]:
    """``distill.terms`` as plain values, weights as numbers or schedule mappings."""
    out = []
    for t in cfg.distill.terms:
        d = t.model_dump(mode="json")
        d["weight"] = _scalar(t.weight)
        out.append(d)
    return out


def objective_kwargs(cfg: RunConfig) -> dict:
    d = cfg.distill
    return {"divergence": d.divergence, "skew_alpha": d.skew_alpha, "scale_by_t2": d.scale_by_t2}


def on_policy_kwargs(cfg: RunConfig) -> dict | None:
    """``distill.on_policy`` as plain values (None when off, and for the no-teacher
    baseline, which trains on the same data without a teacher to score samples)."""
    op = cfg.distill.on_policy
    if op is None or no_teacher(cfg):
        return None
    return {**op.model_dump(), "seed": cfg.seed}


def student_kwargs(cfg: RunConfig) -> dict | None:
    ft = cfg.student.from_teacher
    return None if ft is None else ft.model_dump()


def source_kwargs(cfg: RunConfig) -> dict:
    """Which part of a hub data set (``data.subset``, ``data.split``) and how it is read
    (``data.streaming``: only when set, so readers of local files need not know it)."""
    parts = {"subset": cfg.data.subset, "split": cfg.data.split}
    if cfg.data.streaming:
        parts["streaming"] = True
    return parts


def data_kwargs(cfg: RunConfig) -> dict:
    d = cfg.data
    return {
        "block_size": d.block_size,
        "held_out_fraction": d.held_out_fraction,
        "validation_fraction": d.validation_fraction,
        "text_field": d.text_field,
        **source_kwargs(cfg),
        "max_train_tokens": d.max_train_tokens,
        "max_eval_tokens": d.max_eval_tokens,
        "seed": cfg.seed,
    }


def fsdp_sharded(cfg: RunConfig) -> bool:
    """``training.fsdp`` on, in a launch of at least 2 processes (torchrun's WORLD_SIZE)."""
    import os

    return cfg.training.fsdp.enabled and int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_arguments_kwargs(cfg: RunConfig, output_dir: str) -> dict:
    t = cfg.training
    kwargs = {
        "output_dir": output_dir,
        "max_steps": t.max_steps,
        # a stream resumes from its saved position (data/streaming.py), not by re-reading
        "ignore_data_skip": cfg.data.streaming,
        "per_device_train_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "logging_steps": t.logging_steps,
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "save_strategy": "steps",
        "bf16": t.bf16,
        _checkpointing_key(): t.gradient_checkpointing,
        "report_to": t.report_to or "none",
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "disable_tqdm": False,
        # Accelerate only sets up multi-process CPU runs (torchrun, gloo) with use_cpu=True
        "use_cpu": cfg.device == "cpu" or not _has_accelerator(),
    }
    if fsdp_sharded(cfg):  # sharded outside Accelerate: transformers keeps the weights only
        kwargs["save_only_model"] = True
    kwargs.update(t.extra)
    return kwargs
