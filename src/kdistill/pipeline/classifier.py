"""Classifier distillation (Fashion-MNIST): stage 1 teacher, stage 2 student, same engine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from kdistill.config import builders
from kdistill.config.schema import RunConfig
from kdistill.pipeline.run_dir import is_done, prepare_run_dir


def _datasets(cfg: RunConfig):
    from kdistill.data.fashion_mnist import ImageDataset, load_split

    if cfg.data.source != "fashion-mnist":
        raise ValueError(f"classifier data.source must be fashion-mnist, got {cfg.data.source!r}")
    train = ImageDataset(*load_split("train", limit=cfg.data.max_train_examples, seed=cfg.seed))
    held = ImageDataset(*load_split("test", limit=cfg.data.max_eval_tokens, seed=cfg.seed))
    return train, held


@torch.no_grad()
def evaluate_classifiers(models: dict, teacher_name: str | None, held) -> dict:
    from kdistill.eval import metrics
    from kdistill.models.loading import count_params

    x, y = held.images, held.labels
    logits = {}
    for name, m in models.items():
        m.eval()
        t0 = time.perf_counter()
        logits[name] = torch.cat([m(pixel_values=x[i : i + 512]) for i in range(0, len(y), 512)])
        logits[name + "__s"] = time.perf_counter() - t0
    out = {}
    for name in models:
        lg = logits[name]
        pred = lg.argmax(-1)
        probs = torch.softmax(lg.float(), -1)
        conf = probs.max(-1).values
        bins = metrics.calibration_bins(conf, pred == y)
        valid = torch.ones_like(y, dtype=torch.bool)
        r = {
            "accuracy": float((pred == y).float().mean()),
            "per_class_accuracy": [float((pred[y == c] == c).float().mean()) for c in range(10)],
            "ece": metrics.expected_calibration_error(*bins),
            "params": count_params(models[name]),
            "examples_per_s": len(y) / logits[name + "__s"],
        }
        if teacher_name is not None:
            t = logits[teacher_name]
            r["top1_agreement"] = metrics.agreement_count(t, lg, valid) / len(y)
            r["kl_to_teacher"] = metrics.kl_sum(t, lg, valid) / len(y)
        out[name] = r
    return out


def _train(cfg: RunConfig, model, teacher, run_dir: Path, schedules_kwargs: dict):
    from transformers import TrainingArguments

    from kdistill.data.fashion_mnist import collate_images
    from kdistill.training.checkpoint import CompleteMarker, latest_complete_checkpoint
    from kdistill.training.step import KDSchedules
    from kdistill.training.trainer import KDTrainer

    train, _ = _datasets(cfg)
    ckpt = run_dir / "checkpoints"
    trainer = KDTrainer(
        model=model,
        args=TrainingArguments(**builders.training_arguments_kwargs(cfg, str(ckpt))),
        train_dataset=train,
        data_collator=collate_images,
        teacher=teacher,
        schedules=KDSchedules.build(**schedules_kwargs),
        log_path=run_dir / "kd_log.jsonl",
        callbacks=[CompleteMarker()],
        **builders.objective_kwargs(cfg),
    )
    last = latest_complete_checkpoint(ckpt)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    return trainer, time.perf_counter() - t0


def _finish(cfg, run_dir: Path, model, spec: dict, models: dict, teacher_name, seconds):
    from kdistill.models.classifiers import save_classifier

    save_classifier(model, spec, run_dir / "model")
    _, held = _datasets(cfg)
    results = evaluate_classifiers(models, teacher_name, held)
    results["train_seconds"] = seconds
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(run_dir / "results.json")
    me = results["student" if "student" in results else "teacher"]
    line = f"accuracy {me['accuracy']:.3f}"
    if "top1_agreement" in me:
        line += f", agreement with teacher {me['top1_agreement']:.3f}"
        line += f" (teacher accuracy {results['teacher']['accuracy']:.3f})"
    print(f"[kdistill] {run_dir}: {line}")
    return run_dir


def run_train_teacher_classifier(cfg: RunConfig, *, fresh: bool = False) -> Path:
    from kdistill.models.classifiers import classifier_from_spec

    run_dir = prepare_run_dir(cfg, fresh=fresh)
    if is_done(run_dir) and not fresh:
        print(f"[kdistill] {run_dir} is already complete; pass --fresh to retrain")
        return run_dir
    torch.manual_seed(cfg.seed)
    model, spec = classifier_from_spec(
        cfg.teacher.model or "cnn", cfg.teacher.channels, cfg.teacher.hidden
    )
    sched = {**builders.schedule_kwargs(cfg), "soft_weight": 0.0, "hard_weight": 1.0}
    trainer, seconds = _train(cfg, model, None, run_dir, sched)
    return _finish(cfg, run_dir, trainer.model, spec, {"teacher": trainer.model}, None, seconds)


def run_distill_classifier(cfg: RunConfig, *, fresh: bool = False) -> Path:
    from kdistill.models.classifiers import classifier_from_spec, load_classifier
    from kdistill.models.loading import freeze

    run_dir = prepare_run_dir(cfg, fresh=fresh)
    if is_done(run_dir) and not fresh:
        print(f"[kdistill] {run_dir} is already complete; pass --fresh to retrain")
        return run_dir
    if not cfg.teacher.model:
        raise ValueError(
            "teacher.model: give the trained teacher's folder (kdistill "
            "train-teacher writes it to <output_dir>/model)"
        )
    teacher, _ = load_classifier(cfg.teacher.model)
    freeze(teacher)
    torch.manual_seed(cfg.seed)
    student, spec = classifier_from_spec(
        cfg.student.model or "mlp", cfg.student.channels, cfg.student.hidden
    )
    online = None if cfg.distill.baseline else teacher
    trainer, seconds = _train(cfg, student, online, run_dir, builders.schedule_kwargs(cfg))
    return _finish(
        cfg,
        run_dir,
        trainer.model,
        spec,
        {"teacher": teacher, "student": trainer.model},
        "teacher",
        seconds,
    )
