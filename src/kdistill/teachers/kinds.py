"""The built-in teacher kinds, registered by name: ``model``, ``store``, ``recorded``,
``served``, ``aligned``, ``none`` (see :mod:`kdistill.teachers.base`), and :func:`build_teacher`."""

from __future__ import annotations

from kdistill.errors import InputError
from kdistill.teachers.base import TEACHER_KINDS, Teacher, register_teacher_kind
from kdistill.teachers.model import ModelTeacher
from kdistill.teachers.recorded import RecordedTeacher
from kdistill.teachers.store import StoreTeacher


def _store(settings: dict, *, tokenizer, dataset, block_size: int, **_) -> StoreTeacher:
    """The store at ``settings['path']``, checked against the tokenizer and the data."""
    from kdistill.cache import StoreReader
    from kdistill.data.packing import data_fingerprint
    from kdistill.models.vocab import tokenizer_fingerprint

    reader = StoreReader(settings["path"])
    reader.check(
        tokenizer_hash=tokenizer_fingerprint(tokenizer),
        data_fingerprint=data_fingerprint(dataset),
        block_size=block_size,
    )
    reader.verify_all()
    return StoreTeacher(reader, len(dataset))


def _recorded(settings: dict, *, dataset, vocab_size: int, **_) -> RecordedTeacher:
    store = getattr(dataset, "store", None)
    if store is None:
        raise InputError(
            "teacher.kind=recorded needs generations with top logprobs as data.source "
            "(a kept.jsonl from kdistill generate with generate.top_logprobs > 0)"
        )
    return RecordedTeacher(store, vocab_size)


def _served(settings: dict, *, tokenizer, vocab_size: int, **_):
    """A server scoring each micro-batch's text (see :mod:`kdistill.teachers.scorer`)."""
    import os

    from kdistill.teachers.scorer import ServedScorer
    from kdistill.teachers.served import OpenAICompatibleTeacher

    client = OpenAICompatibleTeacher(
        settings["base_url"],
        settings["served_model"],
        api_key=os.environ.get(settings["api_key_env"]),
        mode="completions",
        timeout_s=settings["timeout_s"],
        max_retries=settings["max_retries"],
        max_concurrency=settings["max_concurrency"],
    )
    return ServedScorer(
        client,
        tokenizer,
        vocab_size=vocab_size,
        top_k=settings["top_k"],
        send=settings["send"],
        extra_body=settings["extra_body"],
    )


def _aligned(
    settings: dict,
    *,
    model,
    tokenizer,
    teacher_tokenizer=None,
    vocab_size: int,
    chats=None,
    **_,
):
    """The teacher model with its own tokenizer (see :mod:`kdistill.teachers.aligned`);
    ``chats``: the training examples' messages when the data are chats."""
    from kdistill.teachers.aligned import AlignedTeacher

    if teacher_tokenizer is None:
        raise InputError("teacher.kind=aligned needs the teacher's own tokenizer")
    return AlignedTeacher(
        model,
        teacher_tokenizer,
        tokenizer,
        objective=settings["objective"],
        vocab_size=vocab_size,
        chats=chats,
    )


register_teacher_kind(
    "model", lambda settings, *, model, **_: ModelTeacher(model), needs_model=True
)
register_teacher_kind("store", _store)
register_teacher_kind("recorded", _recorded)
register_teacher_kind("served", _served)
register_teacher_kind("aligned", _aligned, needs_model=True)


def build_teacher(kind: str, settings: dict, **context) -> Teacher:
    """The teacher of ``kind`` (context: model, tokenizer, dataset, vocab_size, block_size)."""
    return TEACHER_KINDS[kind].factory(settings, **context)


def needs_model(kind: str) -> bool:
    return TEACHER_KINDS[kind].needs_model
