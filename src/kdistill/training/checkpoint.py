"""Checkpoint completeness and resume.

Trainer writes ``checkpoint-N`` folders. A checkpoint counts as *complete* only once
:class:`CompleteMarker` has written ``kdistill-complete`` into it, which happens after
Trainer has finished saving model, optimizer, scheduler, RNG and trainer state. Resume picks
the newest complete checkpoint; a half-written folder (killed mid-save) is never chosen.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import TrainerCallback

MARKER = "kdistill-complete"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(folder: Path) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1] if found else None


class CompleteMarker(TrainerCallback):
    """Marks a checkpoint complete after Trainer has written all of it (rank 0)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                tmp = ckpt / (MARKER + ".tmp")
                tmp.write_text(json.dumps({"global_step": state.global_step}))
                tmp.replace(ckpt / MARKER)
        return control
