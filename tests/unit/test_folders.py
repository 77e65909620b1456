"""Owned folders, --fresh, locks, the atomic writer and injected OS failures (no models)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from kdistill import files
from kdistill.errors import FolderBusyError, OutputError
from kdistill.folders import LOCK, MARKER, claim_folder, clear_owned


def tree_hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (folders as their names)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _user_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "data").mkdir()
    (folder / "data" / "train.jsonl").write_text('{"text": "mine"}\n')


def test_fresh_on_a_users_folder_keeps_every_file(tmp_path):
    folder = tmp_path / "mine"
    _user_files(folder)
    before = tree_hashes(folder)
    with claim_folder(folder, "run", field="output_dir", fresh=True):
        pass
    after = tree_hashes(folder)
    assert {k: v for k, v in after.items() if k not in (MARKER, LOCK)} == before
    assert json.loads((folder / MARKER).read_text())["kind"] == "run"


def test_fresh_removes_only_kdistills_entries(tmp_path):
    folder = tmp_path / "run"
    with claim_folder(folder, "run", field="output_dir"):
        (folder / "config.yaml").write_text("a: 1\n")
        (folder / "checkpoints" / "checkpoint-3").mkdir(parents=True)
        (folder / "model").mkdir()
        (folder / ".model-abc123xy").mkdir()  # a temp folder of ours (mkdtemp: 8 chars)
        (folder / ".config.yaml.77.tmp").write_text("x")
        (folder / ".config.yaml.77-1.tmp").write_text("x")  # the writer's second choice
    (folder / "my_plot.png").write_bytes(b"user")
    (folder / ".config.yaml.bak").write_text("the user's backup")  # looks like ours, is not
    with claim_folder(folder, "run", field="output_dir", fresh=True):
        pass
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([MARKER, LOCK, "my_plot.png", ".config.yaml.bak"])
    assert (folder / "my_plot.png").read_bytes() == b"user"


def test_a_users_folder_with_a_clashing_name_is_refused_untouched(tmp_path):
    folder = tmp_path / "mine"
    _user_files(folder)
    (folder / "config.yaml").write_text("mine: true\n")
    before = tree_hashes(folder)
    with pytest.raises(OutputError, match="holds files kdistill did not write"):
        claim_folder(folder, "run", field="output_dir", fresh=True)
    assert tree_hashes(folder) == before


def test_folder_from_before_the_marker_is_adopted(tmp_path):
    folder = tmp_path / "old"
    (folder / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-3" / "kdistill-complete").write_text("{}")
    (folder / "config.yaml").write_text("a: 1\n")
    with claim_folder(folder, "run", field="output_dir"):
        assert (folder / MARKER).is_file()
    assert (folder / "checkpoints" / "checkpoint-3" / "kdistill-complete").is_file()


def test_a_store_folder_is_not_a_run_folder(tmp_path):
    folder = tmp_path / "store"
    with claim_folder(folder, "cache", field="cache.dir"):
        pass
    with pytest.raises(OutputError, match="kdistill cache folder, not a run folder"):
        claim_folder(folder, "run", field="output_dir", fresh=True)


@pytest.mark.parametrize(
    "path, why",
    [
        ("", "empty"),
        ("   ", "empty"),
        (".", "working directory"),
        ("..", "parent of the working directory"),
        ("/", "root of the file system"),
        ("~", "home folder"),
    ],
)
def test_dangerous_folders_are_refused(path, why, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    with pytest.raises(OutputError, match=why):
        claim_folder(path, "run", field="output_dir", fresh=True)
    assert (work / "keep.txt").read_text() == "x"
    assert not (work / MARKER).exists()


def test_a_file_in_the_way_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        files.check_output_folder(f, "output_dir")
    with pytest.raises(OutputError, match="under the file"):
        files.check_output_folder(f / "sub", "output_dir")


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    folder = tmp_path / "run"
    first = claim_folder(folder, "run", field="output_dir")
    try:
        with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}"):
            claim_folder(folder, "run", field="output_dir")
    finally:
        first.release()
    claim_folder(folder, "run", field="output_dir").release()  # free again


def test_clear_owned_never_follows_a_symlinked_entry(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model").symlink_to(outside)
    clear_owned(folder, "run")
    assert (outside / "precious").read_text() == "x"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_injected_os_failures_are_one_line_and_leave_no_temp_file(code, tmp_path, monkeypatch):
    target = tmp_path / "out" / "results.json"
    target.parent.mkdir()
    target.write_text('{"old": true}')

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fsync", fail)
    with pytest.raises(OutputError) as info:
        files.atomic_write_json(target, {"new": True})
    msg = str(info.value)
    assert "results.json" in msg and "\n" not in msg
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]
    assert json.loads(target.read_text()) == {"old": True}


def test_free_space_is_checked(tmp_path, monkeypatch):
    class Usage:
        free = 1_000_000

    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage)
    files.check_free_space(tmp_path, 100_000, "the store")
    with pytest.raises(OutputError, match=r"the store needs about 5\.0 MB but .* 1\.0 MB free"):
        files.check_free_space(tmp_path / "new", 5_000_000, "the store")


def test_atomic_writer_never_takes_over_a_file_already_at_its_temp_name(tmp_path, monkeypatch):
    """The temp file is created exclusively: a file already at ``.NAME.<pid>.tmp`` is left
    alone (another name is used), and a failed write removes only its own temp file."""
    target = tmp_path / "results.json"
    squatter = tmp_path / f".results.json.{os.getpid()}.tmp"
    squatter.write_text("not ours to delete")
    files.atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert squatter.read_text() == "not ours to delete"

    def fail(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fail)
    with pytest.raises(OutputError):
        files.atomic_write_json(target, {"a": 2})
    assert squatter.read_text() == "not ours to delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["results.json", squatter.name])
