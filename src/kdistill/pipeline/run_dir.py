"""The run folder: resolved config, guard against mixing runs, atomic final model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from kdistill.config.loader import ConfigError, save_config
from kdistill.config.schema import RunConfig

FINAL = "model"
DONE = "kdistill-done"


def prepare_run_dir(cfg: RunConfig, *, fresh: bool = False) -> Path:
    """Create the folder; refuse a folder that holds a run of a different config."""
    out = Path(cfg.output_dir)
    # under torchrun every rank gets here; only the main one may delete the old run
    if fresh and out.exists() and int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    resolved = cfg.model_dump(mode="json")
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text())
        # training length may be extended on resume; everything else must match
        a = {k: v for k, v in previous.items() if k != "training"}
        b = {k: v for k, v in resolved.items() if k != "training"}
        if a != b:
            raise ConfigError(
                f"{out} holds a run with a different config; choose another output_dir or "
                "pass --fresh to start over"
            )
    save_config(cfg, saved)
    return out


def write_json_atomically(path: Path, data) -> Path:
    """Write ``data`` as indented JSON through a temporary file and a rename: a reader sees
    the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


def is_done(run_dir: Path) -> bool:
    return (run_dir / FINAL / DONE).is_file()


def save_final_model(model, tokenizer, run_dir: Path) -> Path:
    """Write ``run_dir/model`` atomically: a temp folder renamed into place when complete."""
    from kdistill.models.storage import write_folder_atomically

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_folder_atomically(run_dir / FINAL, fill, DONE)
