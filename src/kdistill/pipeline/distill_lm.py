"""Distil (or train) a causal LM from a RunConfig: the product's main job."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from kdistill.config import builders
from kdistill.config.schema import RunConfig
from kdistill.errors import InputError, Preempted
from kdistill.files import atomic_write_json
from kdistill.log import get_logger
from kdistill.pipeline.run_dir import DONE, RunFolder, open_run, save_final_model

log = get_logger(__name__)


def _threads(cfg: RunConfig) -> None:
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)


def calibration_blocks(dataset, n: int) -> list[torch.Tensor]:
    """``n`` training blocks spread evenly over ``dataset`` (a stream's first ``n``), each a
    (1, T) id tensor: the text importance pruning measures on."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        import itertools

        return [b["input_ids"].unsqueeze(0) for b in itertools.islice(dataset.fresh(), n)]
    if len(dataset) == 0:
        raise InputError("pruning needs calibration text, but the training split is empty")
    n = min(n, len(dataset))
    idx = sorted({(i * len(dataset)) // n for i in range(n)})
    return [dataset[i]["input_ids"].unsqueeze(0) for i in idx]


def load_models(cfg: RunConfig, *, need_teacher: bool, calibration=None):
    """(teacher or None, student, tokenizer, vocab_size, teacher's tokenizer) as the config
    says. The tokenizer is the one the data is tokenised with: the student's (which is the
    teacher's unless ``teacher.kind`` is ``aligned``, a teacher with its own tokenizer).

    ``calibration``: tokenizer -> the training dataset, for a student pruned by importance."""
    from kdistill.models.loading import load_causal_lm
    from kdistill.models.student import build_student_from_teacher
    from kdistill.models.vocab import shared_vocab_size

    teacher, tok = None, None
    student_from = builders.student_kwargs(cfg)
    cut_from, own_vocab = None, None
    if student_from is not None:
        cut_from = student_from.pop("model", None) or cfg.teacher.model
    # a student cut from the teacher is cut from its fp32 weights; the teacher is cast after
    cast_after = cfg.teacher.dtype != "float32" and (
        cfg.teacher.dtype == "int8" or cut_from == cfg.teacher.model
    )
    t_dtype = "float32" if cast_after else cfg.teacher.dtype
    if need_teacher or cut_from == cfg.teacher.model:
        teacher, tok = load_causal_lm(cfg.teacher.model, t_dtype, frozen=True)
    if student_from is not None:
        source, s_tok = teacher, tok
        if cut_from != cfg.teacher.model:
            source, s_tok = load_causal_lm(cut_from, t_dtype, frozen=True)
        n_calib = student_from.pop("calibration_blocks")
        own_vocab = student_from.pop("tokenizer_vocab", None)
        if calibration is not None and needs_calibration(student_from):
            student_from["calibration"] = calibration_blocks(calibration(s_tok), n_calib)
        student = build_student_from_teacher(source, seed=cfg.seed, **student_from)
        if student.kdistill_pruning is not None:
            kept = student.config.kdistill_teacher_layers
            log.info(f"student pruned by importance: teacher layers {kept}")
        if own_vocab:
            s_tok = _own_tokenizer(cfg, student, s_tok, own_vocab)
    elif cfg.student.model:
        student, s_tok = load_causal_lm(cfg.student.model, cfg.student.dtype)
        student.train()
    else:
        raise InputError("student: set student.model or student.from_teacher")
    if tok is None:
        tok = s_tok
    t_tok = tok
    vocab = len(tok)
    if cfg.teacher.kind == "aligned" or own_vocab:
        # the student's tokens are the data; a teacher with another tokenizer aligns to them
        tok, vocab = s_tok, len(s_tok)
        if student.get_output_embeddings().weight.shape[0] < vocab:
            raise InputError(
                f"the student's output dim is smaller than its tokenizer's {vocab} ids; the "
                "checkpoint does not match its tokenizer"
            )
    elif teacher is not None:
        vocab = shared_vocab_size(
            tok,
            s_tok,
            teacher.get_output_embeddings().weight.shape[0],
            student.get_output_embeddings().weight.shape[0],
        )
    if not need_teacher:
        teacher = None
    elif cast_after and cfg.teacher.dtype == "int8":
        from kdistill.models.quantize import quantize_teacher_int8

        quantize_teacher_int8(teacher)
    elif cast_after:
        teacher.to(getattr(torch, cfg.teacher.dtype))
    return teacher, student, tok, vocab, t_tok


def _own_tokenizer(cfg: RunConfig, student, source_tok, vocab_size: int):
    """Train the student's own tokenizer on the training split and re-embed the student."""
    from kdistill.data.lm import training_texts
    from kdistill.models.small_vocab import revocab, train_tokenizer

    d = cfg.data
    texts = training_texts(
        d.source,
        held_out_fraction=d.held_out_fraction,
        validation_fraction=d.validation_fraction,
        seed=cfg.seed,
        text_field=d.text_field,
        **builders.source_kwargs(cfg),
    )
    new_tok = train_tokenizer(texts, vocab_size, like=source_tok)
    info = revocab(student, source_tok, new_tok)
    log.info(
        f"student tokenizer: {info['tokenizer_vocab']} ids trained on {len(texts)} training "
        f"records; {info['rows_copied']} embeddings copied, {info['rows_from_pieces']} from "
        f"pieces; parameters {info['parameters_before']:,} -> {info['parameters_after']:,}"
    )
    return new_tok


def needs_calibration(student_from: dict) -> bool:
    keys = ("layers", "hidden_size", "intermediate_size", "num_key_value_heads")
    return any(student_from.get(k) is not None for k in keys) or (
        student_from.get("depth_metric", "block_influence") != "block_influence"
    )


def _teacher(cfg: RunConfig, model, tok, train_ds, vocab: int, t_tok=None):
    """The run's teacher, built by its kind (``teacher.kind``)."""
    from kdistill.data.lm import training_chats
    from kdistill.teachers.kinds import build_teacher

    chats = None
    if cfg.teacher.kind == "aligned":  # chats: each model renders its own template
        d = cfg.data
        chats = training_chats(
            d.source,
            held_out_fraction=d.held_out_fraction,
            validation_fraction=d.validation_fraction,
            seed=cfg.seed,
            text_field=d.text_field,
            **builders.source_kwargs(cfg),
        )
    teacher = build_teacher(
        cfg.teacher.kind,
        builders.teacher_settings(cfg),
        model=model,
        tokenizer=tok,
        teacher_tokenizer=t_tok,
        chats=chats,
        dataset=train_ds,
        vocab_size=vocab,
        block_size=cfg.data.block_size,
    )
    stats = getattr(train_ds, "signal_stats", None)
    if stats is not None:
        log.info(stats.line())
    return teacher


def run_distill_lm(
    cfg: RunConfig,
    *,
    fresh: bool = False,
    resume: bool = True,
    allow_teacher_change: bool = False,
    callbacks: tuple = (),
) -> Path:
    """Train the student; returns the run folder (``model/`` holds the final student).

    Checks everything that needs no model first, then claims the folder; a finished run is
    left untouched; ``config.yaml`` is written once models and data have loaded.
    ``callbacks``: more ``TrainerCallback`` objects for the run's trainer."""
    from kdistill.pipeline.preflight import check_lm_run

    _threads(cfg)
    check_lm_run(cfg, allow_teacher_change=allow_teacher_change)
    with open_run(cfg, fresh=fresh) as run:
        if run.done:
            log.info(f"{run.path} is already complete; pass --fresh to retrain")
            return run.path
        if resume and builders.fsdp_sharded(cfg):  # before any model loads
            from kdistill.training.checkpoint import latest_complete_checkpoint

            last = latest_complete_checkpoint(run.path / "checkpoints")
            if last is not None:
                raise InputError(
                    f"{last}: a sharded (FSDP) run keeps its weights but not its optimizer "
                    "state, so it does not resume yet; pass --fresh to start it again"
                )
        return _train_lm(cfg, run, resume, callbacks)


def _train_lm(cfg: RunConfig, run: RunFolder, resume: bool, extra_callbacks=()) -> Path:
    from transformers import TrainingArguments, set_seed

    from kdistill.data.lm import CausalCollator, IndexedDataset, build_lm_datasets
    from kdistill.training.checkpoint import CompleteMarker, latest_complete_checkpoint
    from kdistill.training.on_policy import OnPolicy
    from kdistill.training.preemption import PreemptionCallback
    from kdistill.training.step import KDSchedules
    from kdistill.training.trainer import KDTrainer

    run_dir = run.path
    ckpt_dir = run_dir / "checkpoints"
    set_seed(cfg.seed)
    from kdistill.teachers.kinds import needs_model

    built = {}

    last = latest_complete_checkpoint(ckpt_dir) if resume else None
    start = None
    if cfg.data.streaming and last is not None:  # the stream resumes where training stopped
        from kdistill.data.streaming import resume_position

        t = cfg.training
        world = int(os.environ.get("WORLD_SIZE", "1"))
        start = resume_position(
            last, t.per_device_batch_size * t.gradient_accumulation_steps * world
        )

    def lm_data(tokenizer):  # built once per tokenizer (a student may get its own)
        if id(tokenizer) not in built:
            kwargs = builders.data_kwargs(cfg)
            if cfg.data.streaming:
                kwargs["start"] = start
            data = build_lm_datasets(tokenizer, cfg.data.source, **kwargs, held_out=False)
            built[id(tokenizer)] = data
        return built[id(tokenizer)][0]

    teacher, student, tok, vocab, t_tok = load_models(
        cfg, need_teacher=needs_model(cfg.teacher.kind), calibration=lm_data
    )
    if cfg.teacher.kind == "recorded":  # examples + log-probs from the run's recorded store
        from kdistill.teachers.recorded_store import STORE_DIR, recorded_datasets

        train_ds, _ = recorded_datasets(
            tok, cfg.data.source, **builders.data_kwargs(cfg), store_dir=run_dir / STORE_DIR
        )
    else:
        train_ds = lm_data(tok)
    kd_teacher = _teacher(cfg, teacher, tok, train_ds, vocab, t_tok)
    if cfg.student.lora is not None:  # the base frozen, adapters trained
        from kdistill.models.lora import apply_lora, trainable_share

        student = apply_lora(student, **cfg.student.lora.model_dump())
        share = trainable_share(student)
        log.info(
            f"LoRA student: {share['trainable_params']:,} trainable of "
            f"{share['all_params']:,} parameters"
        )
    from kdistill.training.terms import build_terms

    terms = build_terms(builders.term_settings(cfg), student=student, teacher_model=teacher)
    collator = CausalCollator(tok.pad_token_id)
    args = TrainingArguments(**builders.training_arguments_kwargs(cfg, str(ckpt_dir)))
    fsdp = cfg.training.fsdp
    if builders.fsdp_sharded(cfg):  # FSDP2 over the run's processes
        from kdistill.training.sharding import shard_model

        kind = args.device.type  # the process group exists from here; the training device
        student = shard_model(student, device_type=kind)
        if fsdp.teacher == "shard" and teacher is not None:
            shard_model(teacher, keep_ends=False, device_type=kind)
    preemption = PreemptionCallback()
    callbacks = [CompleteMarker(), preemption, *extra_callbacks]
    if cfg.data.streaming:  # each checkpoint keeps the stream position it resumes from
        from kdistill.data.streaming import StreamPositionCallback

        callbacks.insert(0, StreamPositionCallback(train_ds))
    op = builders.on_policy_kwargs(cfg)
    trainer = KDTrainer(
        model=student,
        args=args,
        train_dataset=train_ds if cfg.data.streaming else IndexedDataset(train_ds),
        data_collator=collator,
        teacher=kd_teacher,
        terms=terms,
        loss_chunk_size=cfg.training.loss_chunk_size,
        schedules=KDSchedules.build(**builders.schedule_kwargs(cfg)),
        vocab_size=vocab,
        log_path=run_dir / "kd_log.jsonl",
        callbacks=callbacks,
        on_policy=None if op is None else OnPolicy(**op),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        eos_token_ids=() if tok.eos_token_id is None else (tok.eos_token_id,),
        **builders.objective_kwargs(cfg),
    )
    if last is not None:
        log.info(f"resuming from {last}")
    run.save_config(cfg)
    t0 = time.perf_counter()
    with preemption.armed():
        result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    if preemption.signum is not None:
        if builders.fsdp_sharded(cfg):
            log.warning("a sharded (FSDP) run does not resume yet: re-run it with --fresh")
        raise Preempted(preemption.signum, trainer.state.global_step, str(ckpt_dir))
    elapsed = time.perf_counter() - t0
    whole = None
    if builders.fsdp_sharded(cfg):  # every rank takes part in gathering the shards; one writes them
        from kdistill.training.sharding import full_state_dict

        whole = full_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        final = trainer.model
        if cfg.student.lora is not None:  # adapter/ alone, then the merged student as model/
            from kdistill.models.lora import save_adapter_and_merge, trainable_share

            lora_share = trainable_share(final)
            final = save_adapter_and_merge(final, run_dir / "adapter", DONE)
        save_final_model(final, tok, run_dir, state_dict=whole)
        summary = {
            "train_seconds": elapsed,
            "global_step": trainer.state.global_step,
            "train_loss": result.training_loss,
            "train_blocks": None if cfg.data.streaming else len(train_ds),
            # targets the student was updated on by this process (sampled tokens on-policy)
            "target_tokens": trainer.targets_seen,
            "block_size": cfg.data.block_size,
            "baseline": builders.no_teacher(cfg),
            "teacher_kind": cfg.teacher.kind,
            "teacher_signal": getattr(kd_teacher, "summary", lambda: None)(),
            "resumed_from": str(last) if last else None,
            "changed_on_resume": {k: list(v) for k, v in run.changed.items()},
        }
        if fsdp.enabled:
            summary["fsdp"] = fsdp.model_dump()
        if cfg.student.lora is not None:
            summary["lora"] = {**cfg.student.lora.model_dump(), **lora_share}
        atomic_write_json(run_dir / "train_summary.json", summary)
    return run_dir
