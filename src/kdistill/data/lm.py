"""Language-model data: documents -> held-out split -> tokenised, packed blocks.

Sources: the bundled name ``kjv``; a ``.txt`` file (one document per blank-line-separated
paragraph); ``.jsonl`` / ``.json`` / ``.parquet`` read with ``datasets`` (a ``text`` field, or a
``messages`` list of chat turns). Plain text is packed into ``block_size`` blocks with EOS
between documents; chat records are rendered with the tokenizer's chat template and every
token up to the final assistant reply is masked out of the loss (label -100).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

IGNORE_INDEX = -100


def _generation_records(path: Path) -> list[dict] | None:
    """Rows of a ``kdistill generate`` kept.jsonl (they have ``completion`` or
    ``teacher_tokens``), read with json: their nested top-logprob pairs are not Arrow-typed."""
    import json

    with path.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        head = json.loads(first) if first.strip() else {}
    except ValueError:
        return None
    if not isinstance(head, dict) or not ({"completion", "teacher_tokens"} & head.keys()):
        return None
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path.name} line {n}: not valid JSON ({exc.msg})") from exc
        if "messages" not in row and not {"prompt", "completion"} <= row.keys():
            raise ValueError(f"{path.name} line {n}: needs messages, or prompt and completion")
        rows.append(row)
    return rows


def load_records(source: str, text_field: str = "text") -> list[str | list[dict] | dict]:
    """Documents (str), chat conversations (list of {role, content}), or generation records
    (dict: ``messages`` or ``prompt`` + ``completion``, maybe with the teacher's logprobs)."""
    if source == "kjv":
        from kdistill.data.kjv import kjv_chapters

        return kjv_chapters()
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"data source {source!r} not found: give 'kjv', or a .txt/.jsonl/.parquet file"
        )
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        return [p.strip() for p in text.split("\n\n") if p.strip()]
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(
            f"data source {path.name}: unsupported suffix; use .txt, .jsonl or .parquet"
        )
    if path.suffix == ".jsonl" and (rows := _generation_records(path)) is not None:
        return rows
    import datasets

    kind = "parquet" if path.suffix == ".parquet" else "json"
    ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    if "messages" in ds.column_names:
        return [list(m) for m in ds["messages"]]
    if text_field not in ds.column_names:
        raise ValueError(
            f"data source {path.name} has columns {ds.column_names}; set data.text_field to the "
            "text column, or provide a 'messages' column of chat turns"
        )
    return [t for t in ds[text_field] if t]


def split_held_out(records: list, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic split by a hash of (seed, index): the same records every run."""
    if not 0 < fraction < 1:
        raise ValueError(f"data.held_out_fraction must be in (0, 1), got {fraction}")
    train, held = [], []
    for i, rec in enumerate(records):
        h = int(hashlib.sha1(f"{seed}:{i}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held if h < fraction else train).append(rec)
    if not train or not held:
        raise ValueError(
            f"held-out split of {len(records)} records at fraction {fraction} left one side "
            "empty; add data or change data.held_out_fraction"
        )
    return train, held


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
        raise ValueError(
            f"only {len(stream)} tokens of text, fewer than one block of {block_size}; "
            "lower data.block_size or add data"
        )
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)


def chat_example(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with everything before the final assistant reply masked."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a chat record's last message must be the assistant's reply")
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    if hasattr(full, "input_ids"):
        full, prompt = full["input_ids"], prompt["input_ids"]
    full, prompt = list(full)[:max_length], list(prompt)
    n_prompt = min(len(prompt), len(full))
    labels = [IGNORE_INDEX] * n_prompt + full[n_prompt:]
    return full, labels


class BlockDataset(torch.utils.data.Dataset):
    """Items ``{input_ids, labels}`` from packed blocks or chat examples."""

    def __init__(self, examples: list[tuple[list[int], list[int]]] | torch.Tensor):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        if isinstance(ex, torch.Tensor):
            return {"input_ids": ex, "labels": ex.clone()}
        ids, labels = ex
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def data_fingerprint(dataset: BlockDataset) -> str:
    """sha256 over every example's token ids and labels (what a teacher store must match)."""
    h = hashlib.sha256()
    for i in range(len(dataset)):
        item = dataset[i]
        h.update(item["input_ids"].numpy().tobytes())
        h.update(item["labels"].numpy().tobytes())
    return h.hexdigest()


def count_label_tokens(dataset: BlockDataset) -> int:
    return sum(int((dataset[i]["labels"][1:] != IGNORE_INDEX).sum()) for i in range(len(dataset)))


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
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "shift_labels": shift}


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
    teacher_logprobs: bool = False,
):
    """(train, held-out) datasets. With ``teacher_logprobs`` (generation records only) the
    training items also carry the teacher's sparse targets (see ``data.completions``)."""
    records = load_records(source, text_field)
    train, held = split_held_out(records, held_out_fraction, seed)
    if isinstance(records[0], dict):
        from kdistill.data.completions import generation_datasets

        return generation_datasets(tokenizer, train, held, block_size, teacher_logprobs)
    if teacher_logprobs:
        raise ValueError(
            "data.teacher_logprobs needs a kept.jsonl from kdistill generate "
            f"(with generate.top_logprobs > 0); {source!r} holds no generations"
        )
    if isinstance(records[0], list):
        tr = [chat_example(tokenizer, m, block_size) for m in train]
        ho = [chat_example(tokenizer, m, block_size) for m in held]
        return BlockDataset(tr), BlockDataset(ho)
    tr = pack_texts(tokenizer, train, block_size, max_train_tokens)
    ho = pack_texts(tokenizer, held, block_size, max_eval_tokens)
    return BlockDataset(tr), BlockDataset(ho)
