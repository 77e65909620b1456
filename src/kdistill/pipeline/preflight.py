"""Validation that needs no model, run before any model loads or any folder is created.

Each check raises one :class:`~kdistill.errors.KdistillError` line naming the setting and the
fix: output paths, model files, data files, the teacher-signal store and its teacher,
``training.extra`` keys.
"""

from __future__ import annotations

import dataclasses

from kdistill.config import builders
from kdistill.config.schema import RunConfig
from kdistill.errors import InputError, ProvenanceError
from kdistill.files import check_output_folder
from kdistill.log import say
from kdistill.models.placement import resolve_device


def check_training_extra(extra: dict) -> None:
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(k for k in extra if k not in known)
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise InputError(f"training.extra: {unknown[0]!r} is not a TrainingArguments field{hint}")


def check_store_teacher(
    manifest_teacher: dict, teacher_spec: str, *, allow: bool, where, identity=None
) -> None:
    """The store at ``where`` was made by the run's teacher (``teacher.model``, or the
    ``identity`` given). A store a server filled cannot be checked against a local model:
    the training run says whose it is and trusts the tokenizer check."""
    from kdistill.models.identity import describe, local_model_identity, same_teacher

    if allow:
        return
    recorded = manifest_teacher.get("identity")
    if recorded is not None and recorded.get("kind") == "served" and identity is None:
        say(f"{where}: targets from the served teacher {describe(recorded)}")
        return
    if recorded is not None:
        same = same_teacher(recorded, identity or local_model_identity(teacher_spec))
    else:  # a store from before identities were recorded: compare the names
        same = manifest_teacher.get("model") == teacher_spec
        recorded = {"name": manifest_teacher.get("model"), "fingerprint": "unrecorded"}
    if not same:
        raise ProvenanceError(
            f"{where} was made by teacher {describe(recorded)}, not "
            + (describe(identity) if identity else f"teacher.model={teacher_spec!r}")
            + "; use this teacher's store"
            + ("" if "cache.dir" in str(where) else ", or pass --allow-teacher-change to use it")
        )


def check_recorded_source(source: str) -> None:
    """Every generation record is well formed and some carry the teacher's top log-probs."""
    from kdistill.data.records import iter_generation_records

    with_top = False
    for record in iter_generation_records(source):
        with_top = with_top or bool(record.get("teacher_top_logprobs"))
    if not with_top:
        raise InputError(
            "teacher.kind=recorded: these generations hold no per-token top logprobs; "
            "re-run kdistill generate with generate.top_logprobs > 0"
        )


def check_lm_run(cfg: RunConfig, *, allow_teacher_change: bool = False) -> None:
    """Everything about a causal-LM run that can be checked without loading a model."""
    from kdistill.data.records import load_records
    from kdistill.models.loading import check_model_files
    from kdistill.teachers.kinds import needs_model

    check_output_folder(cfg.output_dir, "output_dir")
    resolve_device(cfg.device)  # a device this machine lacks: one line, before any model
    if cfg.teacher.dtype == "int8":
        from kdistill.models.quantize import check_torchao

        check_torchao()
    kind = cfg.teacher.kind
    if cfg.teacher.ensemble:
        raise InputError(
            "teacher.ensemble averages classifier teachers (task: classifier); an LM run "
            "distils one teacher.model"
        )
    if cfg.student.lora is not None:
        from kdistill.models.lora import check_peft

        check_peft()
    if cfg.student.from_teacher is None and not cfg.student.model:
        raise InputError("student: set student.model or student.from_teacher")
    cut_from = cfg.student.from_teacher.model if cfg.student.from_teacher else None
    if cut_from:
        check_model_files(cut_from, "student.from_teacher.model")
    if needs_model(kind) or (cfg.student.from_teacher and not cut_from) or kind == "store":
        if not cfg.teacher.model:
            raise InputError("teacher.model: name the teacher (bundled name, .gguf or folder)")
        check_model_files(cfg.teacher.model, "teacher.model")
    if cfg.student.model and cfg.student.from_teacher is None:
        check_model_files(cfg.student.model, "student.model")
    if cfg.training.extra:
        check_training_extra(cfg.training.extra)
    own_vocab = cfg.student.from_teacher and cfg.student.from_teacher.tokenizer_vocab
    if own_vocab and kind not in ("aligned", "none"):
        raise InputError(
            "student.from_teacher.tokenizer_vocab gives the student its own tokenizer: distil "
            f"it with teacher.kind=aligned (or none for the baseline), not {kind}"
        )
    readers = [t for t in cfg.distill.terms if t.reads_teacher_states]
    if readers and kind != "model":
        names = ", ".join(t.name for t in readers)
        raise InputError(
            f"distill.terms ({names}) read the teacher's hidden states: they need "
            f"teacher.kind=model, not {kind}"
        )
    if cfg.distill.on_policy is not None and kind not in ("model", "served", "none"):
        raise InputError(
            f"distill.on_policy: the teacher must score the student's new samples, which a "
            f"{kind} teacher cannot; use teacher.kind=model or served, or remove "
            "distill.on_policy"
        )
    if cfg.distill.on_policy is not None and cfg.distill.on_policy.prompt_tokens >= (
        cfg.data.block_size
    ):
        raise InputError(
            f"distill.on_policy.prompt_tokens ({cfg.distill.on_policy.prompt_tokens}) must be "
            f"below data.block_size ({cfg.data.block_size})"
        )
    check_lm_combinations(cfg)
    if kind == "recorded":  # read one line at a time: a recorded set may not fit in memory
        check_recorded_source(cfg.data.source)
    else:
        load_records(cfg.data.source, cfg.data.text_field, **builders.source_kwargs(cfg))
    if kind == "store":
        from kdistill.cache import StoreReader

        reader = StoreReader(cfg.teacher.path)
        check_store_teacher(
            reader.manifest.teacher,
            cfg.teacher.model,
            allow=allow_teacher_change,
            where=f"teacher.path={cfg.teacher.path!r}",
        )


def check_lm_combinations(cfg: RunConfig) -> None:
    """Settings that do not apply to a language-model run, or not together: one line each,
    before anything loads."""
    d = cfg.data
    if d.jitter or d.flip or d.mixup:
        raise InputError(
            "data.jitter / data.flip / data.mixup augment classifier images; an LM run has "
            "none (unset them)"
        )
    if cfg.teacher.kind == "recorded" and (d.subset is not None or d.split != "train"):
        raise InputError(
            "data.subset / data.split choose a part of a hub data set; a recorded teacher "
            "reads kdistill generate's kept.jsonl (unset them)"
        )
    if cfg.teacher.kind == "recorded" and d.validation_fraction > 0:
        raise InputError(
            "data.validation_fraction with a recorded teacher: its store holds every training "
            "record (not yet split for validation); unset data.validation_fraction"
        )
    check_streaming(cfg)
    fsdp = cfg.training.fsdp
    if not fsdp.enabled:
        return
    if cfg.student.lora is not None:
        raise InputError(
            "training.fsdp with student.lora: not supported yet (the adapters are not sharded "
            "with the base); train the LoRA student without FSDP"
        )
    if cfg.distill.on_policy is not None:
        raise InputError(
            "training.fsdp with distill.on_policy: not supported yet (each rank samples on its "
            "own draw, and a sharded student's generation is a collective); remove one"
        )
    if fsdp.teacher == "shard" and cfg.teacher.dtype == "int8":
        raise InputError(
            "training.fsdp.teacher=shard with teacher.dtype=int8: FSDP does not shard torchao's "
            "int8 weights; replicate the int8 teacher (training.fsdp.teacher=replicate)"
        )


def check_streaming(cfg: RunConfig) -> None:
    """``data.streaming`` with what needs the records listed, or untried: one line each."""
    if not cfg.data.streaming:
        return
    why = None
    if cfg.teacher.kind not in ("model", "none"):
        why = f"teacher.kind={cfg.teacher.kind} (it keeps or aligns targets per listed example)"
    elif cfg.student.from_teacher is not None and cfg.student.from_teacher.tokenizer_vocab:
        why = "student.from_teacher.tokenizer_vocab (the tokenizer trains on the whole set)"
    elif cfg.distill.on_policy is not None:
        why = "distill.on_policy (not tried with a stream yet)"
    elif cfg.training.fsdp.enabled:
        why = "training.fsdp (not tried with a stream yet)"
    elif cfg.training.extra.get("dataloader_num_workers"):
        why = "dataloader_num_workers in training.extra (rows are read by the main process)"
    if why is not None:
        raise InputError(
            f"data.streaming reads rows as training goes, which does not work with {why}; "
            "unset data.streaming or that setting"
        )
