"""The run folder: owned and locked, its config checked before anything loads, written only
after validation, a finished run left untouched, the final model written atomically.

Order of a run (see :func:`open_run`): the output path and the saved config are checked
(no model loaded, nothing created); the folder is claimed (marker, lock, ``--fresh``); a
finished run returns at once without rewriting anything; the pipeline loads and validates
models and data, then calls :meth:`RunFolder.save_config` and trains.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdistill.config.loader import ConfigError, migrate_old_keys, save_config
from kdistill.config.schema import RunConfig
from kdistill.files import check_output_folder
from kdistill.folders import OwnedFolder, claim_folder, is_main_process
from kdistill.log import get_logger

log = get_logger(__name__)

FINAL = "model"
DONE = "kdistill-done"
CONFIG = "config.yaml"

# settings a re-run may change without --fresh; the resumed run uses the new values
CHANGEABLE_ON_RESUME = (
    "device",  # where the run executes, not what it computes
    "training.learning_rate",
    "training.max_steps",
    "training.lr_scheduler",
    "training.warmup_steps",
    "training.logging_steps",
    "training.save_steps",
    "training.save_total_limit",
    "training.report_to",
    "training.num_threads",
    "training.loss_chunk_size",
    "distill.kd_temperature",
    "distill.soft_weight",
    "distill.hard_weight",
    "distill.beta",
)
# sections other verbs read (kdistill cache / generate), which a training run does not use,
# and the folder's own path (a run folder moved or copied elsewhere still resumes)
_NOT_TRAINING = ("cache.", "generate.", "output_dir")


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if (
            isinstance(v, dict)
            and v
            and k
            not in ("kd_temperature", "soft_weight", "hard_weight", "beta", "extra", "from_teacher")
        ):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(previous: dict, current: dict) -> dict[str, tuple[object, object]]:
    """Dotted keys whose values differ: ``{key: (old, new)}`` (other verbs' sections ignored)."""
    a, b = _flat(previous), _flat(current)
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not k.startswith(_NOT_TRAINING)
    }


def is_done(run_dir: Path) -> bool:
    return (run_dir / FINAL / DONE).is_file()


def _has_progress(run_dir: Path) -> bool:
    from kdistill.training.checkpoint import latest_complete_checkpoint

    return is_done(run_dir) or latest_complete_checkpoint(run_dir / "checkpoints") is not None


@dataclass
class RunFolder:
    """A claimed run folder; ``done`` when it already holds a finished run."""

    path: Path
    owned: OwnedFolder
    done: bool
    changed: dict = field(default_factory=dict)

    def save_config(self, cfg: RunConfig) -> None:
        """Write ``config.yaml`` (call after models and data validated)."""
        if is_main_process():
            save_config(cfg, self.path / CONFIG)

    def release(self) -> None:
        self.owned.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_run_config(cfg: RunConfig, *, fresh: bool) -> dict:
    """Compare ``cfg`` with the run already in ``output_dir`` (before anything loads).

    Returns the changed keys a resume may take; refuses any other change while the folder
    holds progress (a complete checkpoint or a finished model)."""
    out = check_output_folder(cfg.output_dir, "output_dir")
    saved = out / CONFIG
    if fresh or not saved.is_file() or not _has_progress(out):
        return {}
    try:
        previous = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError):
        previous = None
    if not isinstance(previous, dict):
        raise ConfigError(f"{saved} is unreadable; pass --fresh to start the run over")
    previous = migrate_old_keys(previous)  # a run folder from before the teacher section
    # settings added since that run was made read as their defaults, not as changes (a
    # config the schema refuses is compared as saved: the differences name themselves)
    with contextlib.suppress(ValueError):
        previous = type(cfg).model_validate(previous).model_dump(mode="json")
    changes = config_changes(previous, cfg.model_dump(mode="json"))
    fixed = [k for k in changes if k not in CHANGEABLE_ON_RESUME]
    if fixed:
        old, new = changes[fixed[0]]
        more = f" (and {len(fixed) - 1} more)" if len(fixed) > 1 else ""
        raise ConfigError(
            f"{out} holds a run with {fixed[0]}={old!r}, not {new!r}{more}; only "
            "learning rate, max_steps, schedules and logging/saving cadence may change on a "
            "re-run: choose another output_dir or pass --fresh to start over"
        )
    return changes


def open_run(cfg: RunConfig, *, fresh: bool = False) -> RunFolder:
    """Check, then claim ``cfg.output_dir`` (see the module docstring)."""
    changes = check_run_config(cfg, fresh=fresh)
    owned = claim_folder(cfg.output_dir, "run", field="output_dir", fresh=fresh)
    run = RunFolder(owned.path, owned, done=is_done(owned.path) and not fresh, changed=changes)
    if changes and not run.done:
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        log.info(f"resuming {owned.path} with changed settings: {shown}")
    return run


def save_final_model(model, tokenizer, run_dir: Path, state_dict: dict | None = None) -> Path:
    """Write ``run_dir/model`` atomically: a temp folder renamed into place when complete
    (``state_dict``: the whole weights of a sharded model, gathered beforehand)."""
    from kdistill.models.storage import write_folder_atomically

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        pruning = getattr(model, "kdistill_pruning", None)
        if pruning is not None:  # kept indices and importance scores of a pruned student
            (tmp / "pruning.json").write_text(json.dumps(pruning))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_folder_atomically(run_dir / FINAL, fill, DONE)
