"""Reading data sources into records: documents (str), chat conversations (lists of
{role, content}) or generation records (dicts), every malformed input one InputError naming
the file, the record and the fix.

Sources: the bundled name ``kjv``; a ``.txt`` file (one document per blank-line-separated
paragraph); ``.jsonl`` / ``.json`` / ``.parquet`` read with json / pyarrow (a ``text`` field, or a
``messages`` list of chat turns); a hub data set id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

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
