"""Language-model data: records (:mod:`kdistill.data.records`) -> held-out split
(:mod:`kdistill.data.holdout`) -> tokenised, packed blocks.

Plain text is packed into ``block_size`` blocks with EOS between documents
(:mod:`kdistill.data.packing`); chat records are rendered with the tokenizer's chat template and
every token up to the final assistant reply is masked out of the loss (label -100).
"""

from __future__ import annotations

import torch

from kdistill.data.completions import generation_datasets
from kdistill.data.examples import IGNORE_INDEX, BlockDataset, chat_example
from kdistill.data.holdout import split_held_out
from kdistill.data.packing import pack_texts
from kdistill.data.records import load_records
from kdistill.errors import InputError


class CausalCollator:
    """Pads a batch and adds ``shift_labels`` (labels moved left by one, -100 at the end).

    ``shift_labels[b, i]`` is the target of ``logits[b, i]``: the KD loss sees aligned
    positions, and Trainer counts the global number of valid targets from it.
    """

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        length = max(len(it["input_ids"]) for it in items)
        b = len(items)
        ids = torch.full((b, length), self.pad, dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        for r, it in enumerate(items):
            n = len(it["input_ids"])
            ids[r, :n] = it["input_ids"]
            labels[r, :n] = it["labels"]
            mask[r, :n] = 1
        shift = torch.full_like(labels, IGNORE_INDEX)
        shift[:, :-1] = labels[:, 1:]
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "shift_labels": shift}
        if "example_index" in items[0]:
            batch["example_index"] = torch.tensor([it["example_index"] for it in items])
        return batch


class IndexedDataset(torch.utils.data.Dataset):
    """Items of ``dataset`` plus ``example_index``: which example each is, so that a teacher
    that keeps targets per example (a store, recorded log-probs) can look them up."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "example_index": i}


def build_lm_datasets(
    tokenizer,
    source: str,
    *,
    block_size: int,
    held_out_fraction: float,
    text_field: str = "text",
    max_train_tokens: int | None = None,
    max_eval_tokens: int | None = None,
    seed: int = 0,
    validation_fraction: float = 0.0,
    part: str = "test",
    subset: str | None = None,
    split: str = "train",
    streaming: bool = False,
    start: dict | None = None,
    held_out: bool = True,
):
    """(train, held-out) datasets. (A recorded teacher's examples are read from its store:
    :func:`kdistill.teachers.recorded_store.recorded_datasets`.) ``streaming``: the training
    blocks are a :class:`~kdistill.data.streaming.StreamedBlocks` (from position ``start``
    when resuming) and the held-out blocks the first held-out rows of the stream.
    ``held_out=False`` (training, which never evaluates on them): the held-out side is
    ``None``, not tokenised, and not read from a stream."""
    if streaming:
        from kdistill.data.streaming import streamed_datasets

        return streamed_datasets(
            tokenizer,
            source,
            block_size=block_size,
            held_out_fraction=held_out_fraction,
            text_field=text_field,
            max_train_tokens=max_train_tokens,
            max_eval_tokens=max_eval_tokens,
            seed=seed,
            validation_fraction=validation_fraction,
            part=part,
            subset=subset,
            split=split,
            start=start,
            held_out=held_out,
        )
    records = load_records(source, text_field, subset=subset, split=split)
    train, held = split_held_out(records, held_out_fraction, seed, validation_fraction, part)
    if isinstance(records[0], dict):  # small: kdistill generate's kept records
        tr, ho = generation_datasets(tokenizer, train, held, block_size)
        return tr, (ho if held_out else None)
    if isinstance(records[0], list):

        def chats(part: list) -> BlockDataset:
            return BlockDataset([chat_example(tokenizer, m, block_size) for m in part])

        return chats(train), (chats(held) if held_out else None)
    tr = BlockDataset(pack_texts(tokenizer, train, block_size, max_train_tokens))
    if not held_out:
        return tr, None
    return tr, BlockDataset(pack_texts(tokenizer, held, block_size, max_eval_tokens))


def record_text(record) -> str:
    """The plain text of one record: a document, a chat's turns joined by newlines, or a
    generation's prompt + completion."""
    if isinstance(record, str):
        return record
    if isinstance(record, list):
        return "\n".join(m["content"] for m in record)
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"])
    return f"{record.get('prompt', '')}{record.get('completion', '')}"


def training_texts(
    source: str,
    *,
    held_out_fraction: float,
    seed: int = 0,
    validation_fraction: float = 0.0,
    text_field: str = "text",
    subset: str | None = None,
    split: str = "train",
    streaming: bool = False,
) -> list[str]:
    """The training records (the same split as training; never a held-out one) as text:
    what a student's own tokenizer is trained on."""
    if streaming:
        raise InputError(
            "a streamed data set is not listed whole, which this needs (a student's own "
            "tokenizer, a cross-tokenizer teacher's chats); unset data.streaming"
        )
    records = load_records(source, text_field, subset=subset, split=split)
    train, _ = split_held_out(records, held_out_fraction, seed, validation_fraction)
    return [t for t in (record_text(r) for r in train) if t.strip()]


def training_chats(
    source: str,
    *,
    held_out_fraction: float,
    seed: int = 0,
    validation_fraction: float = 0.0,
    text_field: str = "text",
    subset: str | None = None,
    split: str = "train",
    streaming: bool = False,
) -> list[list[dict]] | None:
    """Each training example's messages, in the training set's order, when the data are
    chats (or generations with messages); None for plain text."""
    if streaming:
        raise InputError(
            "a streamed data set is not listed whole, which this needs (a student's own "
            "tokenizer, a cross-tokenizer teacher's chats); unset data.streaming"
        )
    records = load_records(source, text_field, subset=subset, split=split)
    train, _ = split_held_out(records, held_out_fraction, seed, validation_fraction)
    if isinstance(train[0], list):
        return train
    if isinstance(train[0], dict) and all("messages" in r for r in train):
        return [r["messages"] for r in train]
    return None


def held_out_texts(
    source: str,
    *,
    held_out_fraction: float,
    seed: int = 0,
    validation_fraction: float = 0.0,
    part: str = "test",
    text_field: str = "text",
    max_chars: int | None = None,
    subset: str | None = None,
    split: str = "train",
    streaming: bool = False,
) -> list[str]:
    """The held-out records (the same split as training) as text, in order, until
    ``max_chars`` characters (the last one cut at a character boundary): the spans every
    model scores for bits per byte, whatever its tokenizer."""
    if streaming:
        from kdistill.data.streaming import held_out_stream

        return held_out_stream(
            source,
            held_out_fraction=held_out_fraction,
            seed=seed,
            text_field=text_field,
            subset=subset,
            split=split,
            max_chars=max_chars or 8000,
            validation_fraction=validation_fraction,
            part=part,
        )
    records = load_records(source, text_field, subset=subset, split=split)
    _, held = split_held_out(records, held_out_fraction, seed, validation_fraction, part)
    out, total = [], 0
    for rec in held:
        text = record_text(rec)
        if max_chars is not None:
            text = text[: max_chars - total]
        if text.strip():
            out.append(text)
            total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return out
