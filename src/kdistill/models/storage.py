"""Atomic model folders: filled in a temp folder beside the target, renamed when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_folder_atomically(
    target: Path, fill: Callable[[Path], None], marker: str, note: str = "complete\n"
) -> Path:
    """Call ``fill(tmp)``, write ``tmp/marker``, then replace ``target`` with ``tmp``.

    A crash leaves either the old folder or none, never a half-written one that looks valid.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        (tmp / marker).write_text(note)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
