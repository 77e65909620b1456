"""Language-model data: documents -> held-out split -> tokenised, packed blocks.

Sources: the bundled name ``kjv``; a ``.txt`` file (one document per blank-line-separated
paragraph); ``.jsonl`` / ``.json`` / ``.parquet`` read with json / pyarrow (a ``text`` field, or a
``messages`` list of chat turns). Plain text is packed into ``block_size`` blocks with EOS
between documents; chat records are rendered with the tokenizer's chat template and every
token up to the final assistant reply is masked out of the loss (label -100).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch

from kdistill.data.completions import generation_datasets
from kdistill.data.examples import IGNORE_INDEX, BlockDataset, chat_example
from kdistill.data.holdout import check_fraction, part_of
from kdistill.errors import InputError, MissingFileError


@contextlib.contextmanager
def _reading(path: Path):
    """A file that is not UTF-8 text, or is a folder, becomes one InputError with the fix."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "convert the file to UTF-8"
        ) from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder; give a .txt/.jsonl/.parquet file") from None


def read_utf8(path: Path) -> str:
    with _reading(path):
        return path.read_text(encoding="utf-8")


def _iter_jsonl_rows(path: Path) -> Iterator[dict]:
    """Every non-empty line of a JSONL file as a dict, one line in memory at a time (read
    with json: nested top-logprob pairs of generation records are not Arrow-typed)."""
    import json

    with _reading(path), open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path.name} line {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path.name} line {n}: each line must be a JSON object")
            yield row


def _jsonl_rows(path: Path) -> list[dict]:
    rows = list(_iter_jsonl_rows(path))
    if not rows:
        raise InputError(f"{path}: no records (the file is empty); add data")
    return rows


def _check_messages(name: str, n: int, msgs) -> list[dict]:
    if (
        not isinstance(msgs, list)
        or not msgs
        or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in msgs
        )
    ):
        raise InputError(
            f"{name} record {n}: 'messages' must be a list of {{role, content}} objects with "
            "text content"
        )
    if msgs[-1]["role"] != "assistant":
        raise InputError(f"{name} record {n}: the last message must be the assistant's reply")
    return msgs


def _is_generation(row: dict) -> bool:
    return bool({"completion", "teacher_tokens"} & row.keys())


def _check_generation(name: str, n: int, row: dict) -> dict:
    if "messages" in row:
        _check_messages(name, n, row["messages"])
    elif not {"prompt", "completion"} <= row.keys():
        raise InputError(f"{name} record {n}: needs messages, or prompt and completion")
    return row


def _records_from_rows(name: str, rows: list[dict], text_field: str) -> list:
    if _is_generation(rows[0]):  # kdistill generate's kept.jsonl
        return [_check_generation(name, n, row) for n, row in enumerate(rows, 1)]
    if "messages" in rows[0]:
        return [_check_messages(name, n, r.get("messages")) for n, r in enumerate(rows, 1)]
    if text_field not in rows[0]:
        raise InputError(
            f"data source {name} has fields {sorted(rows[0])}; set data.text_field to the "
            "text field, or provide a 'messages' list of chat turns"
        )
    texts = []
    for n, row in enumerate(rows, 1):
        t = row.get(text_field)
        if t is not None and not isinstance(t, str):
            raise InputError(f"{name} record {n}: {text_field!r} must be text, got {t!r:.40}")
        if t:
            texts.append(t)
    if not texts:
        raise InputError(f"data source {name}: every {text_field!r} is empty; add data")
    return texts


def table_rows(path: Path) -> list[dict]:
    """Rows of a .parquet or .json (array) file."""
    import json

    if path.suffix == ".json":
        try:
            data = json.loads(read_utf8(path))
        except ValueError as exc:
            raise InputError(f"{path.name}: not valid JSON ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{path.name}: a .json data file must be a list of objects")
        if not data:
            raise InputError(f"{path}: no records (the list is empty); add data")
        return data
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError kinds
        raise InputError(
            f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:80]})"
        ) from None
    rows = table.to_pylist()
    if not rows:
        raise InputError(f"{path}: no records (the table is empty); add data")
    return rows


def load_records(
    source: str,
    text_field: str = "text",
    *,
    subset: str | None = None,
    split: str = "train",
    streaming: bool = False,
) -> list[str | list[dict] | dict]:
    """Documents (str), chat conversations (list of {role, content}), or generation records
    (dict: ``messages`` or ``prompt`` + ``completion``, maybe with the teacher's logprobs).
    A streamed hub data set is not read whole: its first rows' texts, checked.

    Every malformed input is one :class:`InputError` naming the file, the record and the fix,
    so pipelines call this before any model loads."""
    if streaming:
        from kdistill.data.hub import looks_like_dataset_id
        from kdistill.data.streaming import check_stream

        if Path(source).expanduser().exists() or not looks_like_dataset_id(source):
            raise InputError(
                f"data.streaming reads a hub data set id as training goes; {source!r} is not "
                "one (unset data.streaming, or give a hub data set id)"
            )
        return check_stream(source, text_field, subset=subset, split=split)
    if subset is not None or split != "train":
        from kdistill.data.hub import looks_like_dataset_id

        if Path(source).expanduser().exists() or not looks_like_dataset_id(source):
            raise InputError(
                f"data.subset / data.split choose a part of a hub data set; {source!r} is not "
                "one (unset them, or give a hub data set id)"
            )
    if source == "kjv":
        from kdistill.data.kjv import kjv_chapters

        return kjv_chapters()
    path = Path(source).expanduser()
    if not path.exists():
        from kdistill.data.hub import looks_like_dataset_id

        if looks_like_dataset_id(source):  # a Hugging Face hub data set
            from kdistill.data.hub import dataset_rows

            rows = dataset_rows(source, subset=subset, split=split)
            return _records_from_rows(f"{source} ({split})", rows, text_field)
        raise MissingFileError(
            f"data source {source!r} not found: give 'kjv', a .txt/.jsonl/.parquet file or a "
            "hub data set id (org/name[@revision])"
        )

    if path.suffix not in (".txt", ".jsonl", ".json", ".parquet"):
        raise InputError(
            f"data source {path.name}: unsupported suffix; use .txt, .jsonl or .parquet"
        )
    if path.suffix == ".txt":
        docs = [p.strip() for p in read_utf8(path).split("\n\n") if p.strip()]
        if not docs:
            raise InputError(f"{path}: no text (the file is empty); add data")
        return docs
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a .txt/.jsonl/.parquet file")
    rows = _jsonl_rows(path) if path.suffix == ".jsonl" else table_rows(path)
    return _records_from_rows(path.name, rows, text_field)


def iter_generation_records(source: str) -> Iterator[dict]:
    """The generation records of ``source`` (``kdistill generate``'s kept.jsonl, or a
    .json/.parquet of them), each checked; a .jsonl is read one line at a time."""
    path = Path(source).expanduser()
    not_generations = InputError(
        "teacher.kind=recorded needs a kept.jsonl from kdistill generate "
        f"(with generate.top_logprobs > 0); {source!r} holds no generations"
    )
    if source == "kjv" or path.suffix == ".txt":
        raise not_generations
    if not path.exists():
        raise MissingFileError(
            f"data source {source!r} not found: give the kept.jsonl of kdistill generate"
        )
    rows = _iter_jsonl_rows(path) if path.suffix == ".jsonl" else iter(table_rows(path))
    n = 0
    for n, row in enumerate(rows, 1):
        if n == 1 and not _is_generation(row):
            raise not_generations
        yield _check_generation(path.name, n, row)
    if n == 0:
        raise InputError(f"{path}: no records (the file is empty); add data")


def split_held_out(
    records: list, fraction: float, seed: int = 0, validation: float = 0.0, part: str = "test"
) -> tuple[list, list]:
    """(training records, ``part`` records): held out by a hash of (seed, index), the same
    records every run; ``validation`` > 0 sets that share of the rest aside (never trained
    on) as the ``validation`` part."""
    check_fraction(fraction)
    train, chosen = [], []
    for i, rec in enumerate(records):
        where = part_of(i, fraction, seed, validation)
        if where == "train":
            train.append(rec)
        elif where == part:
            chosen.append(rec)
    if not train or not chosen:
        raise InputError(
            f"the {part} split of {len(records)} records (held-out fraction {fraction}, "
            f"validation fraction {validation}) left one side empty; add data or change "
            "data.held_out_fraction / data.validation_fraction"
        )
    return train, chosen


def pack_texts(tokenizer, texts: list[str], block_size: int, max_tokens: int | None = None):
    """Token blocks ``(n_blocks, block_size)`` from documents joined with EOS."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if max_tokens is not None and len(stream) >= max_tokens + block_size:
            break
    if max_tokens is not None:
        stream = stream[: max(max_tokens, block_size)]
    n = len(stream) // block_size
    if n == 0:
        raise InputError(
            f"only {len(stream)} tokens of text, fewer than one block of {block_size}; "
            "lower data.block_size or add data"
        )
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)


def data_fingerprint(dataset: BlockDataset) -> str:
    """sha256 over every example's token ids and labels (what a teacher store must match)."""
    h = hashlib.sha256()
    for i in range(len(dataset)):
        item = dataset[i]
        h.update(item["input_ids"].numpy().tobytes())
        h.update(item["labels"].numpy().tobytes())
    return h.hexdigest()


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
):
    """(train, held-out) datasets. (A recorded teacher's examples are read from its store:
    :func:`kdistill.teachers.recorded_store.recorded_datasets`.) ``streaming``: the training
    blocks are a :class:`~kdistill.data.streaming.StreamedBlocks` (from position ``start``
    when resuming) and the held-out blocks the first held-out rows of the stream."""
    if streaming:
        from kdistill.data.streaming import StreamedBlocks, held_out_stream

        part_kw = {"subset": subset, "split": split, "text_field": text_field, "seed": seed}
        part_kw["validation_fraction"] = validation_fraction
        train = StreamedBlocks(
            tokenizer,
            source,
            block_size=block_size,
            held_out_fraction=held_out_fraction,
            max_train_tokens=max_train_tokens,
            start=start,
            **part_kw,
        )
        eval_tokens = max_eval_tokens or 16384
        texts = held_out_stream(
            source,
            held_out_fraction=held_out_fraction,
            max_chars=8 * (eval_tokens + block_size),  # ample: ~4 characters a token
            part=part,
            **part_kw,
        )
        return train, BlockDataset(pack_texts(tokenizer, texts, block_size, eval_tokens))
    records = load_records(source, text_field, subset=subset, split=split)
    train, held = split_held_out(records, held_out_fraction, seed, validation_fraction, part)
    if isinstance(records[0], dict):
        return generation_datasets(tokenizer, train, held, block_size)
    if isinstance(records[0], list):
        tr = [chat_example(tokenizer, m, block_size) for m in train]
        ho = [chat_example(tokenizer, m, block_size) for m in held]
        return BlockDataset(tr), BlockDataset(ho)
    tr = pack_texts(tokenizer, train, block_size, max_train_tokens)
    ho = pack_texts(tokenizer, held, block_size, max_eval_tokens)
    return BlockDataset(tr), BlockDataset(ho)


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
