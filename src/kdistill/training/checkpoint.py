"""Checkpoint completeness and resume.

Trainer writes ``checkpoint-N`` folders. A checkpoint counts as *complete* only once
:class:`CompleteMarker` has written ``kdistill-complete`` into it, which happens after
Trainer has finished saving model, optimizer, scheduler, RNG and trainer state, and only when
every weight and optimizer value in it is finite. Resume picks the newest complete checkpoint;
a half-written folder (killed mid-save) or one of non-finite weights is never chosen. When the
loss or the weights turn non-finite, the newest complete checkpoint is retracted too (its
marker removed): a resume with a corrected learning rate starts from the one before it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import TrainerCallback

from kdistill.training.step import NonFiniteError

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


def _all_finite(tensors) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in tensors
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    )


def state_is_finite(model, optimizer) -> bool:
    """Every parameter and every optimizer state tensor is finite."""
    if model is not None and not _all_finite(p.detach() for p in model.parameters()):
        return False
    if optimizer is not None:
        for state in optimizer.state.values():
            if not _all_finite(state.values()):
                return False
    return True


def retract_latest(folder: Path) -> Path | None:
    """Remove the completion marker of the newest complete checkpoint; return it.

    Called when training turns non-finite: divergence starts some steps before the first
    NaN, so the newest checkpoint (whose weights, even when finite, led there) is not one to
    resume from; the one before it is."""
    latest = latest_complete_checkpoint(Path(folder))
    if latest is None:
        return None
    (latest / MARKER).unlink()
    return latest


class CompleteMarker(TrainerCallback):
    """Marks a checkpoint complete after Trainer has written all of it (rank 0), if sound."""

    def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state_is_finite(model, optimizer):
            if state.is_world_process_zero:
                retract_latest(Path(args.output_dir))
            raise NonFiniteError(
                f"weights or optimizer state became non-finite (NaN/inf) by step "
                f"{state.global_step}; {ckpt.name} is not marked complete; lower "
                "training.learning_rate and re-run"
            )
        if state.is_world_process_zero and ckpt.is_dir():
            tmp = ckpt / (MARKER + ".tmp")
            tmp.write_text(json.dumps({"global_step": state.global_step}))
            tmp.replace(ckpt / MARKER)
        return control
