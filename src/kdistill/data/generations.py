"""Prompts in, teacher generations out: an exactly-once, append-only JSONL store.

Each record is keyed by ``(prompt_id, sample)``. A record is appended as one line with a
single ``write`` + ``fsync``; on open, a torn last line (a killed process) is cut off, so the
file only ever holds whole records, and a key already present is never requested again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class PromptFileError(ValueError):
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} not found")
    if path.suffix == ".parquet":
        import datasets

        rows = list(datasets.load_dataset("parquet", data_files=str(path), split="train"))
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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
        pid = str(row.get("id", n - 1))
        if pid in seen:
            raise PromptFileError(f"{path.name}:{n}: duplicate id {pid!r}; ids must be unique")
        seen.add(pid)
        msgs = row.get("messages")
        if msgs is not None and (
            not isinstance(msgs, list)
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)
        ):
            raise PromptFileError(
                f"{path.name}:{n}: 'messages' must be a list of {{role, content}} objects"
            )
        prompts.append(Prompt(pid, msgs, row.get("prompt"), row.get("answer")))
    if not prompts:
        raise PromptFileError(f"{path.name}: no prompts")
    return prompts


class GenerationStore:
    """Append-only ``generations.jsonl``; ``done`` is the set of finished keys."""

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        self.done: set[tuple[str, int]] = set()
        if path.exists():
            self._load()
        self._fh = open(path, "ab")  # noqa: SIM115 - kept open for appends

    def _load(self) -> None:
        data = self.path.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn last line from a killed run
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            good += len(line)
            key = (rec["prompt_id"], rec["sample"])
            if key not in self.done:
                self.done.add(key)
                self.records.append(rec)
        if good < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)

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
