"""The one atomic writer for every file kdistill writes, and what an output path may be.

A file is written to a temporary file beside it, flushed to disk and renamed over the target:
a reader sees the old file or the whole new one. When the write fails (a full disk, no
permission, a read-only file system), the temporary file is removed and the failure becomes
one line naming the path and the fix (:class:`~kdistill.errors.OutputError`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from kdistill.errors import OutputError

# failures of the machine or the path, not of kdistill: one line each, exit 2
_FIXES = {
    errno.ENOSPC: "no space left on the device; free some space or choose another folder",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.ENOTDIR: "a file is in the way where a folder belongs; choose another path",
    errno.EISDIR: "a folder is in the way where a file belongs; choose another path",
    errno.EEXIST: "a file is in the way where a folder belongs; choose another path",
}


def is_environment_error(exc: BaseException) -> bool:
    """True for OS errors a user fixes (disk full, permissions, a file in the way)."""
    return isinstance(exc, OSError) and exc.errno in _FIXES


def output_error(exc: OSError, path: str | Path | None = None) -> OutputError:
    """One line for an OS failure while writing ``path``."""
    where = path if path is not None else (exc.filename or "output")
    fix = _FIXES.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"cannot write {str(where)!r}: {fix}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp(path: Path):
    """``(temp path, open file)`` beside ``path``, created exclusively (O_EXCL): never a file
    that was already there, so removing it on failure removes only what this call wrote.
    Names: ``.NAME.<pid>.tmp``, then ``.NAME.<pid>-1.tmp``... if a stale one is in the way."""
    for n in range(100):
        suffix = f"{os.getpid()}" + (f"-{n}" if n else "")
        tmp = path.with_name(f".{path.name}.{suffix}.tmp")
        try:
            return tmp, open(tmp, "xb")
        except FileExistsError:
            continue
    raise OutputError(f"cannot write {str(path)!r}: 100 stale temp files beside it; remove them")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Temp file in the destination folder, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fh = _new_temp(path)  # from here on the temp file is ours to remove
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if is_environment_error(exc):
            raise output_error(exc, path) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data) -> Path:
    """Indented JSON, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2))


def atomic_write_jsonl(path: str | Path, rows) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def check_free_space(folder: str | Path, need_bytes: float, what: str) -> None:
    """Refuse to start a job whose estimated output does not fit the disk (with 10% slack)."""
    p = Path(folder).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    if need_bytes * 1.1 > free:
        raise OutputError(
            f"{what} needs about {need_bytes / 1e6:.1f} MB but {str(p)!r} has "
            f"{free / 1e6:.1f} MB free; free some space or choose another folder",
        )


def dangerous_folder(path: str | Path) -> str | None:
    """Why kdistill must never own (and so never clean) this folder, or None.

    Refused: an empty path, ``/``, the home folder, the working directory or a parent of it.
    """
    text = str(path).strip()
    if not text:
        return "it is empty (an unset variable?)"
    p = Path(text).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if p == Path(p.anchor):
        return "it is the root of the file system"
    if p == Path.home().resolve():
        return "it is your home folder"
    if p == cwd:
        return "it is the working directory"
    if p in cwd.parents:
        return "it is a parent of the working directory"
    return None


def check_output_folder(path: str | Path, field: str) -> Path:
    """The folder ``path`` (named by setting ``field``) may be created and written: refuse a
    dangerous location, a file in the way, or a parent that cannot be written."""
    why = dangerous_folder(path)
    if why is not None:
        raise OutputError(
            f"{field}={str(path)!r} is refused: {why}; give a dedicated folder, e.g. "
            f"{field}=runs/my_run",
        )
    p = Path(str(path).strip()).expanduser()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == p else f"is under the file {str(probe)!r}"
        raise OutputError(
            f"{field}={str(path)!r} {where}, not a folder; choose another path",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"{field}={str(path)!r}: {str(probe)!r} is not writable; choose a "
            "folder you can write to"
        )
    return p
