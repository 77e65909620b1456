"""Prompts in, teacher generations out: an exactly-once, append-only JSONL store.

Each record is keyed by ``(prompt_id, sample)``. A record is appended as one line with a
single ``write`` + ``fsync``; on open, a torn last line (a killed process) is cut off and a
damaged line elsewhere is moved to a quarantine file, so the file only ever holds whole
records, no good record is ever dropped, and a key already present is never requested again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kdistill.errors import KdistillError, MissingFileError
from kdistill.files import atomic_write_bytes


class PromptFileError(KdistillError, ValueError):
    """A malformed prompt file (one line names the problem)."""


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: list[dict] | None = None
    text: str | None = None
    answer: str | None = None


def load_prompts(path: str | Path) -> list[Prompt]:
    """JSONL (or Parquet) rows with ``prompt`` (text) or ``messages``; optional ``id``,
    ``answer`` (the reference answer for verifiers)."""
    from kdistill.data.records import read_utf8, table_rows

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"prompt file {str(path)!r} not found")
    if path.suffix == ".parquet":
        rows = table_rows(path)
    else:
        rows = []
        for n, line in enumerate(read_utf8(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{path.name}:{n}: not valid JSON ({exc.msg})") from exc
    prompts, seen = [], set()
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or ("prompt" not in row and "messages" not in row):
            raise PromptFileError(
                f"{path.name}:{n}: each row needs a 'prompt' (text) or 'messages' field"
            )
        if row.get("prompt") is not None and not isinstance(row["prompt"], str):
            raise PromptFileError(f"{path.name}:{n}: 'prompt' must be text")
        pid = str(row.get("id", n - 1))
        if pid in seen:
            raise PromptFileError(f"{path.name}:{n}: duplicate id {pid!r}; ids must be unique")
        seen.add(pid)
        msgs = row.get("messages")
        if msgs is not None and (
            not isinstance(msgs, list)
            or not msgs
            or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
                for m in msgs
            )
        ):
            raise PromptFileError(
                f"{path.name}:{n}: 'messages' must be a list of {{role, content}} objects"
            )
        prompts.append(Prompt(pid, msgs, row.get("prompt"), row.get("answer")))
    if not prompts:
        raise PromptFileError(f"{path.name}: no prompts")
    return prompts


_KEY_RE = re.compile(rb'"prompt_id"\s*:\s*"((?:[^"\\]|\\.)*)".*?"sample"\s*:\s*(\d+)')


def _parse_record(line: bytes) -> dict | None:
    """The record on ``line``, or None when it is not a whole, keyed record."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(rec, dict)
        or not isinstance(rec.get("prompt_id"), str)
        or not isinstance(rec.get("sample"), int)
    ):
        return None
    return rec


def recover_key(line: bytes) -> tuple[str, int] | None:
    """The ``(prompt_id, sample)`` of a damaged line, when its text still shows them."""
    m = _KEY_RE.search(line)
    if m is None:
        return None
    try:
        pid = json.loads(b'"' + m.group(1) + b'"')
    except ValueError:
        return None
    return pid, int(m.group(2))


class GenerationStore:
    """Append-only ``generations.jsonl``; ``done`` is the set of finished keys.

    On open, every whole record is kept. A damaged line in the middle (bad JSON, no key) is
    moved to ``generations.quarantine.jsonl`` beside it and reported in ``quarantined``; its
    key, when the text still shows it, counts as done (it is not paid for again: delete its
    line from the quarantine file to regenerate it). Only a torn final line without a
    newline, the mark of a killed write, is dropped; its key is generated again.
    """

    def __init__(self, path: Path):
        self.path = path
        self.quarantine_path = path.with_name(path.stem + ".quarantine.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        self.done: set[tuple[str, int]] = set()
        self.quarantined: list[dict] = []  # {line, key} of damaged lines moved away now
        self.torn = False
        if self.quarantine_path.exists():
            self._load_quarantine()
        if path.exists():
            self._load()
        self._fh = open(path, "ab")  # noqa: SIM115 - kept open for appends

    def _load_quarantine(self) -> None:
        for line in self.quarantine_path.read_bytes().splitlines():
            entry = _parse_record(line) if line.strip() else None
            if entry is None:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
            key = entry.get("key") if isinstance(entry, dict) else None
            if isinstance(key, list) and len(key) == 2:
                self.done.add((str(key[0]), int(key[1])))

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.splitlines(keepends=True)
        keep: list[bytes] = []
        bad: list[tuple[int, bytes]] = []
        for n, line in enumerate(lines, 1):
            last = n == len(lines)
            rec = _parse_record(line) if line.strip() else None
            if rec is None:
                if not line.strip():
                    continue
                if last and not line.endswith(b"\n"):
                    self.torn = True  # an interrupted append: generated again
                    continue
                bad.append((n, line))
                continue
            if not line.endswith(b"\n"):
                line += b"\n"  # whole record, newline lost: keep it
            key = (rec["prompt_id"], rec["sample"])
            if key not in self.done:
                self.done.add(key)
                self.records.append(rec)
            keep.append(line)
        if bad:
            self._quarantine(bad)
        if bad or self.torn or b"".join(keep) != data:
            atomic_write_bytes(self.path, b"".join(keep))

    def _quarantine(self, bad: list[tuple[int, bytes]]) -> None:
        """Append damaged lines to the quarantine file (fsynced before the store is
        rewritten without them, so nothing is lost if we are killed in between)."""
        entries = []
        for n, line in bad:
            key = recover_key(line)
            if key is not None:
                self.done.add(key)
            entry = {
                "line_number": n,
                "key": list(key) if key else None,
                "text": line.decode("utf-8", errors="replace").rstrip("\n"),
            }
            entries.append(entry)
            self.quarantined.append(entry)
        with open(self.quarantine_path, "ab") as fh:
            for e in entries:
                fh.write((json.dumps(e, ensure_ascii=False) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, record: dict) -> bool:
        key = (record["prompt_id"], record["sample"])
        if key in self.done:
            return False
        self._fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(key)
        self.records.append(record)
        return True

    def close(self) -> None:
        self._fh.close()
