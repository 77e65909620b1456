"""Folders kdistill owns: a marker written first, a lock while writing, and ``--fresh`` that
deletes only what kdistill wrote.

Every output folder (a run, a demo, a teacher-signal store, a generations folder) carries
``.kdistill-owned.json``, written before anything else, naming the folder's kind and the
entries kdistill creates in it. ``--fresh`` removes exactly those entries (and kdistill's
own temporary files beside them), never the folder's other files. A folder from before the
marker existed is recognised by its layout and adopted. While a process writes into a folder
it holds ``.kdistill.lock`` (an ``flock`` naming its pid): a second process is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kdistill.errors import FolderBusyError, OutputError
from kdistill.files import (
    atomic_write_json,
    check_output_folder,
    is_environment_error,
    output_error,
)
from kdistill.log import get_logger

log = get_logger(__name__)

MARKER = ".kdistill-owned.json"
LOCK = ".kdistill.lock"

# what kdistill creates in each kind of folder (glob patterns allowed)
ENTRIES: dict[str, list[str]] = {
    "run": [
        "config.yaml",
        "checkpoints",
        "model",
        "kd_log.jsonl",
        "teacher_signal",
        "train_summary.json",
        "results.json",
        "report.html",
        "report.md",
        "plots",
    ],
    # the demo's student/ and baseline/ are run folders of their own, cleaned by their runs
    "demo": ["results.json", "report.html", "report.md", "plots", "logs"],
    "cache": ["manifest.json", "shard-*.safetensors"],
    # a sweep's cells/ holds one run folder (and cell.json) per cell, all written by it
    "sweep": ["sweep.json", "sweep.html", "sweep.md", "plots", "cells"],
    # a chain's stages are run folders of their own (claimed by their runs); eval/ is its own
    "chain": ["eval"],
    # an export: the Hugging Face folder, GGUF files, the model card
    "export": ["hf", "int8", "*.gguf", "README.md", "export.json"],
    "generations": [
        "generations.jsonl",
        "generations.quarantine.jsonl",
        "kept.jsonl",
        "summary.json",
        "provenance.json",
    ],
}


def _legacy_kind(path: Path) -> str | None:
    """The kind of a folder kdistill wrote before the marker existed, by its layout."""
    ckpts = path / "checkpoints"
    if (path / "config.yaml").is_file() and (
        (path / "model" / "kdistill-done").is_file()
        or any(p.is_file() for p in ckpts.glob("checkpoint-*/kdistill-complete"))
    ):
        return "run"
    if (path / "student" / "config.yaml").is_file() and (path / "baseline").is_dir():
        return "demo"
    manifest = path / "manifest.json"
    if manifest.is_file() and '"format_version"' in manifest.read_text(errors="replace"):
        return "cache"
    gens = path / "generations.jsonl"
    if gens.is_file():
        with open(gens, "rb") as fh:
            first = fh.readline()
        if b'"prompt_id"' in first:
            return "generations"
    return None


def _is_our_temp(name: str, entry: str) -> bool:
    """kdistill's own temporary names for ``entry``: ``.NAME.<pid>[-n].tmp`` (the atomic writer)
    and ``.NAME-<8 chars>`` (a model folder being filled, from ``tempfile.mkdtemp``)."""
    pattern = re.escape(entry).replace(r"\*", r"[^/]*")
    return bool(re.fullmatch(rf"\.{pattern}\.\d+(?:-\d+)?\.tmp|\.{pattern}-[a-z0-9_]{{8}}", name))


def _owned_paths(path: Path, kind: str) -> list[Path]:
    """Existing entries of ``kind`` in ``path`` plus kdistill's temporary files beside them
    (nothing else: a user's ``.config.yaml.bak`` is not ours)."""
    out: list[Path] = []
    hidden = [p for p in path.iterdir() if p.name.startswith(".")] if path.is_dir() else []
    for entry in ENTRIES[kind]:
        out.extend(path.glob(entry))
        out.extend(p for p in hidden if _is_our_temp(p.name, entry))
    return sorted(set(out))


@dataclass
class OwnedFolder:
    """A folder this process owns and writes into (see the module docstring)."""

    path: Path
    kind: str
    _lock_fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> OwnedFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(path: Path) -> int:
    lock = path / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderBusyError(
            f"{path} is being written by another kdistill process (pid {holder}); wait for it "
            "to finish or stop it, or choose another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _adopt(path: Path, kind: str) -> None:
    """Write the marker into ``path`` (existing or new) or refuse a folder of someone else's."""
    marker = path / MARKER
    if marker.is_file():
        try:
            owned = json.loads(marker.read_text())
        except (OSError, ValueError):
            owned = {}
        if owned.get("kind") != kind:
            raise OutputError(
                f"{path} is a kdistill {owned.get('kind', 'unknown')} folder, not a {kind} "
                "folder; choose another path"
            )
        return
    if path.is_dir() and any(path.iterdir()):
        legacy = _legacy_kind(path)
        if legacy is not None and legacy != kind:
            raise OutputError(
                f"{path} holds a kdistill {legacy} folder, not a {kind} folder; choose another path"
            )
        if legacy is None:
            clash = [p.name for p in _owned_paths(path, kind)]
            if clash:
                raise OutputError(
                    f"{path} holds files kdistill did not write ({', '.join(clash[:3])}); "
                    "choose a new or empty folder"
                )
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        marker,
        {"kind": kind, "entries": ENTRIES[kind], "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )


def clear_owned(path: Path, kind: str) -> list[str]:
    """Delete what kdistill wrote in ``path`` (the entries of ``kind``); return their names."""
    removed = []
    for p in _owned_paths(path, kind):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def is_main_process() -> bool:
    """Rank 0 of a distributed job (or a plain process): the one that owns folders."""
    return int(os.environ.get("RANK", "0")) == 0


def claim_folder(path: str | Path, kind: str, *, field: str, fresh: bool = False) -> OwnedFolder:
    """Own ``path`` for writing: validate it, adopt or create it, lock it, and with ``fresh``
    delete what kdistill wrote there before. ``field`` names the setting for error lines."""
    p = check_output_folder(path, field)
    if not is_main_process():
        p.mkdir(parents=True, exist_ok=True)
        return OwnedFolder(p, kind)
    try:
        _adopt(p, kind)
        fd = _lock(p)
    except OSError as exc:
        if is_environment_error(exc):
            raise output_error(exc, p) from exc
        raise
    folder = OwnedFolder(p, kind, fd)
    if fresh:
        try:
            removed = clear_owned(p, kind)
        except BaseException:
            folder.release()
            raise
        if removed:
            log.info(f"--fresh: removed {', '.join(removed)} from {p}")
    return folder
