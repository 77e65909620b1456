"""Classifier distillation (Fashion-MNIST): stage 1 teacher, stage 2 student, same engine."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch

from kdistill.config import builders
from kdistill.config.schema import RunConfig
from kdistill.errors import InputError, Preempted
from kdistill.files import atomic_write_json, check_output_folder
from kdistill.log import get_logger
from kdistill.pipeline.run_dir import FINAL, RunFolder, open_run

log = get_logger(__name__)


def _check_source(cfg: RunConfig) -> None:
    lm_only = {
        "training.fsdp": cfg.training.fsdp.enabled,
        "student.lora": cfg.student.lora is not None,
        "teacher.dtype=int8": cfg.teacher.dtype == "int8",
        "data.subset": cfg.data.subset is not None,
        "data.split": cfg.data.split != "train",
        "data.streaming": cfg.data.streaming,
        "data.validation_fraction (classifiers: data.validation_examples)": (
            cfg.data.validation_fraction > 0
        ),
    }
    used = [k for k, on in lm_only.items() if on]
    if used:
        raise InputError(
            f"{used[0]} applies to language-model runs; a classifier run has no use for it "
            "(unset it)"
        )
    if cfg.data.source != "fashion-mnist":
        raise InputError(f"classifier data.source must be fashion-mnist, got {cfg.data.source!r}")
    omit = cfg.data.omit_class
    if omit is not None and omit >= 10:
        raise InputError(f"data.omit_class={omit}: Fashion-MNIST classes are 0..9")
    if omit is not None and not cfg.data.validation_examples:
        raise InputError(
            "data.omit_class needs validation images to choose its bias on; set "
            "data.validation_examples (e.g. 5000)"
        )


def _check_augmentation(cfg: RunConfig, *, stage: str) -> None:
    """Mixup blends images whose labels no longer apply: only an online teacher can label
    them (function matching), so it needs a teacher and no hard-label term."""
    if cfg.teacher.ensemble and stage == "teacher":
        raise InputError(
            "teacher.ensemble lists trained teachers to distil from; train each with kdistill "
            "train-teacher (one output_dir each), then give them to kdistill distill"
        )
    if not cfg.data.mixup:
        return
    if stage == "teacher" or builders.no_teacher(cfg):
        raise InputError(
            f"data.mixup={cfg.data.mixup}: blended images need a teacher to label them "
            "(function matching); set data.mixup=0 here (jitter and flip work with labels)"
        )
    if cfg.distill.hard_weight != 0:
        raise InputError(
            f"data.mixup={cfg.data.mixup} with distill.hard_weight={cfg.distill.hard_weight}: "
            "a blended image's label is neither of its images'; set distill.hard_weight=0 "
            "(the teacher labels every blended image)"
        )


def _splits(cfg: RunConfig):
    _check_source(cfg)
    d = cfg.data
    return _split_once(d.validation_examples, d.max_train_examples, cfg.seed, d.omit_class)


@functools.lru_cache(maxsize=1)  # training and validation sets of one run: one decode
def _split_once(n_validation: int, limit, seed: int, omit_class):
    from kdistill.data.fashion_mnist import split_train

    train, val = split_train(n_validation, limit, seed)
    if omit_class is not None:  # the transfer set without that class
        keep = train.labels != omit_class
        train = type(train)(train.images[keep], train.labels[keep], train.source_index[keep])
    return train, val


def _train_set(cfg: RunConfig):
    return _splits(cfg)[0]


def _validation_set(cfg: RunConfig):
    """The training images set aside (``data.validation_examples``), or None."""
    return _splits(cfg)[1] if cfg.data.validation_examples else None


def _held_out_set(cfg: RunConfig):
    """The t10k split, capped at ``data.max_eval_tokens`` examples (a seeded subset)."""
    from kdistill.data.fashion_mnist import ImageDataset, load_split

    _check_source(cfg)
    return ImageDataset(*load_split("test", limit=cfg.data.max_eval_tokens, seed=cfg.seed))


def _teacher_folders(cfg: RunConfig) -> list[str]:
    """The teacher's model folders: ``teacher.model`` and any ``teacher.ensemble``."""
    return [cfg.teacher.model, *cfg.teacher.ensemble] if cfg.teacher.model else []


def _train_split_logits(teacher, folders: list[str], train_set):
    """The teacher's logits for the training images, indexed like the full training split
    (rows of images not trained on: NaN), computed once per (teacher, training subset) and
    kept in kdistill's cache folder, so the runs of a sweep share them."""
    import hashlib

    from safetensors.torch import load_file
    from safetensors.torch import save as save_bytes

    from kdistill.eval.classifier_runner import predict
    from kdistill.files import atomic_write_bytes
    from kdistill.models.bundled import cache_root
    from kdistill.models.identity import local_model_identity

    index = train_set.source_index
    subset = hashlib.sha256(index.numpy().tobytes()).hexdigest()[:16]
    prints = [local_model_identity(str(f))["fingerprint"] for f in folders]
    if len(prints) > 1:  # an ensemble: one key for its members, in their order
        prints = [hashlib.sha256("+".join(prints).encode()).hexdigest()[:16]]
    key = f"{prints[0]}-{subset}"
    path = cache_root() / "classifier-logits" / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["logits"]
        except Exception:  # a damaged cache file is recomputed
            pass
    got = predict(teacher, train_set.images)[0]
    logits = torch.full((int(index.max()) + 1, got.shape[1]), float("nan"))
    logits[index] = got
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save_bytes({"logits": logits.contiguous()}))
    except OSError:  # a read-only cache only costs the forward next time
        pass
    return logits


def _train(
    cfg: RunConfig, model, teacher, run: RunFolder, schedules_kwargs: dict, resume: bool = True
):
    """Train ``model`` with KDTrainer (resuming from the newest complete checkpoint)."""
    from transformers import TrainingArguments

    from kdistill.data.fashion_mnist import ImageCollator
    from kdistill.training.checkpoint import CompleteMarker, latest_complete_checkpoint
    from kdistill.training.preemption import PreemptionCallback
    from kdistill.training.step import KDSchedules
    from kdistill.training.trainer import KDTrainer

    ckpt = run.path / "checkpoints"
    preemption = PreemptionCallback()
    train_set = _train_set(cfg)
    d = cfg.data
    collator = ImageCollator(d.jitter, d.flip, d.mixup)
    if teacher is not None and not collator.augments:
        # the same image every epoch: the teacher's logits once, looked up by index
        from kdistill.teachers.precomputed import PrecomputedTeacher

        folders = _teacher_folders(cfg)
        teacher = PrecomputedTeacher(_train_split_logits(teacher, folders, train_set))
    trainer = KDTrainer(
        model=model,
        args=TrainingArguments(**builders.training_arguments_kwargs(cfg, str(ckpt))),
        train_dataset=train_set,
        data_collator=collator,
        teacher=teacher,
        schedules=KDSchedules.build(**schedules_kwargs),
        log_path=run.path / "kd_log.jsonl",
        callbacks=[CompleteMarker(), preemption],
        **builders.objective_kwargs(cfg),
    )
    last = latest_complete_checkpoint(ckpt) if resume else None
    if last is not None:
        log.info(f"resuming from {last}")
    run.save_config(cfg)
    t0 = time.perf_counter()
    with preemption.armed():
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    if preemption.signum is not None:
        raise Preempted(preemption.signum, trainer.state.global_step, str(ckpt))
    info = {
        "train_seconds": time.perf_counter() - t0,
        "global_step": trainer.state.global_step,
        "resumed_from": str(last) if last else None,
    }
    return trainer, info


def _finish(
    cfg,
    run_dir: Path,
    trainer,
    spec: dict,
    me: str,
    others: dict,
    info: dict,
    other_dirs: dict[str, Path] | None = None,
):
    """Save ``run_dir/model`` atomically, evaluate on the held-out split, write results."""
    from kdistill.models.classifiers import save_classifier

    if not trainer.is_world_process_zero():
        return run_dir
    model = trainer.model
    save_classifier(model, spec, run_dir / FINAL)
    from kdistill.eval.classifier_runner import evaluate_classifiers

    teacher_name = "teacher" if "teacher" in others else None
    dirs = {me: run_dir / FINAL, **(other_dirs or {})}
    from kdistill.data.fashion_mnist import CLASSES

    results = evaluate_classifiers(
        {**others, me: model},
        teacher_name,
        _held_out_set(cfg),
        model_dirs=dirs,
        class_names=list(CLASSES),
    )
    val = _validation_set(cfg)
    if val is not None:  # for choices made without the test set (sweeps)
        from kdistill.eval.classifier_runner import predict

        held = _held_out_set(cfg)
        for name, m in {**others, me: model}.items():
            val_logits = predict(m, val.images)[0]
            hit = val_logits.argmax(-1) == val.labels
            results[name]["validation_accuracy"] = float(hit.float().mean())
            results[name]["validation_examples"] = len(val)
            if cfg.data.omit_class is not None and name == me:
                from kdistill.eval.omitted import omitted_class_report

                test = (predict(m, held.images)[0], held.labels)
                rep = omitted_class_report((val_logits, val.labels), test, cfg.data.omit_class)
                results[name].update(rep)
    results.update(info)
    atomic_write_json(run_dir / "results.json", results)
    line = f"{me} accuracy {results[me]['accuracy']:.3f}"
    if teacher_name is not None and me != teacher_name:
        line += f", agreement with teacher {results[me]['top1_agreement']:.3f}"
        line += f" (teacher accuracy {results[teacher_name]['accuracy']:.3f})"
    log.info(f"{run_dir}: {line}")
    return run_dir


def _start(cfg: RunConfig, fresh: bool):
    """The claimed run folder (check before claiming), or None when it already holds a
    finished run."""
    from kdistill.data.fashion_mnist import check_available
    from kdistill.pipeline.preflight import check_training_extra

    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    check_output_folder(cfg.output_dir, "output_dir")
    _check_source(cfg)
    check_available()
    if cfg.training.extra:
        check_training_extra(cfg.training.extra)
    run = open_run(cfg, fresh=fresh)
    if run.done:
        run.release()
        log.info(f"{run.path} is already complete; pass --fresh to retrain")
        return None
    return run


def run_train_teacher_classifier(cfg: RunConfig, *, fresh: bool = False) -> Path:
    """Stage 1: train ``teacher.model`` (cnn / mlp / a trained folder) on hard labels."""
    from kdistill.models.classifiers import classifier_from_spec

    _check_augmentation(cfg, stage="teacher")
    run = _start(cfg, fresh)
    if run is None:
        return Path(cfg.output_dir)
    with run:
        torch.manual_seed(cfg.seed)
        model, spec = classifier_from_spec(
            cfg.teacher.model or "cnn",
            cfg.teacher.channels,
            cfg.teacher.hidden,
            cfg.teacher.dropout,
        )
        sched = {**builders.schedule_kwargs(cfg), "soft_weight": 0.0, "hard_weight": 1.0}
        trainer, info = _train(cfg, model, None, run, sched)
        return _finish(cfg, run.path, trainer, spec, "teacher", {}, info)


def run_distill_classifier(cfg: RunConfig, *, fresh: bool = False, resume: bool = True) -> Path:
    """Stage 2: distil the trained teacher (``teacher.model`` folder) into ``student.model``.

    With ``teacher.kind: none`` the student trains on hard labels alone; the teacher (if given)
    is then only evaluated beside it, and the student's results are named ``baseline``.
    """
    from kdistill.models.classifiers import (
        EnsembleClassifier,
        classifier_folder,
        classifier_from_spec,
        load_classifier,
    )
    from kdistill.models.loading import freeze

    baseline = builders.no_teacher(cfg)
    if not cfg.teacher.model and not baseline:
        raise InputError(
            "teacher.model: give the trained teacher's folder (kdistill "
            "train-teacher writes it to <output_dir>/model)"
        )
    if cfg.teacher.ensemble and not cfg.teacher.model:
        raise InputError("teacher.ensemble needs teacher.model too (the ensemble's first member)")
    _check_augmentation(cfg, stage="student")
    for folder in _teacher_folders(cfg):  # exist and are classifiers, before anything is made
        classifier_folder(folder)
    run = _start(cfg, fresh)
    if run is None:
        return Path(cfg.output_dir)
    with run:
        teacher = None
        if cfg.teacher.model:
            members = [load_classifier(f)[0] for f in _teacher_folders(cfg)]
            teacher = members[0] if len(members) == 1 else EnsembleClassifier(members)
            freeze(teacher)
        torch.manual_seed(cfg.seed)
        student, spec = classifier_from_spec(
            cfg.student.model or "mlp",
            cfg.student.channels,
            cfg.student.hidden,
            cfg.student.dropout,
        )
        online = None if baseline else teacher
        sched = builders.schedule_kwargs(cfg)
        trainer, info = _train(cfg, student, online, run, sched, resume)
        others = {} if teacher is None else {"teacher": teacher}
        me = "baseline" if baseline else "student"
        dirs = {}
        if teacher is not None:  # an ensemble's size: all its members'
            dirs = {"teacher": [classifier_folder(f) for f in _teacher_folders(cfg)]}
        return _finish(cfg, run.path, trainer, spec, me, others, info, dirs)
