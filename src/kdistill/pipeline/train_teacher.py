"""Stage 1: fine-tune the teacher on hard labels through the same engine."""

from __future__ import annotations

from pathlib import Path

from kdistill.config.schema import RunConfig


def teacher_training_config(cfg: RunConfig) -> RunConfig:
    """The run that trains ``teacher.model`` itself with hard labels (no soft term)."""
    data = cfg.model_dump()
    data["student"] = {
        **data["student"],
        "model": cfg.teacher.model,
        "from_teacher": None,
        "lora": None,  # the student's adapters are not the teacher's training
    }
    # an int8 teacher is how it is held while distilling; it trains in fp32
    data["student"]["dtype"] = "float32" if cfg.teacher.dtype == "int8" else cfg.teacher.dtype
    data["teacher"] = {**data["teacher"], "kind": "none"}
    return RunConfig.model_validate(data)


def run_train_teacher(cfg: RunConfig, *, fresh: bool = False) -> Path:
    if cfg.task == "classifier":
        from kdistill.pipeline.classifier import run_train_teacher_classifier

        return run_train_teacher_classifier(cfg, fresh=fresh)
    from kdistill.pipeline.distill_lm import run_distill_lm

    return run_distill_lm(teacher_training_config(cfg), fresh=fresh)
