"""Stage 1: fine-tune the teacher on hard labels through the same engine."""

from __future__ import annotations

from pathlib import Path

from kdistill.config.schema import RunConfig


def teacher_training_config(cfg: RunConfig) -> RunConfig:
    """The run that trains ``teacher.model`` itself with hard labels (no soft term)."""
    data = cfg.model_dump()
    data["student"] = {**data["student"], "model": cfg.teacher.model, "from_teacher": None}
    data["student"]["dtype"] = cfg.teacher.dtype
    data["teacher"] = {**data["teacher"], "kind": "none"}
    return RunConfig.model_validate(data)


def run_train_teacher(cfg: RunConfig, *, fresh: bool = False) -> Path:
    if cfg.task == "classifier":
        from kdistill.pipeline.classifier import run_train_teacher_classifier

        return run_train_teacher_classifier(cfg, fresh=fresh)
    from kdistill.pipeline.distill_lm import run_distill_lm

    return run_distill_lm(teacher_training_config(cfg), fresh=fresh)
